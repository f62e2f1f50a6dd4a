"""Run one claimed job to completion: the body of a worker process (or of the inline executor)."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import OperationalError

from service.artifacts import ArtifactStoreError, make_store
from service.config import Settings
from service.db import sessions_for
from service.jobs.context import JobCancelled, JobContext, JobFailed, LeaseLost, RunAgain
from service.jobs.handlers import HANDLERS, mark_domain_failed
from service.jobs.service import beat, finish_cancelled, hold_if_ours
from service.models import utcnow
from verifier.errors import VerifierError

log = logging.getLogger("ticketguard.worker")


@contextmanager
def heartbeat(settings: Settings, job_id: str, lease_owner: str) -> Iterator[None]:
    """Renew the job's lease from the worker itself while the body runs (every third of a lease).

    So a lease means "a live worker holds this job": a worker whose supervisor or dispatcher died
    (an API process killed, a Ray driver restarted) keeps its job and finishes it, and only a dead or
    frozen worker's lease runs out; its supervisor then kills it and requeues the job."""
    stop = threading.Event()
    make_session = sessions_for(settings)

    def renew() -> None:
        interval = settings.lease_seconds / 3
        while not stop.wait(interval):
            try:
                with make_session() as session:
                    if not beat(session, job_id, lease_owner, lease_seconds=settings.lease_seconds):
                        return  # not ours any more: the body finds out at its next progress report
                interval = settings.lease_seconds / 3
            except Exception as exc:  # the database is away, a lock timed out: try again soon, not a
                # whole interval later, or one failed beat would cost the lease
                log.warning("job %s: lease renewal failed: %s", job_id, exc)
                interval = min(1.0, settings.lease_seconds / 10)

    thread = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# outcomes that say the infrastructure failed, not the job: its attempt is given back when it is requeued
TRANSIENT_OUTCOMES = frozenset({"database_unavailable", "artifact_store_unavailable"})


def execute_job(settings: Settings, job_id: str, lease_owner: str) -> str:
    """Run the job if we hold its lease; write the outcome in one transaction. Returns the status."""
    make_session = sessions_for(settings)
    try:
        with make_session() as session:
            job = hold_if_ours(session, job_id, lease_owner)
            if job is None:
                return "not_owned"
            kind, params = job.kind, dict(job.params)
            session.commit()
            beat(session, job_id, lease_owner, lease_seconds=settings.lease_seconds)  # reporting for the job
    except OperationalError as exc:  # the database is away or the row stayed locked: not the job's fault
        log.warning("job %s: database unavailable at start (%s); leaving it to be retried", job_id, exc.orig)
        return "database_unavailable"
    handler = HANDLERS.get(kind)
    for attempt in range(RUN_AGAIN_LIMIT + 1):
        outcome = _run_body(settings, handler, kind, params, job_id, lease_owner)
        if isinstance(outcome, str):  # ended without an outcome to write (lease lost, a store away)
            return outcome
        try:
            return _write_with_retries(make_session, handler, job_id, lease_owner, outcome)
        except RunAgain as exc:
            if attempt == RUN_AGAIN_LIMIT:
                return _write_with_retries(make_session, handler, job_id, lease_owner,
                                           ("failed", f"{exc}; gave up after {attempt + 1} runs, try again"))
            log.info("job %s: %s; running it again", job_id, exc)
            params = {**params, "previous_result": outcome[1]}  # the body may reuse what does not go stale
    raise AssertionError("unreachable")


RUN_AGAIN_LIMIT = 10  # runs of a job body after the first when its final transaction asks for one (RunAgain)


def _run_body(settings: Settings, handler, kind: str, params: dict, job_id: str,
              lease_owner: str) -> tuple[str, object] | str:
    """Run the job's body; its outcome (status, result or error), or a status string when there is none to
    write (the lease was lost, the database or the store went away: the job is retried)."""
    try:
        if handler is None:
            raise JobFailed(f"unknown job kind {kind!r}")
        with heartbeat(settings, job_id, lease_owner):  # first: an object store slow to answer costs no lease
            ctx = JobContext(settings=settings, job_id=job_id, lease_owner=lease_owner, params=params,
                             store=make_store(settings))
            ctx.progress(0.0, "running", force=True)
            return "succeeded", handler.run(ctx)
    except LeaseLost:
        log.warning("job %s: lease lost; another worker owns it", job_id)
        return "lease_lost"
    except JobCancelled:
        return "cancelled", None
    except OperationalError as exc:  # the database went away mid-job: not the job's fault, and nothing
        # can be written now; the supervisor sees this worker end with the job still ours and requeues it
        log.warning("job %s: database unavailable (%s); leaving it to be retried", job_id, exc.orig)
        return "database_unavailable"
    except ArtifactStoreError as exc:  # the object store is away: likewise
        log.warning("job %s: artifact store unavailable (%s); leaving it to be retried", job_id, exc)
        return "artifact_store_unavailable"
    except (JobFailed, VerifierError) as exc:
        return "failed", str(exc)
    except Exception as exc:  # a bug: keep the worker's traceback in its log, a summary on the job
        log.exception("job %s crashed", job_id)
        return "failed", f"internal error: {type(exc).__name__}: {exc}"


def _write_with_retries(make_session, handler, job_id: str, lease_owner: str, outcome: tuple[str, object]) -> str:
    for delay in OUTCOME_RETRIES:  # a lock or statement timeout must not throw the finished work away
        try:
            return _write_outcome(make_session, handler, job_id, lease_owner, *outcome)
        except OperationalError as exc:
            log.warning("job %s: writing its outcome failed (%s); retrying in %s s", job_id, exc.orig, delay)
            time.sleep(delay)
    try:
        return _write_outcome(make_session, handler, job_id, lease_owner, *outcome)
    except OperationalError as exc:
        log.warning("job %s: database unavailable for its outcome (%s); leaving it to be retried", job_id, exc.orig)
        return "database_unavailable"


OUTCOME_RETRIES = (1.0, 2.0, 4.0)  # seconds before each further try of the outcome's transaction


def _write_outcome(make_session, handler, job_id: str, lease_owner: str, status: str, value: object) -> str:
    """The outcome in one transaction, if the job is still ours. Returns the status (or "lease_lost")."""
    with make_session() as session:
        job = hold_if_ours(session, job_id, lease_owner)
        if job is None:
            return "lease_lost"
        if status == "succeeded":
            value = copy.deepcopy(value)  # `finish` takes server-side parts out of it; a retry needs them
            handler.finish(session, job, value)
            job.status, job.result, job.progress, job.message = "succeeded", value, 1.0, "done"
        elif status == "cancelled":
            finish_cancelled(session, job)
        else:
            job.status, job.error, job.message = "failed", str(value), "failed"
            mark_domain_failed(session, job)
        job.finished_at, job.lease_owner, job.lease_expires_at = utcnow(), None, None
        session.commit()
    return status
