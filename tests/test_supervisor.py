"""What every supervisor (local processes or Ray) does when it cannot start a worker, and with workers that
froze, never reported or lost their job."""

from __future__ import annotations

import subprocess

import pytest
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

    pid, started = None, None

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
        supervisor._watch(session)
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.result) == ("succeeded", {"done": True})


class _Frozen:
    """A worker that stopped (SIGSTOP, a VM pause): it polls as running and only a kill ends it."""

    pid = None

    def __init__(self, started: float | None = None) -> None:
        self.started, self.killed = started, False

    def poll(self):
        return None

    def kill(self) -> None:
        self.killed = True


def _reported(settings, job_id: str, *, seconds_ago: float, lease_left: float) -> None:
    from datetime import timedelta

    from service.models import utcnow

    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        job.heartbeat_at = utcnow() - timedelta(seconds=seconds_ago)
        job.lease_expires_at = utcnow() + timedelta(seconds=lease_left)
        session.commit()


def _supervising(settings, job_id: str, token: str, handle) -> LocalSupervisor:
    from service.jobs.executors import _Running

    supervisor = LocalSupervisor(settings.model_copy(update={"executor": "local", "workers": 0}))
    supervisor.running[job_id] = _Running(handle, token)
    return supervisor


def test_a_worker_that_stops_renewing_its_lease_is_killed_and_its_job_requeued(settings, alice):
    job_id = _running_job(settings, alice.id, "A/1", expired=False)
    _reported(settings, job_id, seconds_ago=50, lease_left=-15)  # silent past its lease and a beat of slack
    frozen = _Frozen(started=0.0)
    supervisor = _supervising(settings, job_id, "A/1", frozen)
    supervisor.tick()
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.lease_owner, job.attempts) == ("queued", None, 1)
        assert "stopped renewing its lease" in job.message
    assert frozen.killed and job_id not in supervisor.running


def test_a_reporting_worker_keeps_its_job_and_renews_its_own_lease(settings, alice):
    """The supervisor leaves a worker that reports alone, and does not renew its lease for it: a worker
    that froze must let its lease run out."""
    job_id = _running_job(settings, alice.id, "A/1", expired=False)
    _reported(settings, job_id, seconds_ago=1, lease_left=5)
    with session_factory(settings.resolved_database_url)() as session:
        expires = session.get(Job, job_id).lease_expires_at
    alive = _Frozen(started=0.0)
    supervisor = _supervising(settings, job_id, "A/1", alive)
    supervisor.tick()
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.lease_owner, job.lease_expires_at) == ("running", "A/1", expires)
    assert not alive.killed and job_id in supervisor.running


def test_a_worker_that_never_reports_is_killed_after_the_start_timeout(settings, alice):
    import time

    job_id = _running_job(settings, alice.id, "A/1", expired=False)
    short = settings.model_copy(update={"worker_start_timeout": 5.0})
    waiting_for_a_node = _Frozen(started=None)  # a Ray actor no node has taken yet: no deadline here
    silent = _Frozen(started=time.monotonic() - 6)
    supervisor = _supervising(short, job_id, "A/1", waiting_for_a_node)
    supervisor.tick()
    assert not waiting_for_a_node.killed
    supervisor = _supervising(short, job_id, "A/1", silent)
    supervisor.tick()
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts) == ("queued", 1) and "did not report within 5 s" in job.message
    assert silent.killed


def test_a_worker_whose_job_was_taken_over_is_killed_and_the_new_claim_kept(settings, alice):
    job_id = _running_job(settings, alice.id, "B/2", expired=False)  # requeued and claimed by B
    stale = _Frozen(started=0.0)
    supervisor = _supervising(settings, job_id, "A/1", stale)
    supervisor.tick()
    with session_factory(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.lease_owner) == ("running", "B/2")
    assert stale.killed and job_id not in supervisor.running


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_supervisor_never_waits_on_a_row_a_frozen_transaction_holds(settings, alice):
    """A transaction that holds a job's row (a worker frozen between its UPDATE and its COMMIT) must not
    stall the supervisor: renewals and requeues skip the row, and the tick goes on to its other jobs."""
    from sqlalchemy import create_engine, text

    quick = settings.model_copy(update={"db_lock_timeout": 1.0})
    locked = _running_job(settings, alice.id, "A/1", expired=False)  # not reported yet: the supervisor renews it
    expired = _running_job(settings, alice.id, "dead/1", expired=True)  # another's, lease run out: requeued
    held_expired = _running_job(settings, alice.id, "dead/2", expired=True)
    supervisor = _supervising(quick, locked, "A/1", _Frozen(started=None))
    holder = create_engine(settings.resolved_database_url)  # no timeouts: holds for as long as the test says
    try:
        with holder.connect() as connection:
            connection.execute(text("SELECT id FROM jobs WHERE id IN (:a, :b) FOR UPDATE"),
                               {"a": locked, "b": held_expired})
            supervisor.tick()  # with a wait on either row, this raises the lock timeout
            connection.rollback()
    finally:
        holder.dispose()
    with session_factory(settings.resolved_database_url)() as session:
        assert session.get(Job, expired).status == "queued"
        assert session.get(Job, held_expired).status == "running"  # skipped this time, not waited on
    supervisor.tick()
    with session_factory(settings.resolved_database_url)() as session:
        assert session.get(Job, held_expired).status == "queued"


def test_after_a_database_outage_workers_get_a_lease_to_renew_before_they_count_as_frozen(settings, alice):
    """During an outage no worker can renew its lease; the first tick after it must not take every
    running worker for frozen."""
    import time

    job_id = _running_job(settings, alice.id, "A/1", expired=False)
    _reported(settings, job_id, seconds_ago=90, lease_left=-60)  # the outage: no renewal for a minute
    alive = _Frozen(started=0.0)
    supervisor = _supervising(settings, job_id, "A/1", alive)
    supervisor._db_since = None  # as run_forever leaves it after a tick met the outage
    supervisor.tick()
    assert not alive.killed and job_row_status(settings, job_id) == "running"
    supervisor._db_since = time.monotonic() - settings.lease_seconds - 1  # a lease later, still silent
    supervisor.tick()
    assert alive.killed and job_row_status(settings, job_id) == "queued"


def job_row_status(settings, job_id: str) -> str:
    with session_factory(settings.resolved_database_url)() as session:
        return session.get(Job, job_id).status


def test_a_cancelled_job_whose_worker_died_ends_cancelled_not_requeued(settings, alice):
    """A cancel whose write was lost with the worker (killed first, then the database timed out) must
    not let the job run again when its lease expires."""
    from service.jobs.service import requeue_expired

    job_id = _running_job(settings, alice.id, "dead/1", expired=True)
    with session_factory(settings.resolved_database_url)() as session:
        session.get(Job, job_id).cancel_requested = True
        session.commit()
        requeue_expired(session)
    assert job_row_status(settings, job_id) == "cancelled"


def test_a_timeout_on_the_outcome_write_is_retried_not_thrown_away(settings, alice, model_files, monkeypatch):
    """A lock or statement timeout on the worker's final transaction used to escape: the finished work
    was lost and an attempt counted."""
    from sqlalchemy.exc import OperationalError

    from service.jobs import runner
    from service.jobs.service import claim

    external = settings.model_copy(update={"executor": "external"})
    with TestClient(create_app(external)) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
    with session_factory(settings.resolved_database_url)() as session:
        assert claim(session, job_id, lease_owner="W/1", lease_seconds=30)
    real, calls = runner.hold_if_ours, []

    def times_out_once_at_the_end(session, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the outcome's compare-and-set (the first call is the start's)
            raise OperationalError("UPDATE jobs ...", {}, Exception("canceling statement due to lock timeout"))
        return real(session, *args, **kwargs)

    monkeypatch.setattr(runner, "hold_if_ours", times_out_once_at_the_end)
    monkeypatch.setattr(runner, "OUTCOME_RETRIES", (0.0,))
    assert runner.execute_job(external, job_id, "W/1") == "succeeded"
    assert job_row_status(settings, job_id) == "succeeded" and len(calls) == 3


def test_a_timeout_at_the_workers_start_gives_the_job_back(settings, alice, model_files, monkeypatch):
    """A lock or statement timeout on the worker's first statement used to crash it (exit 1, an attempt
    spent); it is the database's trouble, not the job's: exit as transient, the attempt given back."""
    from sqlalchemy.exc import OperationalError

    from service.jobs import runner

    def times_out(*args, **kwargs):
        raise OperationalError("UPDATE jobs ...", {}, Exception("canceling statement due to lock timeout"))

    monkeypatch.setattr(runner, "hold_if_ours", times_out)
    assert runner.execute_job(settings, "any-job", "W/1") == "database_unavailable"
