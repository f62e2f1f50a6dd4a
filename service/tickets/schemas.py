from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class Accepted(BaseModel):
    """A request whose work runs as a job: poll `GET /v1/jobs/{job_id}`."""

    id: str
    status: str
    job_id: str


class TicketOut(BaseModel):
    id: str
    name: str
    arch: str
    dataset: str
    status: str
    sparsity: float | None
    layer_sparsity: dict[str, float] | None
    model_sha256: str | None
    job_id: str | None
    created_at: datetime
    registered_at: datetime | None
    error: str | None = None
    error_code: str | None = None  # refused: `derives_from_registered_ticket`
    derived_from: str | None = None  # your earlier ticket this one derives from (screening at registration)
    signature: str = "none"
    initialisation: str = "unknown"  # public (seed N): others may start from it too; private; unknown
    signature_report: dict[str, Any] | None = None  # placement, changes made, accuracy before/after
    trigger_set_report: dict[str, Any] | None = None  # size, share, test and trigger accuracy before/after


class TicketList(BaseModel):
    tickets: list[TicketOut]
