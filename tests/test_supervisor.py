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
