"""`GET /v1/alerts`: what concerns an owner that someone else did: a verification by another owner that
matched one of their tickets, a registration refused because it derives from one of their tickets, and
every API key created for them. Alerts are audit events addressed to the owner (so they are in the
transparency log too); the other party appears only as a stable pseudonym."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import or_, select

from service.audit.schemas import AuditEventOut, AuditPage
from service.audit.service import parse_cursor
from service.audit.webhooks import ALERT_PREFIXES
from service.deps import CurrentOwner, DbSession
from service.models import AuditEvent

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


@router.get("", response_model=AuditPage)
def list_alerts(owner: CurrentOwner, session: DbSession,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
                ) -> AuditPage:
    """Your alerts, oldest first: `alert.ticket_matched` (someone's verification matched your ticket; its
    p-value and mode, the asker as a pseudonym), `alert.derived_registration_refused` (a registration
    deriving from your ticket was refused), `api_key.created`. Page with `cursor`."""
    query = (select(AuditEvent).where(AuditEvent.owner_id == owner.id, AuditEvent.seq > parse_cursor(cursor),
                                      or_(*(AuditEvent.action.startswith(p, autoescape=True) for p in ALERT_PREFIXES)))
             .order_by(AuditEvent.seq).limit(limit + 1))
    rows = list(session.execute(query).scalars())
    next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
    return AuditPage(events=[AuditEventOut.model_validate(e, from_attributes=True) for e in rows[:limit]],
                     next_cursor=next_cursor)
