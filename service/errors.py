"""JSON errors: every 4xx is `{"error": {"code": ..., "message": ...}}`; nothing leaks a traceback."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from verifier.errors import VerifierError

log = logging.getLogger("ticketguard")


class APIError(Exception):
    """An error a client can act on: HTTP status, stable code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ArtifactStoreError(RuntimeError):
    """The artifact store cannot be used (object store unreachable, bucket missing, corrupt object)."""


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"{what} not found")


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "invalid_request"}


_METHODS = ("delete", "get", "head", "options", "patch", "post", "put", "trace")


def _allowed_methods(request: Request) -> str | None:
    """The methods the API documents for the resource at this path (the most specific template: literal
    `/v1/tickets/find` before `/v1/tickets/{ticket_id}`), or None for a path it does not document. Starlette's
    own `Allow` names the first route it tried only: `POST` to a DELETE of `/v1/tickets`, which serves GET too."""
    path = request.scope["path"].removeprefix(request.scope.get("root_path") or "") or "/"
    best: tuple[int, int] | None = None
    allowed = None
    for template, item in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"(\{[^}/]+\})", template)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if not re.fullmatch(pattern, path):
            continue
        rank = (template.count("{"), -len(template))
        if best is None or rank < best:
            best, allowed = rank, ", ".join(m.upper() for m in _METHODS if m in item)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(VerifierError)
    async def _verifier_error(_: Request, exc: VerifierError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", 0))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
        return JSONResponse(error_body("invalid_request", message), status_code=422)

    @app.exception_handler(DataError)
    async def _bad_value(_: Request, exc: DataError) -> JSONResponse:
        log.warning("value refused by the database: %s", exc.orig)
        return JSONResponse(error_body("invalid_value", "a value in the request cannot be stored"),
                            status_code=422)

    @app.exception_handler(OperationalError)
    async def _database_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse(error_body("database_unavailable", "the database is unavailable; retry later"),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(PoolTimeout)
    async def _database_busy(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free: %s", exc)  # every pooled connection stayed in use
        return JSONResponse(error_body("database_unavailable", "the database is busy; retry later"),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(ArtifactStoreError)
    async def _store_down(_: Request, exc: ArtifactStoreError) -> JSONResponse:
        log.warning("artifact store unavailable: %s", exc)
        return JSONResponse(error_body("artifact_store_unavailable", "the artifact store is unavailable; retry later"),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", "internal error; it has been logged"),
                            status_code=500)
