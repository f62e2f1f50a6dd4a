"""Database tables: owners, API keys, artifacts, tickets, jobs, verifications, attack reports, audit events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: str | None) -> bool:
    """True for identifiers this service issues (32 lowercase hex digits)."""
    return value is not None and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    arch: Mapped[str] = mapped_column(String(50), index=True)
    dataset: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    upload_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    model_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), nullable=True)
    mask_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), nullable=True)
    sparsity: Mapped[float | None] = mapped_column(Float, nullable=True)
    layer_sparsity: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    signature: Mapped[str] = mapped_column(String(20), default="none", server_default="none")
    # the initialisation it starts from (`verifier.initialisation`): its sign fingerprint, the seed where
    # one is known, and whether anyone could start from it too (a seed anyone would try); all None: unknown
    init_signs_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), nullable=True)
    init_seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    init_public: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # screening at registration: why it was refused (`derives_from_registered_ticket`), or the same owner's
    # earlier ticket it derives from
    error_code: Mapped[str | None] = mapped_column(String(50), nullable=True)
    derived_from_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Signature(Base):
    """A ticket's QR credential: where the code sits and what it says. Server-side only: never shown to
    anyone but the ticket's owner."""

    __tablename__ = "signatures"

    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    payload: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[int] = mapped_column(Integer)
    error_level: Mapped[str] = mapped_column(String(1))
    layer: Mapped[str] = mapped_column(String(200))
    row: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    matrix: Mapped[list[str]] = mapped_column(JSON)  # rows of "0"/"1", 1 = dark module
    keep_function_patterns: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)  # placement score, changes, accuracies
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TicketLock(Base):
    """A ticket's key mask (scheme V1): the locked ticket is published, the key stays here."""

    __tablename__ = "ticket_locks"

    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    score: Mapped[str] = mapped_column(String(20))
    key_fraction: Mapped[float] = mapped_column(Float)
    key_mask_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    locked_model_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    report: Mapped[dict[str, Any]] = mapped_column(JSON)  # key size, accuracies with and without the key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TriggerSet(Base):
    """A ticket's trigger set (scheme V3): keyed inputs and labels embedded at registration. Server-side
    only; its owner may download it (to query a suspect and upload the answers)."""

    __tablename__ = "trigger_sets"

    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))  # .npz: x (float32), y (int64)
    source: Mapped[str] = mapped_column(String(20))  # generated (keyed labels) or uploaded (the owner's)
    size: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)  # share, epochs, accuracies before and after
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TicketSummary(Base):
    """The 1:N search index: a registered ticket's permutation-invariant weight summary
    (`verifier.summaries.spectral_summary`), compared with a suspect's before any full test."""

    __tablename__ = "ticket_summaries"

    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))  # which summary, e.g. "spectral-8"
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian


class TicketReference(Base):
    """Calibration: a statistic between a registered ticket and one of the tickets registered before
    it (same architecture and dataset), e.g. the aligned topology test's kappa (`kind` names which).
    Only earlier tickets: a copy registered later, by a thief, must not widen the original's null."""

    __tablename__ = "ticket_references"

    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    reference_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30), primary_key=True)  # which statistic, e.g. "aligned-kappa-2"
    value: Mapped[float] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # when the running attempt's worker last reported (its lease renewals and progress); None until it has
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Verification(Base):
    __tablename__ = "verifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    requested_ticket_id: Mapped[str | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    suspect_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), nullable=True)  # None:
    # a remote endpoint; the uploaded answers' JSON for `answers`
    mode: Mapped[str] = mapped_column(String(20), default="white_box", server_default="white_box")
    source: Mapped[str] = mapped_column(String(20), default="model", server_default="model")  # model, endpoint,
    # answers
    endpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    verdict: Mapped[str | None] = mapped_column(String(20), nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    matched_ticket_id: Mapped[str | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AttackReport(Base):
    """An owner's robustness report on one of its tickets: the attack job's request and, once it has
    run, one row per attack and strength (accuracy, test p-values, verdict)."""

    __tablename__ = "attack_reports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    """One link of the append-only hash chain (the database refuses UPDATE and DELETE)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50), index=True)
    subject: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    ticket_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """Single row naming the chain's last link; updating it first serialises appends."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    # events from this one on were appended with times that never go back (older ones, written before
    # that rule, may be out of order by clock skew between hosts)
    ordered_from: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class AuditTreeHead(Base):
    """A signed tree head of the transparency log: the Merkle root over the first `tree_size` events,
    signed with the log's Ed25519 key (append-only like the events)."""

    __tablename__ = "audit_tree_heads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(Integer, index=True)
    root_hash: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class Webhook(Base):
    """An owner's URL for their alerts; its signing secret is derived from the server secret, not stored."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One alert event to one webhook: pending until a 2xx answer, retried with backoff, then failed."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event_seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UploadedDataset(Base):
    """An owner's `.npz` dataset; visible to that owner only."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    n_train: Mapped[int] = mapped_column(Integer)
    n_test: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
