"""Reading the audit history with the owner filter applied in one place."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import APIError
from service.models import AuditEvent, Owner, is_id


def parse_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", cursor):
        raise APIError(422, "invalid_cursor", "cursor must be a value returned as next_cursor")
    return int(cursor)


def to_utc(value: datetime | None, name: str) -> datetime | None:
    """`value` in UTC (naive taken as UTC); a 422 when that falls outside years 1-9999."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise APIError(422, "invalid_time", f"{name} is outside the supported range "
                                            "(0001-01-01 to 9999-12-31 in UTC)") from None


def list_events(session: Session, *, owner: Owner, ticket_id: str | None, since: datetime | None,
                until: datetime | None, limit: int,
                cursor: str | None) -> tuple[list[AuditEvent], str | None]:
    """Events visible to `owner` (its own; all for an admin), oldest first, after the cursor.

    Times without a zone are taken as UTC.
    """
    since, until = to_utc(since, "since"), to_utc(until, "until")
    query = select(AuditEvent).where(AuditEvent.seq > parse_cursor(cursor)).order_by(AuditEvent.seq)
    if not owner.is_admin:
        query = query.where(AuditEvent.owner_id == owner.id)
    if ticket_id:
        if not is_id(ticket_id):
            raise APIError(422, "invalid_ticket_id", "ticket_id must be a ticket id (32 hex digits)")
        query = query.where(AuditEvent.ticket_id == ticket_id)
    if since:
        query = query.where(AuditEvent.ts >= since)
    if until:
        query = query.where(AuditEvent.ts < until)
    rows = list(session.execute(query.limit(limit + 1)).scalars())
    next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
    return rows[:limit], next_cursor


def visible_event(session: Session, *, owner: Owner, seq: int) -> AuditEvent:
    """Event `seq` if `owner` may see it (its own; any for an admin); else a 404 that does not say whether
    it exists."""
    event = session.get(AuditEvent, seq) if 0 < seq < 2**63 else None
    if event is None or not (owner.is_admin or event.owner_id == owner.id):
        raise APIError(404, "event_not_found", f"no audit event {seq} visible to your key")
    return event
