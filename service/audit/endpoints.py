from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.audit.chain import verify_chain
from service.audit.schemas import AuditEventOut, AuditPage, ChainReportOut
from service.audit.service import list_events
from service.deps import CurrentOwner, DbSession

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
def audit_history(
    owner: CurrentOwner, session: DbSession,
    ticket_id: str | None = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; events at or after it.")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; events before it.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> AuditPage:
    """Your audit history (everyone's for an admin), oldest first."""
    events, next_cursor = list_events(session, owner=owner, ticket_id=ticket_id, since=since, until=until,
                                      limit=limit, cursor=cursor)
    return AuditPage(events=[AuditEventOut.model_validate(e, from_attributes=True) for e in events],
                     next_cursor=next_cursor)


@router.get("/verify", response_model=ChainReportOut)
def audit_verify(owner: CurrentOwner, session: DbSession) -> ChainReportOut:
    """Recompute the whole hash chain and name the first broken link, if any."""
    return ChainReportOut(**verify_chain(session).to_dict())
