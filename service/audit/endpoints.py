from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.audit.log_key import key_id, public_pem
from service.audit.merkle import event_json
from service.audit.schemas import (
    AuditEventOut,
    AuditPage,
    ConsistencyProofOut,
    InclusionProofOut,
    LogReportOut,
    PublicKeyOut,
    ReceiptOut,
    TreeHeadOut,
)
from service.audit.service import list_events, visible_event
from service.audit.transparency import (
    consistency_proof,
    inclusion_proof,
    latest_tree_head,
    log_key,
    receipt,
    verify_log,
)
from service.deps import CurrentOwner, DbSession, SettingsDep

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


@router.get("/verify", response_model=LogReportOut)
def audit_verify(owner: CurrentOwner, session: DbSession, settings: SettingsDep) -> LogReportOut:
    """Recompute the whole log: the hash chain from every event's content (naming the first broken
    link), the Merkle tree over it, and every tree head the log has signed. A checkpoint kept outside
    the server is checked with `ticketguard audit verify --checkpoint FILE`."""
    return LogReportOut(**verify_log(session, log_key(settings, session).public_key()).to_dict())


@router.get("/public-key", response_model=PublicKeyOut)
def audit_public_key(settings: SettingsDep, session: DbSession) -> PublicKeyOut:
    """The log's Ed25519 public key, which verifies tree heads and receipts offline (no API key needed)."""
    public = log_key(settings, session).public_key()
    return PublicKeyOut(algorithm="Ed25519", key_id=key_id(public), public_key_pem=public_pem(public))


@router.get("/tree-head", response_model=TreeHeadOut)
def audit_tree_head(owner: CurrentOwner, session: DbSession, settings: SettingsDep) -> TreeHeadOut:
    """The latest signed tree head over the whole log (signed now if the log has grown). Save it: a later
    log that does not extend it is caught by `ticketguard audit verify --checkpoint`."""
    head = latest_tree_head(session, log_key(settings, session))
    session.commit()
    return TreeHeadOut(**head.to_dict())


@router.get("/proofs/consistency", response_model=ConsistencyProofOut)
def audit_consistency_proof(owner: CurrentOwner, session: DbSession,
                            first: Annotated[int, Query(ge=0, description="The older tree head's size.")],
                            second: Annotated[int, Query(ge=0, description="The newer tree head's size.")],
                            ) -> ConsistencyProofOut:
    """The RFC 9162 proof that the tree over the first `second` events extends the one over the first
    `first` (null where none is needed: `first` 0 or equal sizes)."""
    return ConsistencyProofOut(first=first, second=second, proof=consistency_proof(session, first, second))


@router.get("/proofs/inclusion/{seq}", response_model=InclusionProofOut)
def audit_inclusion_proof(seq: int, owner: CurrentOwner, session: DbSession,
                          tree_size: Annotated[int, Query(ge=1, description="The tree head's size.")],
                          ) -> InclusionProofOut:
    """The RFC 9162 proof that event `seq` (one you can see) is leaf `seq` of the tree over the first
    `tree_size` events."""
    event = visible_event(session, owner=owner, seq=seq)
    return InclusionProofOut(seq=seq, tree_size=tree_size, event=event_json(event),
                             proof=inclusion_proof(session, seq, tree_size))


@router.get("/receipts/{seq}", response_model=ReceiptOut)
def audit_receipt(seq: int, owner: CurrentOwner, session: DbSession, settings: SettingsDep) -> ReceiptOut:
    """A receipt for event `seq` (one you can see): the event, a signed tree head that includes it and
    the inclusion proof. Keep it; `ticketguard receipt verify FILE` checks it with only the public key."""
    event = visible_event(session, owner=owner, seq=seq)
    result = receipt(session, event, log_key(settings, session))
    session.commit()
    return ReceiptOut(**result)
