"""Recording artifacts in the database (the bytes live in the `ArtifactStore`)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.models import Artifact, utcnow

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def record_artifact(session: Session, *, sha256: str, size: int, kind: str) -> Artifact:
    """The artifact row for `sha256`, inserted unless it exists. Safe when two requests store the same
    bytes at once: the insert yields to a concurrent one (ON CONFLICT DO NOTHING) instead of failing."""
    insert = _INSERTS[session.get_bind().dialect.name](Artifact)
    session.execute(insert.values(sha256=sha256, size=size, kind=kind, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=[Artifact.sha256]))
    return session.get(Artifact, sha256)
