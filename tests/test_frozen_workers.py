"""A worker frozen mid-transaction (SIGSTOP between a statement and its commit) under the local
supervisor, on PostgreSQL: it used to hold the job's row lock for as long as it stayed frozen, so the
cancel request, the supervisor's lease renewals and with them every job of the deployment waited on it
(and CI hung). Now its session is ended by the server after `db_idle_timeout`, a cancel answers, the
supervisor kills the worker, and the other jobs run on. The same under Ray: tests/test_ray_executor.py."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.freezing import backend_alive, frozen_worker
from tests.helpers import job_row, process_alive, register, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

CANCEL_BOUND = 30.0  # seconds: idle timeout (2 s) + a lock wait + a loaded machine; it used to be forever


@pytest.fixture
def frozen_settings(settings):
    return settings.model_copy(update={"executor": "local", "workers": 2, "lease_seconds": 3.0,
                                       "db_idle_timeout": 2.0, "db_lock_timeout": 10.0,
                                       "worker_start_timeout": 20.0})


def _long_registration(client: TestClient, headers: dict, path) -> dict:
    response = register(client, headers, path, signature="qr", recovery_epochs="30")
    assert response.status_code == 202, response.text
    return response.json()


def test_cancel_of_a_worker_frozen_in_its_first_transaction_answers_and_the_rest_runs(frozen_settings, alice,
                                                                                         model_files):
    settings = frozen_settings
    with TestClient(create_app(settings)) as client:
        frozen_job = _long_registration(client, alice.headers, model_files.ticket)
        wait_for(lambda: job_row(settings, frozen_job["job_id"]).worker_pid, "the worker to be started")
        with frozen_worker(settings.resolved_database_url, frozen_job["job_id"]) as frozen:
            assert "UPDATE jobs" in frozen.query
            other = register(client, alice.headers, model_files.independent).json()  # another job meanwhile
            started = time.monotonic()
            cancelled = client.post(f"/v1/jobs/{frozen_job['job_id']}/cancel", headers=alice.headers)
            answered_in = time.monotonic() - started
            assert cancelled.status_code == 200, cancelled.text
            assert answered_in < CANCEL_BOUND
            wait_for(lambda: job_row(settings, frozen_job["job_id"]).status == "cancelled", "cancellation")
            wait_for(lambda: not process_alive(frozen.pid), "the frozen worker to be killed")
            assert not backend_alive(settings.resolved_database_url, frozen.backend)
            wait_for(lambda: job_row(settings, other["job_id"]).status == "succeeded", "the other job")
        ticket = client.get(f"/v1/tickets/{frozen_job['id']}", headers=alice.headers).json()
        assert ticket["status"] == "cancelled"


def test_a_worker_frozen_mid_job_is_killed_and_its_job_rerun(frozen_settings, alice, model_files):
    settings = frozen_settings
    with TestClient(create_app(settings)) as client:
        submitted = _long_registration(client, alice.headers, model_files.ticket)
        wait_for(lambda: job_row(settings, submitted["job_id"]).heartbeat_at, "the worker to report")
        with frozen_worker(settings.resolved_database_url, submitted["job_id"]) as frozen:
            job = wait_for(lambda: (j := job_row(settings, submitted["job_id"])).status == "succeeded" and j,
                           "the job's second attempt to succeed")
            assert not process_alive(frozen.pid)
        assert job.attempts == 2 and job.worker_pid != frozen.pid
        ticket = client.get(f"/v1/tickets/{submitted['id']}", headers=alice.headers).json()
        assert ticket["status"] == "registered"
