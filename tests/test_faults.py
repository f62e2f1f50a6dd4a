"""Reliability under load and faults: concurrent verifications through the real service, workers
that die or fail on every attempt, the API process killed mid-run, PostgreSQL restarted under a
serving app. Correctness only: no assertion here is about time (benchmarks/load.py measures)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service.app import create_app
from service.config import Settings
from service.db import MAX_OVERFLOW, POOL_SIZE, get_engine, session_factory
from service.embedded import EmbeddedServer, free_port
from service.jobs.context import JobContext
from service.jobs.executors import LocalSupervisor
from service.jobs.runner import execute_job
from service.jobs.service import claim
from service.migrate import upgrade
from service.models import Ticket
from service.owners.service import create_owner as create_owner_row
from tests.helpers import assert_json_error, fresh_database, job_row, register, upload, wait_for
from tests.served import (
    Served,
    cli,
    completion_events,
    create_owner,
    is_worker,
    jobs_by_id,
    kill_leftover_workers,
    kill_worker,
    post_model,
    service_env,
    verification_outcome,
    wait_finished,
)

TIMEOUT = 300  # generous: a loaded 2-core machine is slow, and a passing test never waits it out
CONCURRENT = 12  # verifications fired at once (benchmarks/load.py fires 200)
LONG_FIND = {"arch": "lenet300_100", "dataset": "digits",  # about 10 s of a worker on a 2-core machine
             "hyperparameters": {"rounds": 3, "rate": 0.5, "train": {"epochs": 60}}}




@pytest.fixture
def served_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a served process; its workers are killed after the test."""
    with fresh_database() as url:
        try:
            yield url
        finally:
            kill_leftover_workers(url)


def _served_env(url: str, tmp_path: Path, **settings) -> dict[str, str]:
    env = service_env(url, tmp_path / "data", workers=2, **settings)
    cli(env, "migrate")
    return env


def _register_and_wait(client: httpx.Client, url: str, path: Path, name: str) -> str:
    accepted = post_model(client, "/v1/tickets", path, arch="lenet300_100", dataset="digits", name=name,
                          signature="fingerprint")
    assert accepted.status_code == 202, accepted.text
    job = wait_finished(url, [accepted.json()["job_id"]], TIMEOUT)[accepted.json()["job_id"]]
    assert job.status == "succeeded", job.error
    return accepted.json()["id"]


# --- concurrent verifications through `ticketguard serve` -----------------------------------------


def test_concurrent_verifications_each_complete_once_with_the_right_verdict(served_database, tmp_path,
                                                                            model_files):
    env = _served_env(served_database, tmp_path)
    headers = create_owner(env, "alice")
    with Served(env, free_port(), tmp_path / "serve.log") as served, \
            httpx.Client(base_url=served.url, headers=headers, timeout=TIMEOUT) as client:
        ticket_id = _register_and_wait(client, served_database, model_files.ticket, "original")
        suspects = [(model_files.stolen, "match") if index % 2 == 0 else (model_files.independent, "no_match")
                    for index in range(CONCURRENT)]
        with ThreadPoolExecutor(CONCURRENT) as pool:
            responses = list(pool.map(
                lambda suspect: post_model(client, "/v1/verifications", suspect[0], ticket_id=ticket_id), suspects))
        assert [r.status_code for r in responses] == [202] * CONCURRENT, [r.text for r in responses]
        expected = {r.json()["id"]: verdict for r, (_, verdict) in zip(responses, suspects, strict=True)}
        assert len(expected) == CONCURRENT
        wait_finished(served_database, [r.json()["job_id"] for r in responses], TIMEOUT)
        for verification_id, verdict in expected.items():  # the API tells the same story as the database
            assert client.get(f"/v1/verifications/{verification_id}").json()["verdict"] == verdict
        assert client.get("/v1/audit/verify").json()["ok"] is True  # concurrent appends kept the chain
    outcome = verification_outcome(served_database, expected)
    assert outcome.ok, (outcome, served.log_tail())
    assert {job.status for job in jobs_by_id(served_database).values()} == {"succeeded"}


# --- workers that die or fail on every attempt ---------------------------------------------------


@pytest.fixture
def local_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"executor": "local", "lease_seconds": 3.0, "workers": 2})




def test_job_whose_worker_is_killed_on_every_attempt_fails_after_the_limit(local_settings, alice, model_files):
    settings = local_settings.model_copy(update={"max_attempts": 3})
    with TestClient(create_app(settings)) as client:
        accepted = register(client, alice.headers, model_files.ticket).json()
        killed = set()
        for attempt in range(1, 4):
            job = wait_for(lambda attempt=attempt: (j := job_row(settings, accepted["job_id"])).status == "running"
                            and j.attempts == attempt and j.worker_pid and j, f"attempt {attempt}'s worker")
            os.kill(job.worker_pid, signal.SIGKILL)
            killed.add(job.worker_pid)
        job = wait_for(lambda: (j := job_row(settings, accepted["job_id"])).status != "running" and j, "the end")
        assert len(killed) == 3  # a fresh process each attempt
        assert job.status == "failed" and job.attempts == 3
        assert job.error.startswith("worker exited with code -9 before finishing; gave up after 3 attempts")
        assert job.lease_owner is None and job.finished_at is not None
        ticket = client.get(f"/v1/tickets/{accepted['id']}", headers=alice.headers).json()
        assert ticket["status"] == "failed" and "gave up after 3 attempts" in ticket["error"]
        served = client.get(f"/v1/jobs/{accepted['job_id']}", headers=alice.headers).json()
        assert served["status"] == "failed" and served["attempts"] == 3


def test_job_that_raises_fails_with_its_error_and_is_not_retried(settings, alice, model_files):
    # queued by an API that runs no jobs; its upload then vanishes, so the registration raises in its worker
    with TestClient(create_app(settings.model_copy(update={"executor": "external"}))) as client:
        accepted = register(client, alice.headers, model_files.ticket).json()
    with session_factory(settings.resolved_database_url)() as session:
        upload_sha256 = session.get(Ticket, accepted["id"]).upload_sha256
    (settings.resolved_artifact_dir / upload_sha256[:2] / upload_sha256).unlink()
    supervisor = LocalSupervisor(settings.model_copy(update={"executor": "local", "lease_seconds": 3.0}),
                                 poll_interval=0.1)
    supervisor.start()
    try:
        job = wait_for(lambda: (j := job_row(settings, accepted["job_id"])).status not in ("queued", "running") and j,
                        "the job to end")
        wait_for(lambda: not supervisor.running, "the worker to be reaped")
        for _ in range(5):  # more rounds of the supervisor: nothing requeues a failed job
            supervisor.tick()
    finally:
        supervisor.stop()
    job = job_row(settings, accepted["job_id"])
    assert job.status == "failed" and job.attempts == 1  # a job's own error is final, not a crash to retry
    assert upload_sha256 in job.error or "No such file" in job.error, job.error
    assert job.lease_owner is None
    with session_factory(settings.resolved_database_url)() as session:
        ticket = session.get(Ticket, accepted["id"])
        assert ticket.status == "failed" and ticket.error == job.error


def test_job_that_loses_the_database_midway_is_retried_not_failed(settings, alice, model_files, monkeypatch):
    # a transient outage met by the job body is not the job's failure: no outcome is written, and the
    # supervisor requeues the job when its worker ends (or the lease runs out)
    with TestClient(create_app(settings.model_copy(update={"executor": "external"}))) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
    token = "test/outage"
    with session_factory(settings.resolved_database_url)() as session:
        assert claim(session, job_id, lease_owner=token, lease_seconds=30)

    def progress(self, *_args, **_kwargs):  # the database dropped; it is back for the job's last write
        raise OperationalError("UPDATE jobs SET progress=...", {}, Exception("server closed the connection"))

    monkeypatch.setattr(JobContext, "progress", progress)
    with contextlib.suppress(OperationalError):  # (a worker that died of it would be requeued too)
        execute_job(settings, job_id, token)
    job = job_row(settings, job_id)
    assert job.status in ("running", "queued") and job.error is None, (job.status, job.error)


# --- the API process killed and restarted while jobs run -----------------------------------------


def test_api_process_killed_and_restarted_loses_and_orphans_no_job(served_database, tmp_path, model_files):
    env = _served_env(served_database, tmp_path, lease_seconds=3)
    headers = create_owner(env, "alice")
    served = Served(env, free_port(), tmp_path / "serve.log").start()
    try:
        with httpx.Client(base_url=served.url, headers=headers, timeout=TIMEOUT) as client:
            ticket_id = _register_and_wait(client, served_database, model_files.ticket, "original")
            # two long jobs first (the oldest are claimed first), then registrations and verifications
            finds = [client.post("/v1/tickets/find", json=LONG_FIND | {"seed": seed}).json()["job_id"]
                     for seed in (1, 2)]
            registrations = [post_model(client, "/v1/tickets", model_files.independent, arch="lenet300_100",
                                        dataset="digits", name=f"copy {i}", signature="fingerprint").json()
                             for i in range(2)]
            verifications = {}
            for index in range(4):
                path, verdict = ((model_files.stolen, "match") if index % 2 == 0
                                 else (model_files.independent, "no_match"))
                verifications[post_model(client, "/v1/verifications", path, ticket_id=ticket_id).json()["id"]] = verdict
        jobs = wait_for(lambda: (js := jobs_by_id(served_database)) and all(
            js[j].status == "running" and js[j].worker_pid and is_worker(js[j].worker_pid) for j in finds) and js,
            "both long jobs in their workers")
        survivor, victim = finds
        survivor_pid, victim_pid = jobs[survivor].worker_pid, jobs[victim].worker_pid

        served.kill()  # no shutdown hook: the workers are orphaned, still holding their jobs
        kill_worker(victim_pid)  # ... and one of them dies too
        wait_for(lambda: not is_worker(victim_pid), "the killed worker to be gone")
        after_kill = jobs_by_id(served_database)
        assert is_worker(survivor_pid), "the orphaned worker did not outlive its supervisor"
        # both worker slots held long jobs: the killed supervisor had claimed nothing else
        assert {j for j, job in after_kill.items() if job.status == "running"} <= set(finds)
        victim_was_running = after_kill[victim].status == "running"

        served.start()  # same port, data dir and database
        all_jobs = list(after_kill)
        finished = wait_finished(served_database, all_jobs, TIMEOUT)
    finally:
        served.stop()
    log = served.log_tail()
    assert {job.status for job in finished.values()} == {"succeeded"}, (
        {j: (job.status, job.error) for j, job in finished.items()}, log)
    # the orphan kept renewing its own lease: the restarted supervisor never took its job away
    assert finished[survivor].attempts == 1
    # the dead worker's lease expired and the restarted supervisor ran the job again
    assert finished[victim].attempts == (2 if victim_was_running else 1)
    assert {j: job.attempts for j, job in finished.items() if j not in finds} == dict.fromkeys(
        set(finished) - set(finds), 1)
    # each job's outcome was committed once: one completion event each, and every result is there
    assert completion_events(served_database) == dict.fromkeys(all_jobs, 1)
    outcome = verification_outcome(served_database, verifications)
    assert not (outcome.wrong or outcome.lost or outcome.not_succeeded or outcome.unexpected), outcome
    with session_factory(served_database)() as session:
        statuses = dict(session.execute(select(Ticket.id, Ticket.status)).all())
    assert statuses == dict.fromkeys([ticket_id] + [r["id"] for r in registrations], "registered")
    for job_id in finds:
        sha256 = finished[job_id].result["ticket_sha256"]
        assert (tmp_path / "data" / "artifacts" / sha256[:2] / sha256).is_file()
        assert not (tmp_path / "data" / "checkpoints" / job_id).exists()


# --- more concurrent requests than the pool has connections ----------------------------------------


BURST = 150  # concurrent requests: more than the pool's connections and the threadpool's threads together


def test_a_burst_of_requests_beyond_the_pool_is_served(settings, alice, monkeypatch):
    # requests holding connections while they waited for a thread, and threads waiting for connections,
    # starved the pool until its timeout: 80 of 150 concurrent GETs answered 500 after 30 s. A short
    # pool timeout makes a starved pool show here at once
    monkeypatch.setattr(get_engine(settings.resolved_database_url, settings.db_timeouts(requests=True)).pool,
                        "_timeout", 2.0)
    with EmbeddedServer(create_app(settings), port := free_port()), httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=alice.headers, timeout=120,
            limits=httpx.Limits(max_connections=BURST)) as client:
        together = threading.Barrier(BURST)

        def get(path: str) -> int:
            together.wait()
            return client.get(path).status_code

        with ThreadPoolExecutor(BURST) as pool:
            statuses = list(pool.map(get, ["/v1/tickets", "/v1/audit"] * (BURST // 2)))
    assert statuses == [200] * BURST


def test_a_pool_with_no_free_connection_answers_503_not_500(settings, alice, client, model_files, monkeypatch):
    engine = get_engine(settings.resolved_database_url, settings.db_timeouts(requests=True))  # the requests' pool
    monkeypatch.setattr(engine.pool, "_timeout", 0.5)
    held = [engine.connect() for _ in range(POOL_SIZE + MAX_OVERFLOW)]  # something holds every connection
    try:
        _assert_unavailable(client.get("/v1/tickets", headers=alice.headers))  # the endpoint's session
        _assert_unavailable(upload(client, "/v1/verifications", model_files.stolen, alice.headers))  # the gate
    finally:
        for connection in held:
            connection.close()
    assert client.get("/v1/tickets", headers=alice.headers).status_code == 200


# --- PostgreSQL restarted while the API serves ---------------------------------------------------


def _postgres_bin() -> Path:
    """The directory of initdb and pg_ctl; the test fails (never skips) when there is none."""
    candidates = [os.environ.get("TICKETGUARD_TEST_PG_BIN", "")]
    if found := shutil.which("initdb"):
        candidates.append(str(Path(os.path.realpath(found)).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    pytest.fail("initdb and pg_ctl not found (set TICKETGUARD_TEST_PG_BIN): the PostgreSQL outage test needs "
                "a private cluster it can stop and start")


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone (initdb into a temporary folder, loopback and a socket in
    that folder), so stopping it disturbs no other test. Run as `postgres` when we are root."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="tg-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}{log[-2000:]}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        get_engine.cache_clear()  # engines of this cluster's URL in this process go with it
        cluster.destroy()


@contextlib.contextmanager
def unresponsive_listener(port: int) -> Iterator[None]:
    """Something on 127.0.0.1:`port` that completes TCP handshakes (the kernel does, into the backlog)
    and never says a word: a hung database server."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        yield


def _assert_unavailable(response: httpx.Response) -> None:
    error = assert_json_error(response, 503, "database_unavailable")
    assert "retry" in error["message"]
    assert response.headers.get("retry-after")


def test_postgres_restart_gives_503s_then_recovers_without_restarting_the_app(private_postgres, tmp_path,
                                                                                model_files):
    upgrade(private_postgres.url)
    settings = Settings(data_dir=tmp_path / "data", database_url=private_postgres.url, executor="local",
                        secret_key="outage-secret", workers=1, lease_seconds=3.0, verify_permutations=999)
    app = create_app(settings)
    with session_factory(settings.resolved_database_url)() as session:
        _, key = create_owner_row(session, secret=settings.secret(), name="alice", is_admin=False, actor="test")
    headers = {"Authorization": f"Bearer {key}"}
    find = LONG_FIND | {"seed": 3, "hyperparameters": {"rounds": 1, "rate": 0.5, "train": {"epochs": 1}}}
    with EmbeddedServer(app, free_port()) as server, httpx.Client(
            base_url=f"http://127.0.0.1:{server.server.config.port}", headers=headers, timeout=60) as client:
        ticket_id = _register_and_wait(client, settings.resolved_database_url, model_files.ticket, "original")
        job_id = client.get(f"/v1/tickets/{ticket_id}").json()["job_id"]

        private_postgres.stop()
        for _ in range(2):  # the pool's connections are dead, and no new one can be made
            _assert_unavailable(client.get("/v1/tickets"))
            _assert_unavailable(client.get(f"/v1/jobs/{job_id}"))
            _assert_unavailable(client.post("/v1/tickets/find", json=find))  # refused by the request gate
            _assert_unavailable(upload(client, "/v1/verifications", model_files.stolen, {}, ticket_id=ticket_id))
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        with unresponsive_listener(private_postgres.port):  # a database that accepts and never answers
            # the engine's connect timeout turns it into a 503; without one each request hangs (the
            # client's timeout would end the test with a ReadTimeout)
            _assert_unavailable(client.get("/v1/tickets"))
            _assert_unavailable(client.post("/v1/tickets/find", json=find))
        supervisor = app.state.executor
        ticks = 0

        def count_tick(original=supervisor.tick):
            nonlocal ticks
            ticks += 1
            return original()

        supervisor.tick = count_tick
        wait_for(lambda: ticks >= 3, "the supervisor to meet the outage")  # ticks that failed and were logged
        assert supervisor._thread.is_alive()

        private_postgres.start()  # the app is not restarted: the pool reconnects by itself
        assert client.get("/v1/tickets").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        found = client.post("/v1/tickets/find", json=find)
        assert found.status_code == 202, found.text
        accepted = upload(client, "/v1/verifications", model_files.stolen, {}, ticket_id=ticket_id)
        assert accepted.status_code == 202, accepted.text
        # the supervisor thread lived through the outage and runs the jobs submitted after it
        jobs = wait_finished(settings.resolved_database_url, [found.json()["job_id"], accepted.json()["job_id"]],
                             TIMEOUT)
        assert {job.status for job in jobs.values()} == {"succeeded"}
        assert client.get(f"/v1/verifications/{accepted.json()['id']}").json()["verdict"] == "match"
        assert supervisor._thread.is_alive()
