from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEventOut(BaseModel):
    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str
    owner_id: str | None
    ticket_id: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_cursor: str | None


class ChainReportOut(BaseModel):
    ok: bool
    events_checked: int
    first_broken_seq: int | None
    reason: str | None
