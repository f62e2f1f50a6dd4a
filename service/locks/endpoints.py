from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from service.deps import CurrentOwner, DbSession, SettingsDep, Store
from service.locks import service
from service.openapi import binary_response
from service.tickets.schemas import Accepted
from service.tickets.service import visible_ticket

router = APIRouter(prefix="/v1/tickets", tags=["tickets"])


class LockRequest(BaseModel):
    score: Literal["magnitude", "taylor", "paths"] = Field(
        "magnitude", description="How kept weights are ranked for the key: |w|, |w*grad| (taylor), or hits of "
        "input-to-output paths sampled along the network's real graph with probability by kernel norm (paths).")
    key_fraction: float = Field(0.2, gt=0, le=0.5, description="Share of the ticket's kept weights in the key "
                                "(0.2: a 5 % key left less than a 1-point gap on most seeds; docs/RESULTS.md).")
    epochs: int | None = Field(None, ge=1, le=200, description="Epochs of each retraining in the gap check; "
                               "default: the ticket's own training recipe.")


class LockOut(BaseModel):
    ticket_id: str
    score: str
    key_fraction: float
    report: dict[str, Any]
    created_at: datetime


@router.post("/{ticket_id}/lock", status_code=202, response_model=Accepted)
def lock(ticket_id: str, request: Request, owner: CurrentOwner, session: DbSession, settings: SettingsDep,
         background: BackgroundTasks, body: LockRequest | None = None) -> Accepted:
    """Split the ticket's mask into a locked part (downloadable from `/locked-model`) and a key kept
    here, as a job that also measures the accuracy gap retraining without the key leaves. Without a
    body the defaults apply."""
    body = body or LockRequest()
    ticket = visible_ticket(session, owner=owner, ticket_id=ticket_id)
    job = service.submit_lock(session, owner=owner, ticket=ticket, score=body.score,
                              key_fraction=body.key_fraction, epochs=body.epochs,
                              max_attempts=settings.max_attempts)
    background.add_task(request.app.state.executor.submit, job.id)
    return Accepted(id=ticket.id, status=job.status, job_id=job.id)


@router.get("/{ticket_id}/lock", response_model=LockOut)
def get_lock(ticket_id: str, owner: CurrentOwner, session: DbSession) -> LockOut:
    """The key mask's report: key size, accuracy retrained with and without the key, and with a forged key."""
    found = service.ticket_lock(session, visible_ticket(session, owner=owner, ticket_id=ticket_id))
    return LockOut(ticket_id=found.ticket_id, score=found.score, key_fraction=found.key_fraction,
                   report=found.report, created_at=found.created_at)


@router.get("/{ticket_id}/locked-model", response_class=FileResponse,
            responses=binary_response("application/octet-stream", "The locked ticket as safetensors."))
def download_locked(ticket_id: str, owner: CurrentOwner, session: DbSession, store: Store) -> FileResponse:
    """The locked ticket as safetensors: the ticket's weights with the key's weights pruned."""
    found = service.ticket_lock(session, visible_ticket(session, owner=owner, ticket_id=ticket_id))
    return FileResponse(store.path(found.locked_model_sha256), media_type="application/octet-stream",
                        filename=f"{ticket_id}-locked.safetensors")
