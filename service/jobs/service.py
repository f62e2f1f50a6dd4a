"""The jobs table is the truth: enqueue, claim, progress, finish, cancel, requeue."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, true, update
from sqlalchemy.orm import Session

from service.audit.chain import append_event
from service.errors import APIError
from service.models import Job, Owner, utcnow
from service.visibility import get_visible

TERMINAL = ("succeeded", "failed", "cancelled")


def new_lease_owner() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"


def enqueue(session: Session, *, owner_id: str, kind: str, params: dict[str, Any],
            max_attempts: int) -> Job:
    """Add a queued job to the caller's transaction; run it only after that commits."""
    job = Job(owner_id=owner_id, kind=kind, params=params, max_attempts=max_attempts, status="queued")
    session.add(job)
    session.flush()
    return job


def claim(session: Session, job_id: str, *, lease_owner: str, lease_seconds: float) -> bool:
    """Atomically move a queued job to running under our lease. Commits."""
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued")
        .values(status="running", attempts=Job.attempts + 1, lease_owner=lease_owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds), started_at=now,
                progress=0.0, message="started", worker_pid=None, heartbeat_at=None))
    session.commit()
    return result.rowcount == 1


def record_worker_pid(session: Session, job_id: str, lease_owner: str, pid: int) -> None:
    """A worker that was not started as a local process (a Ray actor) says which process it is. Commits."""
    session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == lease_owner,
                                      Job.status == "running").values(worker_pid=pid))
    session.commit()


def beat(session: Session, job_id: str, lease_owner: str, *, lease_seconds: float) -> bool:
    """The worker's own report: extend its lease and stamp its heartbeat. False once the job is not ours
    (finished, cancelled, or requeued and claimed by another attempt). Commits."""
    now = utcnow()
    updated = session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == lease_owner,
                                                Job.status == "running")
                              .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now))
    session.commit()
    return updated.rowcount == 1


def renew_leases(session: Session, leases: dict[str, str], *, lease_seconds: float) -> None:
    """Extend the leases we hold ({job_id: lease token}) whose worker has not reported yet: a process
    still starting, an actor waiting for a node. A worker that reports renews its own lease, so a worker
    that froze lets its lease run out. Rows another transaction holds are skipped (PostgreSQL), not
    waited for: a frozen holder never stalls the supervisor. Commits."""
    if not leases:
        return
    ours = or_(*(and_(Job.id == job_id, Job.lease_owner == token) for job_id, token in leases.items()))
    free = select(Job.id).where(ours, Job.status == "running", Job.heartbeat_at.is_(None)).with_for_update(
        skip_locked=True)
    session.execute(update(Job).where(Job.id.in_(free))
                    .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)),
                    execution_options={"synchronize_session": False})
    session.commit()


def requeue_or_fail(session: Session, job: Job, reason: str) -> str:
    """A job whose worker died: queue it again, or fail it once its attempts are spent; a job whose
    cancel was asked for ends cancelled instead (never run again). Commits."""
    if job.cancel_requested:
        finish_cancelled(session, job)
        session.commit()
        return job.status
    if job.attempts >= job.max_attempts:
        job.status, job.finished_at = "failed", utcnow()
        job.error = f"{reason}; gave up after {job.attempts} attempts"
        from service.jobs.handlers import mark_domain_failed
        mark_domain_failed(session, job)
    else:
        job.status, job.message = "queued", f"requeued: {reason}"
    job.lease_owner, job.lease_expires_at, job.worker_pid = None, None, None
    session.commit()
    return job.status


def hold_if_ours(session: Session, job_id: str, lease_owner: str, *, expired_before=None,
                 skip_locked: bool = False) -> Job | None:
    """The job, with its row locked until the caller commits, if it is still `running` under `lease_owner`
    (and, with `expired_before`, its lease ran out before then); else None.

    A compare-and-set every outcome write goes through: the conditional no-op UPDATE takes the row's
    write lock on PostgreSQL and the database's on SQLite, so nobody can requeue, cancel, finish or
    re-claim the job between this check and the caller's commit. With `skip_locked`, a row another
    transaction holds counts as not ours (PostgreSQL): a sweep passes it by rather than wait on it."""
    condition = [Job.id == job_id, Job.status == "running", Job.lease_owner == lease_owner]
    if expired_before is not None:
        condition.append(or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < expired_before))
    if skip_locked:
        condition.append(Job.id.in_(select(Job.id).where(Job.id == job_id).with_for_update(skip_locked=True)))
    if session.execute(update(Job).where(*condition).values(lease_owner=lease_owner)).rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def requeue_expired(session: Session, *, ours: frozenset[str] = frozenset()) -> list[str]:
    """Requeue (or fail) running jobs whose lease ran out: their worker died, or froze, unseen. The jobs
    in `ours` (the caller's own workers) are left to the caller, which kills the worker first."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.lease_owner).where(Job.status == "running", Job.id.not_in(ours) if ours else true(),
                                              or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))).all()
    session.commit()
    ids = []
    for job_id, lease_owner in expired:
        # not renewed, taken or finished since; held by a transaction: next time
        job = hold_if_ours(session, job_id, lease_owner, expired_before=now, skip_locked=True)
        if job is None:
            session.commit()
            continue
        requeue_or_fail(session, job, "lease expired (its worker died)")
        ids.append(job_id)
    return ids


def request_cancel(session: Session, *, job: Job, actor: Owner) -> Job:
    """Cancel a queued job at once; ask a running one to stop (its supervisor kills it). Commits."""
    if job.status in TERMINAL:
        raise APIError(409, "job_finished", f"job {job.id} already {job.status}")
    status_at_cancel = job.status
    if status_at_cancel == "queued":
        finish_cancelled(session, job)
    else:
        job.cancel_requested = True
    append_event(session, actor=actor.name, action="job.cancelled", subject=f"job:{job.id}",
                 owner_id=job.owner_id, payload={"job_id": job.id, "kind": job.kind,
                                                 "status_at_cancel": status_at_cancel})
    session.commit()
    return job


def finish_cancelled(session: Session, job: Job) -> None:
    from service.jobs.handlers import mark_domain_failed
    job.status, job.finished_at, job.message = "cancelled", utcnow(), "cancelled"
    job.lease_owner, job.lease_expires_at = None, None
    mark_domain_failed(session, job)


def visible_job(session: Session, *, owner: Owner, job_id: str) -> Job:
    return get_visible(session, Job, job_id, owner=owner, what="job")
