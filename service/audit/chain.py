"""The audit hash chain: append one event, verify the whole chain."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import AuditEvent, AuditHead, utcnow

GENESIS = "0" * 64
HEAD_ID = 1


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def timestamp_text(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_body(event: AuditEvent) -> dict[str, Any]:
    """The hashed content of an event: everything but the two hashes."""
    return {"seq": event.seq, "ts": timestamp_text(event.ts), "actor": event.actor, "action": event.action,
            "subject": event.subject, "owner_id": event.owner_id, "ticket_id": event.ticket_id,
            "payload": event.payload}


def link_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def append_event(session: Session, *, actor: str, action: str, subject: str,
                 owner_id: str | None = None, ticket_id: str | None = None,
                 payload: dict[str, Any] | None = None) -> AuditEvent:
    """Append an event in the caller's transaction; concurrent appenders queue on the head row. Its time
    is never earlier than its predecessor's (a clock that steps back, or another machine's, cannot
    make the log look back-dated)."""
    session.flush()
    session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=AuditHead.seq))
    head = session.execute(select(AuditHead).where(AuditHead.id == HEAD_ID)
                           .execution_options(populate_existing=True)).scalar_one()
    previous = session.execute(select(AuditEvent.ts).where(AuditEvent.seq == head.seq)).scalar()
    now = utcnow()
    event = AuditEvent(seq=head.seq + 1, ts=max(now, previous) if previous else now, actor=actor,
                       action=action, subject=subject, owner_id=owner_id, ticket_id=ticket_id, payload=payload or {},
                       prev_hash=head.hash)
    event.hash = link_hash(head.hash, event_body(event))
    session.add(event)
    head.seq, head.hash = event.seq, event.hash
    session.flush()
    return event


@dataclass
class ChainReport:
    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    hashes: list[str] = field(default_factory=list, repr=False)  # the intact events' chain hashes, in order

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events_checked": self.events_checked,
                "first_broken_seq": self.first_broken_seq, "reason": self.reason}


def verify_chain(session: Session, *, batch: int = 1000) -> ChainReport:
    """Recompute every link; name the first event whose hash, predecessor, number or time is wrong."""
    prev_hash, prev_ts, expected_seq, checked, hashes = GENESIS, None, 1, 0, []
    head = session.get(AuditHead, HEAD_ID)
    ordered_from = head.ordered_from if head is not None else 1
    while True:
        rows = session.execute(select(AuditEvent).where(AuditEvent.seq >= expected_seq)
                               .order_by(AuditEvent.seq).limit(batch)).scalars().all()
        for event in rows:
            if event.seq != expected_seq:
                return ChainReport(False, checked, expected_seq, f"event {expected_seq} is missing", hashes)
            if event.prev_hash != prev_hash:
                return ChainReport(False, checked, event.seq, "prev_hash does not match the previous event", hashes)
            if link_hash(prev_hash, event_body(event)) != event.hash:
                return ChainReport(False, checked, event.seq, "content does not match its hash", hashes)
            if prev_ts is not None and event.ts < prev_ts and event.seq >= ordered_from:
                return ChainReport(False, checked, event.seq, f"recorded at {timestamp_text(event.ts)}, before "
                                   f"the event ahead of it ({timestamp_text(prev_ts)}): back-dated", hashes)
            hashes.append(event.hash)
            prev_hash, prev_ts, expected_seq, checked = event.hash, event.ts, expected_seq + 1, checked + 1
        if len(rows) < batch:
            break
        session.expunge_all()
    head = session.get(AuditHead, HEAD_ID)
    if head is None or head.seq != checked or head.hash != prev_hash:
        return ChainReport(False, checked, checked + 1 if head and head.seq > checked else checked,
                           "the chain head does not match the last event (events removed?)", hashes)
    return ChainReport(True, checked, hashes=hashes)
