"""What every supervisor (local processes or Ray) does when it cannot start a worker."""

from __future__ import annotations

import subprocess

from fastapi.testclient import TestClient

from service.app import create_app
from service.db import session_factory
from service.jobs.executors import LocalSupervisor
from service.models import Job
from tests.helpers import register


def test_a_worker_that_cannot_be_started_costs_the_job_no_attempt(settings, alice, model_files, monkeypatch):
    external = settings.model_copy(update={"executor": "external", "max_attempts": 1})
    with TestClient(create_app(external)) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]

    def no_processes_left(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", no_processes_left)
    supervisor = LocalSupervisor(external.model_copy(update={"executor": "local"}))
    supervisor.tick()  # the launch fails: the job goes back to the queue, its attempt given back
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts) == ("queued", 0)
        assert "no worker could be started (BlockingIOError)" in job.message
    supervisor.tick()  # launching pauses after a failure: no claim, so no attempt is spent meanwhile
    with session_factory(settings.resolved_database_url)() as session:
        assert session.get(Job, job_id).status == "queued"
    monkeypatch.undo()
    supervisor._launch_paused_until = 0.0  # the pause is over
    supervisor.tick()
    try:
        with session_factory(settings.resolved_database_url)() as session:
            job = session.get(Job, job_id)
            assert (job.status, job.attempts) == ("running", 1) and job.worker_pid
    finally:
        supervisor.stop()


def _running_job(settings, owner_id: str, token: str, *, expired: bool) -> str:
    from datetime import timedelta

    from service.models import utcnow

    with session_factory(settings.resolved_database_url)() as session:
        job = Job(owner_id=owner_id, kind="verify", params={}, status="running", attempts=1, max_attempts=3,
                  lease_owner=token, lease_expires_at=utcnow() + timedelta(seconds=-60 if expired else 60))
        session.add(job)
        session.commit()
        return job.id


def test_requeueing_expired_leases_never_undoes_another_supervisors_claim(settings, alice, monkeypatch):
    """Two expired jobs; while the first is requeued, another supervisor requeues and claims the second.
    The first supervisor must then leave the second alone (it used to write it back to `queued`)."""
    from service.jobs import service as jobs

    first, second = (_running_job(settings, alice.id, "dead/1", expired=True) for _ in range(2))
    make_session = session_factory(settings.resolved_database_url)
    real, interleaved = jobs.requeue_or_fail, []

    def requeue_then_race(session, job, reason):
        status = real(session, job, reason)
        if not interleaved:
            interleaved.append(job.id)
            with make_session() as other:
                jobs.requeue_expired(other)
                assert jobs.claim(other, second if job.id == first else first, lease_owner="B/new",
                                  lease_seconds=30)
        return status

    monkeypatch.setattr(jobs, "requeue_or_fail", requeue_then_race)
    with make_session() as session:
        jobs.requeue_expired(session)
    taken = second if interleaved[0] == first else first
    with make_session() as session:
        job = session.get(Job, taken)
        assert (job.status, job.lease_owner, job.attempts) == ("running", "B/new", 2)


class _FinishesAsItIsKilled:
    """A worker that wrote its success just before the kill reached it."""

    pid = None

    def __init__(self, settings, job_id: str) -> None:
        self.settings, self.job_id = settings, job_id

    def poll(self):
        return None

    def kill(self) -> None:
        with session_factory(self.settings.resolved_database_url)() as session:
            job = session.get(Job, self.job_id)
            job.status, job.lease_owner, job.result = "succeeded", None, {"done": True}
            session.commit()


def test_a_cancel_that_comes_too_late_keeps_the_jobs_success(settings, alice):
    from service.jobs.executors import _Running

    job_id = _running_job(settings, alice.id, "A/1", expired=False)
    with session_factory(settings.resolved_database_url)() as session:
        session.get(Job, job_id).cancel_requested = True
        session.commit()
    supervisor = LocalSupervisor(settings.model_copy(update={"executor": "local"}))
    supervisor.running[job_id] = _Running(_FinishesAsItIsKilled(settings, job_id), "A/1")
    with session_factory(settings.resolved_database_url)() as session:
        supervisor._cancel(session)
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.result) == ("succeeded", {"done": True})
