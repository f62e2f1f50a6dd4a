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


class LogReportOut(ChainReportOut):
    tree_size: int
    root_hash: str | None
    tree_heads_checked: int
    checkpoint: dict[str, Any] | None


class TreeHeadOut(BaseModel):
    log: str
    tree_size: int
    root_hash: str
    timestamp: str
    key_id: str
    signature: str


class PublicKeyOut(BaseModel):
    algorithm: str
    key_id: str
    public_key_pem: str


class ConsistencyProofOut(BaseModel):
    first: int
    second: int
    proof: dict[str, Any] | None


class InclusionProofOut(BaseModel):
    seq: int
    tree_size: int
    event: dict[str, Any]
    proof: dict[str, Any]


class ReceiptOut(BaseModel):
    format: str
    event: dict[str, Any]
    leaf_index: int
    tree_head: TreeHeadOut
    inclusion_proof: dict[str, Any]
