"""The FastAPI application: routers, JSON errors, upload cap, schema check, job executor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from service.artifacts import ArtifactStore
from service.audit.endpoints import router as audit_router
from service.config import Settings, get_settings
from service.datasets.endpoints import router as datasets_router
from service.db import session_factory
from service.errors import install_error_handlers
from service.finding.endpoints import router as finding_router
from service.jobs.endpoints import router as jobs_router
from service.jobs.executors import Executor, make_executor
from service.migrate import schema_is_current, upgrade
from service.owners.endpoints import router as owners_router
from service.tickets.endpoints import router as tickets_router
from service.verifications.endpoints import router as verifications_router

MULTIPART_SLACK = 64 * 1024  # form fields and boundaries around the file


class BodyLimit:
    """Refuse request bodies past the upload cap while they stream (413), whatever Content-Length says."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes + MULTIPART_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # FastAPI re-raises HTTPExceptions met while parsing a form; others become 400s.
                raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _send_413(send: Send, limit: int) -> None:
    body = b'{"error":{"code":"payload_too_large","message":"request body exceeds %d bytes"}}' % limit
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite by itself; refuse an external database that is behind the code."""
    url = settings.resolved_database_url
    if settings.is_embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
    elif not schema_is_current(url):
        raise SystemExit(f"the database at {settings.database_url} is not at the current schema; "
                         "run `ticketguard migrate` first")


def create_app(settings: Settings | None = None, *, executor: Executor | None = None,
               start_executor: bool = True) -> FastAPI:
    settings = settings or get_settings()
    prepare_database(settings)
    executor = executor or make_executor(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_executor:
            executor.start()
        try:
            yield
        finally:
            if start_executor:
                executor.stop()

    app = FastAPI(title="TicketGuard", version="0.1.0", lifespan=lifespan,
                  description="Proves who owns a lottery ticket (a sparse subnetwork).")
    app.state.settings = settings
    app.state.sessionmaker = session_factory(settings.resolved_database_url)
    app.state.store = ArtifactStore(settings.resolved_artifact_dir)
    app.state.executor = executor
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    for router in (owners_router, datasets_router, finding_router, tickets_router, verifications_router,
                   jobs_router, audit_router):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
