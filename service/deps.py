"""FastAPI dependencies: settings, a database session per request, the calling owner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.config import Settings
from service.errors import APIError
from service.models import ApiKey, Owner
from service.security import hash_api_key


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; committed by the endpoint, rolled back on error."""
    session = request.app.state.sessionmaker()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DbSession = Annotated[Session, Depends(get_session)]
Store = Annotated[ArtifactStore, Depends(get_store)]


def authenticate(session: Session, secret: bytes, header: str) -> Owner:
    """The owner of the API key in an `Authorization` header value; 401 for a missing or bad key."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "unauthorized", "send your API key as `Authorization: Bearer tg_...`")
    digest = hash_api_key(secret, key.strip())
    owner = session.execute(
        select(Owner).join(ApiKey, ApiKey.owner_id == Owner.id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if owner is None:
        raise APIError(401, "unauthorized", "invalid or revoked API key")
    return owner


def get_current_owner(request: Request, session: DbSession, settings: SettingsDep) -> Owner:
    return authenticate(session, settings.secret(), request.headers.get("authorization", ""))


CurrentOwner = Annotated[Owner, Depends(get_current_owner)]


def require_admin(owner: CurrentOwner) -> Owner:
    if not owner.is_admin:
        raise APIError(403, "forbidden", "this operation needs an admin key")
    return owner


AdminOwner = Annotated[Owner, Depends(require_admin)]
