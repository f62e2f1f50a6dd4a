from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import CurrentOwner, DbSession
from service.jobs import service
from service.jobs.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, owner: CurrentOwner, session: DbSession) -> JobOut:
    """Status, progress and outcome of a job."""
    return JobOut.of(service.visible_job(session, owner=owner, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, request: Request, owner: CurrentOwner, session: DbSession) -> JobOut:
    """Cancel a queued job at once, or stop a running one (its worker process is killed)."""
    job = service.request_cancel(session, job=service.visible_job(session, owner=owner, job_id=job_id),
                                 actor=owner)
    request.app.state.executor.wake()
    return JobOut.of(job)
