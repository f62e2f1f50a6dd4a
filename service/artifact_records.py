"""Recording artifacts in the database (the bytes live in the `ArtifactStore`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.models import Artifact


def record_artifact(session: Session, *, sha256: str, size: int, kind: str) -> Artifact:
    artifact = session.get(Artifact, sha256)
    if artifact is None:
        artifact = Artifact(sha256=sha256, size=size, kind=kind)
        session.add(artifact)
    return artifact
