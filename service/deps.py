"""FastAPI dependencies: settings, a database session per request, the calling owner."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.config import Settings
from service.db import REQUEST_SESSIONS
from service.errors import APIError
from service.models import ApiKey, Owner
from service.security import hash_api_key


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request; committed by the endpoint, rolled back on error.

    A request's session holds a pooled connection from its first query until it is closed here, across
    the worker threads FastAPI runs the dependencies, the endpoint and the response's serialization in.
    Requests holding every connection while they wait for a thread, with every thread waiting for a
    connection, starved the pool (150 concurrent GETs: 80 answered 500 after the 30 s pool timeout). So
    at most `REQUEST_SESSIONS` requests (fewer than the pool's connections) hold a session at once; the
    others wait for one here, in the event loop, holding neither a thread nor a connection."""
    async with _session_slots(request.app):
        session = request.app.state.sessionmaker()
        try:
            yield session
        except BaseException:
            await _in_thread(session.rollback)
            raise
        finally:
            await _in_thread(session.close)


_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # {app: {event loop: semaphore}}


def _session_slots(app) -> anyio.Semaphore:
    """The app's session slots in the running event loop (a TestClient runs a loop of its own each time)."""
    per_loop = _SLOTS.setdefault(app, weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    if loop not in per_loop:
        per_loop[loop] = anyio.Semaphore(REQUEST_SESSIONS)
    return per_loop[loop]


async def _in_thread(function) -> None:
    """Run a session's rollback or close in a thread, like FastAPI's own teardown: outside the threadpool's
    limit (waiting for a thread while holding a connection is what starves the pool), and to the end even
    when the request was cancelled (a client gone), so the connection always goes back."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(function, limiter=anyio.CapacityLimiter(1))


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
