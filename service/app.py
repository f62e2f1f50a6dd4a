"""The FastAPI application: routers, JSON errors, upload cap, schema check, job executor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from service.artifacts import ArtifactStoreError, make_store
from service.attacks.endpoints import router as attacks_router
from service.audit.alerts import router as alerts_router
from service.audit.endpoints import router as audit_router
from service.audit.webhook_endpoints import router as webhooks_router
from service.audit.webhooks import delivery_loop
from service.audit.witness import witness_loop
from service.config import Settings, get_settings
from service.datasets.endpoints import router as datasets_router
from service.db import sessions_for
from service.deps import authenticate
from service.errors import APIError, error_body, install_error_handlers
from service.finding.endpoints import router as finding_router
from service.jobs.endpoints import router as jobs_router
from service.jobs.executors import Executor, make_executor
from service.locks.endpoints import router as locks_router
from service.migrate import schema_is_current, upgrade
from service.openapi import ERROR_RESPONSES
from service.owners.endpoints import router as owners_router
from service.tickets.endpoints import router as tickets_router
from service.verifications.endpoints import router as verifications_router

MULTIPART_SLACK = 64 * 1024  # form fields and boundaries around the file
JSON_BODY_BYTES = 1024 * 1024  # the cap for any body that is not a multipart upload
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestGate:
    """Before a request body is read: on /v1 the API key is checked (401), then the body is capped
    while it streams (413), whatever Content-Length says: the upload cap for multipart forms, 1 MiB
    for anything else. So a client without a valid key cannot make the server spool a byte."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app, self.upload_limit = app, max_upload_bytes + MULTIPART_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"].startswith("/v1/"):
            header = headers.get(b"authorization", b"").decode("latin-1")
            refusal = await anyio.to_thread.run_sync(_auth_refusal, scope["app"], header)
            if refusal is not None:
                await _send_error(send, *refusal)
                return
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit = self.upload_limit if multipart else JSON_BODY_BYTES
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, "payload_too_large", f"request body exceeds {limit} bytes")
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # FastAPI re-raises HTTPExceptions met while parsing a form; others become 400s.
                raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited, send)


def _auth_refusal(app: FastAPI, header: str) -> tuple[int, str, str] | None:
    """Why the key in `header` is refused (status, code, message), or None when it is valid."""
    try:
        with app.state.sessionmaker() as session:
            authenticate(session, app.state.settings.secret(), header)
    except APIError as exc:
        return exc.status, exc.code, exc.message
    except OperationalError:
        return 503, "database_unavailable", "the database is unavailable; retry later"
    except PoolTimeout:  # every pooled connection stayed in use for the pool's timeout
        return 503, "database_unavailable", "the database is busy; retry later"
    return None


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if status == 503:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite by itself; refuse an external database that is behind the code, and
    (SystemExit, one line) any database that is unreachable or newer than the code."""
    url = settings.resolved_database_url
    if settings.is_embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
    elif not schema_is_current(url):
        from service.migrate import display_url

        raise SystemExit(f"the database at {display_url(url)} is not at the current schema; "
                         "run `ticketguard migrate` first")


def create_app(settings: Settings | None = None, *, executor: Executor | None = None,
               start_executor: bool = True) -> FastAPI:
    settings = settings or get_settings()
    prepare_database(settings)
    executor = executor or make_executor(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loops = [witness_loop(settings)] if settings.audit_witness_url else []
        if start_executor:
            loops.append(delivery_loop(settings))
            executor.start()
        for loop in loops:
            loop.start()
        try:
            yield
        finally:
            for loop in loops:
                loop.stop()
            if start_executor:
                executor.stop()

    app = FastAPI(title="TicketGuard", version="0.1.0", lifespan=lifespan,
                  description="Proves who owns a lottery ticket (a sparse subnetwork).")
    app.state.settings = settings
    app.state.sessionmaker = sessions_for(settings, requests=True)
    try:
        app.state.store = make_store(settings)
    except ArtifactStoreError as exc:  # a missing bucket or unreachable endpoint: one line, like the database's
        raise SystemExit(str(exc)) from None
    app.state.executor = executor
    install_error_handlers(app)
    app.add_middleware(RequestGate, max_upload_bytes=settings.max_upload_bytes)
    for router in (owners_router, datasets_router, finding_router, tickets_router, locks_router,
                   attacks_router, verifications_router, jobs_router, audit_router, alerts_router,
                   webhooks_router):
        app.include_router(router, responses=ERROR_RESPONSES)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
