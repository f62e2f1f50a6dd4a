"""What the OpenAPI schema says about errors and binary downloads, shared by every router."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. not_found, invalid_request.")
    message: str = Field(description="For a person: what was wrong.")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail


_ERRORS = {
    400: "Malformed request body (e.g. a broken multipart form).",
    401: "Missing, invalid or revoked API key.",
    403: "The key's owner may not do this (e.g. an admin-only operation).",
    404: "Not found, or not visible to the key's owner.",
    409: "Conflicts with the resource's current state (e.g. not registered yet, already finished, name taken).",
    413: "Request body over the size cap.",
    422: "A parameter, field or uploaded file is invalid; the message names it.",
    503: "The database or the artifact store is unavailable; retry after `Retry-After` seconds.",
}

# Every /v1 operation can answer these: the request gate checks the key (401) and caps bodies (413) before
# routing, and any operation may meet a missing or hidden resource (404) or a database outage (503).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in _ERRORS.items()
}
ERROR_RESPONSES[503]["headers"] = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def binary_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for an operation whose 200 is a file of `media_type`."""
    return {200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}
