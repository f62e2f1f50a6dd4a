"""The local supervisor: one subprocess per job, SIGKILL recovery, cancellation, expired leases."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.app import create_app
from service.db import session_factory
from service.jobs.executors import LocalSupervisor
from service.models import Job, Ticket, utcnow
from tests.helpers import job_row, process_alive, register, wait_for


@pytest.fixture
def local_settings(settings):
    return settings.model_copy(update={"executor": "local", "lease_seconds": 3.0, "workers": 2})








def test_sigkilled_worker_is_requeued_and_finishes(local_settings, alice, model_files):
    with TestClient(create_app(local_settings)) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
        pid = wait_for(lambda: job_row(local_settings, job_id).worker_pid, "a worker process")
        os.kill(pid, signal.SIGKILL)
        job = wait_for(lambda: (j := job_row(local_settings, job_id)).status == "succeeded" and j, "success")
        assert job.attempts == 2
        assert client.get("/v1/tickets", headers=alice.headers).json()["tickets"][0]["status"] == "registered"


def test_job_whose_worker_keeps_dying_fails_after_the_retry_limit(local_settings, alice, model_files):
    settings = local_settings.model_copy(update={"max_attempts": 1})
    with TestClient(create_app(settings)) as client:
        response = register(client, alice.headers, model_files.ticket).json()
        pid = wait_for(lambda: job_row(settings, response["job_id"]).worker_pid, "a worker process")
        os.kill(pid, signal.SIGKILL)
        job = wait_for(lambda: (j := job_row(settings, response["job_id"])).status == "failed" and j, "failure")
        assert "gave up after 1 attempts" in job.error
        ticket = client.get(f"/v1/tickets/{response['id']}", headers=alice.headers).json()
        assert ticket["status"] == "failed"


def test_cancel_kills_the_running_worker(local_settings, alice, model_files):
    with TestClient(create_app(local_settings)) as client:
        response = register(client, alice.headers, model_files.ticket).json()
        pid = wait_for(lambda: job_row(local_settings, response["job_id"]).worker_pid, "a worker process")
        cancelled = client.post(f"/v1/jobs/{response['job_id']}/cancel", headers=alice.headers)
        assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"] is True
        wait_for(lambda: job_row(local_settings, response["job_id"]).status == "cancelled", "cancellation")
        wait_for(lambda: not process_alive(pid), "the worker to be gone")
        ticket = client.get(f"/v1/tickets/{response['id']}", headers=alice.headers).json()
        assert ticket["status"] == "cancelled"
        actions = [e["action"] for e in client.get("/v1/audit", headers=alice.headers).json()["events"]]
        assert actions[-1] == "job.cancelled"


def test_queued_job_cancels_at_once(settings, alice, model_files):
    external = settings.model_copy(update={"executor": "external"})
    with TestClient(create_app(external)) as client:
        response = register(client, alice.headers, model_files.ticket).json()
        job = client.post(f"/v1/jobs/{response['job_id']}/cancel", headers=alice.headers).json()
        assert job["status"] == "cancelled"


def test_expired_lease_of_a_dead_supervisor_is_requeued(settings, alice, model_files):
    external = settings.model_copy(update={"executor": "external"})
    with TestClient(create_app(external)) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
    with session_factory(settings.resolved_database_url)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempts=1, lease_owner="dead-host:123/abc",
            lease_expires_at=utcnow() - timedelta(seconds=5)))
        session.commit()
    supervisor = LocalSupervisor(settings.model_copy(update={"executor": "local"}), poll_interval=0.1)
    supervisor.start()
    try:
        job = wait_for(lambda: (j := job_row(settings, job_id)).status == "succeeded" and j, "success")
    finally:
        supervisor.stop()
    assert job.attempts == 2
    with session_factory(settings.resolved_database_url)() as session:
        assert session.query(Ticket).one().status == "registered"


def test_killed_find_job_resumes_from_its_checkpoints(local_settings, alice):
    body = {"arch": "lenet300_100", "dataset": "digits", "seed": 9,
            "hyperparameters": {"rounds": 3, "rate": 0.5, "train": {"epochs": 12}}}
    inline = local_settings.model_copy(update={"executor": "inline"})
    # the reference runs in this process with the worker's share of the cores: float sums split over
    # another number of threads round differently, so the same seed gives other bits
    threads = torch.get_num_threads()
    torch.set_num_threads(int(local_settings.child_environment()["OMP_NUM_THREADS"]))
    try:
        with TestClient(create_app(inline)) as client:
            reference_id = client.post("/v1/tickets/find", headers=alice.headers, json=body).json()["job_id"]
            reference = client.get(f"/v1/jobs/{reference_id}", headers=alice.headers).json()["result"]
    finally:
        torch.set_num_threads(threads)
    with TestClient(create_app(local_settings)) as client:
        job_id = client.post("/v1/tickets/find", headers=alice.headers, json=body).json()["job_id"]
        checkpoints = local_settings.data_dir / "checkpoints" / job_id
        # kill in the middle of a pruning round: the search state of an earlier round is saved and
        # the round's own training checkpoint (written after each epoch) exists
        wait_for(lambda: (checkpoints / "imp.pt").exists() and any(checkpoints.glob("train-[1-9]*.pt")),
                  "a pruning round with a training checkpoint")
        os.kill(job_row(local_settings, job_id).worker_pid, signal.SIGKILL)
        done = wait_for(lambda: (j := job_row(local_settings, job_id)).status == "succeeded" and j, "success")
    assert done.attempts == 2
    assert done.result["rounds"] == reference["rounds"]
    assert done.result["ticket_sha256"] == reference["ticket_sha256"]
    assert not checkpoints.exists()
