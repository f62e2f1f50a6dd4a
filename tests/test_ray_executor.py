"""The Ray executor on a local Ray instance the tests start (CPU only), against PostgreSQL.

Ray runs its own processes: the test starts a head with `ray start --head` (as an operator would
start a cluster) and the service connects to it by address.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.app import create_app
from service.config import Settings
from service.db import session_factory
from service.jobs.ray_executor import RayDispatcher, RemoteJobActor, job_resources, wants_gpu
from service.models import AuditEvent, Job
from tests.freezing import frozen_worker
from tests.helpers import job_row, process_alive, register, upload, wait_for

ray = pytest.importorskip("ray")  # a dev dependency: installed by the README's test command

TIMEOUT = 300
ON_POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the production shape


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayHead:
    """A Ray head on loopback with 2 CPUs and no GPU, as an operator starts one (`ray start --head`)."""

    port: int
    temp_dir: str  # short: Ray's socket paths must fit in 107 bytes

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # the node's own environment, as a worker machine's would be: S3 credentials (moto takes any)
        env = os.environ | {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}
        subprocess.run([RAY_CLI, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                        f"--temp-dir={self.temp_dir}"], check=True, capture_output=True, timeout=120, env=env)

    def crash(self) -> None:
        """Every process of this Ray instance killed at once, as when its machine goes down."""
        subprocess.run(["pkill", "-9", "-f", self.temp_dir], capture_output=True, timeout=30)

    def replace(self) -> None:
        """A new head where the crashed one was (new port and session folder: the old ones may still be
        held by the dying instance's agents)."""
        self.port, self.temp_dir = _free_port(), tempfile.mkdtemp(prefix="tgray")
        self.start()


RAY_CLI = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """The cluster with token authentication, as docker-compose.yml runs it: the head, the dispatchers
    and this process (a driver too) share RAY_AUTH_TOKEN through the environment."""
    environment = pytest.MonkeyPatch()
    environment.setenv("RAY_AUTH_MODE", "token")
    environment.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray._raylet.Config.initialize("")  # Ray read its config at import: make this process see the token mode
    head = RayHead(_free_port(), tempfile.mkdtemp(prefix="tgray"))
    head.start()
    try:
        yield head
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.crash()  # this instance only: `ray stop` would end every Ray instance on the machine
        shutil.rmtree(head.temp_dir, ignore_errors=True)
        environment.undo()
        ray._raylet.Config.initialize("")


@pytest.fixture
def ray_settings(settings: Settings, ray_head: RayHead) -> Iterator[Settings]:
    ray_settings = settings.model_copy(update={"executor": "ray", "ray_address": ray_head.address, "lease_seconds": 3.0,
                                               "workers": 2, "ray_namespace": "tg-test"})
    yield ray_settings
    # a job actor still alive (its job was running when the test ended) would hold a CPU of the next test
    if not ray.is_initialized():
        ray.init(address=ray_head.address, namespace=ray_settings.ray_namespace, log_to_driver=False)
    for name in ray.util.list_named_actors():
        ray.kill(ray.get_actor(name))
    ray.shutdown()


def _events(settings: Settings, action: str) -> int:
    with session_factory(settings.resolved_database_url)() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action))


def _qr_registration(client: TestClient, headers: dict, path: Path) -> dict:
    """A registration that trains (QR recovery fine-tune): long enough to kill or cancel midway."""
    response = register(client, headers, path, signature="qr", recovery_epochs="30")
    assert response.status_code == 202, response.text
    return response.json()


@ON_POSTGRES
def test_jobs_run_as_ray_actors_and_give_the_right_verdicts(ray_settings, alice, model_files):
    with TestClient(create_app(ray_settings)) as client:
        response = register(client, alice.headers, model_files.ticket)
        job_id = response.json()["job_id"]
        wait_for(lambda: job_row(ray_settings, job_id).status == "succeeded", "the registration")
        ticket_id = response.json()["id"]
        verdicts = {}
        for name, path in (("stolen", model_files.stolen), ("independent", model_files.independent)):
            submitted = upload(client, "/v1/verifications", path, alice.headers, ticket_id=ticket_id).json()
            wait_for(lambda s=submitted: job_row(ray_settings, s["job_id"]).status in ("succeeded", "failed"),
                      f"the {name} verification")
            verdicts[name] = client.get(f"/v1/verifications/{submitted['id']}", headers=alice.headers).json()
    assert verdicts["stolen"]["verdict"] == "match"
    assert verdicts["independent"]["verdict"] == "no_match"
    job = job_row(ray_settings, job_id)
    assert job.attempts == 1 and job.worker_pid not in (None, os.getpid())
    assert job.lease_owner is None  # released when it finished


@ON_POSTGRES
def test_ray_workers_read_and_write_artifacts_in_s3(ray_settings, alice, model_files, monkeypatch, tmp_path):
    """The cluster shape: jobs on Ray, artifacts in an S3 bucket (moto's server on loopback)."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    for variable, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_CONFIG_FILE", str(tmp_path / "none"))):
        monkeypatch.setenv(variable, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        s3.create_bucket(Bucket="tickets")
        settings = ray_settings.model_copy(update={"artifact_url": "s3://tickets/tg",
                                                   "s3_endpoint_url": f"http://{host}:{port}"})
        with TestClient(create_app(settings)) as client:
            submitted = register(client, alice.headers, model_files.ticket).json()
            wait_for(lambda: job_row(settings, submitted["job_id"]).status == "succeeded", "the registration")
            shutil.rmtree(settings.resolved_artifact_dir)  # the verification must fetch from the bucket
            verification = upload(client, "/v1/verifications", model_files.stolen, alice.headers,
                                  ticket_id=submitted["id"]).json()
            wait_for(lambda: job_row(settings, verification["job_id"]).status == "succeeded", "the verification")
            result = client.get(f"/v1/verifications/{verification['id']}", headers=alice.headers).json()
            ticket_sha = client.get(f"/v1/tickets/{submitted['id']}", headers=alice.headers).json()["model_sha256"]
        assert result["verdict"] == "match"
        stored = {item["Key"] for item in s3.list_objects_v2(Bucket="tickets")["Contents"]}
        assert f"tg/{ticket_sha[:2]}/{ticket_sha}" in stored  # written by the Ray worker
    finally:
        server.stop()


@ON_POSTGRES
def test_a_killed_ray_worker_is_retried_and_the_job_completes(ray_settings, alice, model_files):
    with TestClient(create_app(ray_settings)) as client:
        job_id = _qr_registration(client, alice.headers, model_files.ticket)["job_id"]
        pid = wait_for(lambda: job_row(ray_settings, job_id).worker_pid, "the job's Ray worker")
        assert job_row(ray_settings, job_id).lease_owner.startswith("ray:")
        os.kill(pid, signal.SIGKILL)
        # the search's own length decides this wait: a loaded machine stretches it (a clean-clone CI run beside
        # other work took over 300 s), so the bound leaves the rest of the test's 600 s to it
        job = wait_for(lambda: (j := job_row(ray_settings, job_id)).status == "succeeded" and j, "success",
                       timeout=420)
    assert job.attempts == 2 and job.worker_pid != pid
    assert _events(ray_settings, "ticket.registered") == 1


@ON_POSTGRES
def test_a_job_whose_ray_worker_keeps_dying_fails_after_the_retry_limit(ray_settings, alice, model_files):
    settings = ray_settings.model_copy(update={"max_attempts": 1})
    with TestClient(create_app(settings)) as client:
        submitted = _qr_registration(client, alice.headers, model_files.ticket)
        os.kill(wait_for(lambda: job_row(settings, submitted["job_id"]).worker_pid, "a worker"), signal.SIGKILL)
        job = wait_for(lambda: (j := job_row(settings, submitted["job_id"])).status == "failed" and j, "failure")
        assert "ray worker died" in job.error and "gave up after 1 attempts" in job.error
        assert client.get(f"/v1/tickets/{submitted['id']}", headers=alice.headers).json()["status"] == "failed"


@ON_POSTGRES
def test_cancel_kills_the_ray_actor(ray_settings, alice, model_files):
    """The dispatcher kills the actor: a worker frozen mid-job (SIGSTOP) cannot notice the cancel flag
    and stop by itself, yet its process goes away."""
    with TestClient(create_app(ray_settings)) as client:
        submitted = _qr_registration(client, alice.headers, model_files.ticket)
        pid = wait_for(lambda: job_row(ray_settings, submitted["job_id"]).worker_pid, "the job's Ray worker")
        os.kill(pid, signal.SIGSTOP)
        cancelled = client.post(f"/v1/jobs/{submitted['job_id']}/cancel", headers=alice.headers)
        assert cancelled.status_code == 200
        wait_for(lambda: job_row(ray_settings, submitted["job_id"]).status == "cancelled", "cancellation")
        wait_for(lambda: not process_alive(pid), "the actor's process to be gone")
        assert client.get(f"/v1/tickets/{submitted['id']}", headers=alice.headers).json()["status"] == "cancelled"


@ON_POSTGRES
def test_an_attempt_runs_once_and_a_retry_gets_a_fresh_actor(ray_settings, alice, model_files):
    """The job id and attempt are the idempotency key: one attempt submitted twice reaches one actor and
    runs once; a retry (a new claim) gets an actor of its own, and the earlier attempt's actor is killed."""
    from service.jobs.service import claim

    external = ray_settings.model_copy(update={"executor": "external"})
    with TestClient(create_app(external)) as client:
        once_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
        retried_id = _qr_registration(client, alice.headers, model_files.independent)["job_id"]
    dispatcher = RayDispatcher(ray_settings)
    ray.init(address=ray_settings.ray_address, namespace=ray_settings.ray_namespace, log_to_driver=False)
    make_session = session_factory(ray_settings.resolved_database_url)
    with make_session() as session:
        assert claim(session, once_id, lease_owner="ray:a/1", lease_seconds=30)
        job = session.get(Job, once_id)
        first, again = dispatcher._spawn(job, "ray:a/1"), dispatcher._spawn(job, "ray:a/1")
    assert first.name == again.name == f"job-{once_id}-1"
    assert ray.get([first.ref, again.ref], timeout=TIMEOUT) == ["succeeded", "succeeded"]
    first.kill()
    job = job_row(ray_settings, once_id)
    assert job.status == "succeeded" and job.attempts == 1
    assert _events(ray_settings, "ticket.registered") == 1

    with make_session() as session:
        assert claim(session, retried_id, lease_owner="ray:a/2", lease_seconds=30)
        stale = dispatcher._spawn(session.get(Job, retried_id), "ray:a/2")
    old_pid = wait_for(lambda: job_row(ray_settings, retried_id).worker_pid, "the first attempt's worker")
    with make_session() as session:  # its lease ran out (say) and the job was requeued and claimed again
        row = session.get(Job, retried_id)
        row.status, row.lease_owner = "queued", None
        session.commit()
        assert claim(session, retried_id, lease_owner="ray:b/1", lease_seconds=30)
        fresh = dispatcher._spawn(session.get(Job, retried_id), "ray:b/1")
    assert fresh.name == f"job-{retried_id}-2" != stale.name
    assert ray.get(fresh.ref, timeout=TIMEOUT) == "succeeded"
    wait_for(lambda: not process_alive(old_pid), "the first attempt's actor to be killed")
    fresh.kill()
    job = job_row(ray_settings, retried_id)
    assert job.status == "succeeded" and job.attempts == 2 and job.worker_pid != old_pid
    assert _events(ray_settings, "ticket.registered") == 2


@ON_POSTGRES
def test_a_job_no_node_can_take_fails_after_its_start_timeout(ray_settings, alice, model_files):
    settings = ray_settings.model_copy(update={"ray_cpus_per_job": 64, "ray_start_timeout": 2.0, "max_attempts": 1})
    with TestClient(create_app(settings)) as client:
        submitted = register(client, alice.headers, model_files.ticket).json()
        job = wait_for(lambda: (j := job_row(settings, submitted["job_id"])).status == "failed" and j, "failure")
        assert "not scheduled by Ray within 2 s" in job.error and job.worker_pid is None
        assert client.get(f"/v1/tickets/{submitted['id']}", headers=alice.headers).json()["status"] == "failed"


def _dispatcher(settings: Settings, head: RayHead) -> subprocess.Popen:
    """`ticketguard supervise` with the Ray executor, in a process of its own (a driver of the cluster)."""
    env = os.environ | settings.child_environment() | {
        "TICKETGUARD_EXECUTOR": "ray", "TICKETGUARD_RAY_ADDRESS": head.address,
        "TICKETGUARD_RAY_NAMESPACE": settings.ray_namespace, "TICKETGUARD_WORKERS": str(settings.workers),
        "PYTHONUNBUFFERED": "1"}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "dispatcher.log", "ab") as log:  # read it when a test fails
        return subprocess.Popen([sys.executable, "-m", "service.cli", "supervise"], env=env, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)


def _queued_search(settings: Settings, headers: dict, *, seed: int, rounds: int, epochs: int) -> str:
    """A lenet300_100 ticket search left queued for a dispatcher process to run; this process stops being
    a Ray driver, as a test that restarts or crashes the cluster's other side needs."""
    with TestClient(create_app(settings.model_copy(update={"executor": "external"}))) as client:
        job_id = client.post("/v1/tickets/find", headers=headers, json={
            "arch": "lenet300_100", "dataset": "digits", "seed": seed,
            "hyperparameters": {"rounds": rounds, "rate": 0.5, "train": {"epochs": epochs}}}).json()["job_id"]
    if ray.is_initialized():
        ray.shutdown()
    return job_id


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(timeout=60)


@ON_POSTGRES
def test_a_restarted_dispatcher_adopts_running_actors_and_kills_stale_ones(ray_settings, ray_head, alice,
                                                                          model_files):
    # a ticket search of ~1,800 epochs (about 50 s on a 2-core machine): it outlives the dispatcher's absence and the
    # next one's start. It runs on, unfrozen: a worker frozen past its lease is killed and its job rerun
    job_id = _queued_search(ray_settings, alice.headers, seed=3, rounds=6, epochs=300)
    first = _dispatcher(ray_settings, ray_head)
    try:
        pid = wait_for(lambda: job_row(ray_settings, job_id).worker_pid, "the job's Ray worker")
    finally:
        _stop(first)  # the dispatcher goes away; the actor keeps its job and renews its lease itself
    token = job_row(ray_settings, job_id).lease_owner
    time.sleep(1.5 * ray_settings.lease_seconds)  # longer than a lease
    assert job_row(ray_settings, job_id).status == "running" and process_alive(pid)
    # an actor left behind by a job that has finished (its dispatcher died before killing it)
    ray.init(address=ray_head.address, namespace=ray_settings.ray_namespace, log_to_driver=False)
    stale = RemoteJobActor.options(name="job-0123abcd-1", lifetime="detached", num_cpus=0).remote()
    assert ray.get(stale.outcome.remote()) is None
    ray.shutdown()
    second = _dispatcher(ray_settings, ray_head)
    log = ray_settings.data_dir / "dispatcher.log"
    try:
        wait_for(lambda: f"job {job_id}: adopted its running actor" in log.read_text(), "the adoption")
        # the search's own length decides this wait: a loaded machine stretches it (a clean-clone CI run beside
        # other work took over 300 s), so the bound leaves the rest of the test's 600 s to it
        job = wait_for(lambda: (j := job_row(ray_settings, job_id)).status == "succeeded" and j, "success",
                       timeout=420)
    finally:
        _stop(second)
    assert job.attempts == 1 and job.worker_pid == pid and token.startswith("ray:")  # not rerun
    assert "killed its stale actor job-0123abcd-1" in log.read_text()
    ray.init(address=ray_head.address, namespace=ray_settings.ray_namespace, log_to_driver=False)
    assert "job-0123abcd-1" not in ray.util.list_named_actors()


def test_resources_follow_the_job_kind_and_fall_back_to_cpus():
    settings = Settings(ray_gpus_per_job=0.5, ray_cpus_per_job=2, ray_gpu_verify_bytes=1000)
    trains = {"signature": {"kind": "qr", "recovery_epochs": 2}, "triggers": {"enabled": False}}
    plain = {"signature": {"kind": "fingerprint", "recovery_epochs": 2}, "triggers": {"enabled": False}}
    assert wants_gpu("find_ticket", {}, suspect_bytes=None, min_verify_bytes=1000)
    assert wants_gpu("attack", {}, suspect_bytes=None, min_verify_bytes=1000)
    assert wants_gpu("register_ticket", trains, suspect_bytes=None, min_verify_bytes=1000)
    assert not wants_gpu("register_ticket", plain, suspect_bytes=None, min_verify_bytes=1000)
    assert wants_gpu("register_ticket", plain | {"triggers": {"enabled": True}}, suspect_bytes=None,
                     min_verify_bytes=1000)
    assert wants_gpu("verify", {"mode": "white_box"}, suspect_bytes=5000, min_verify_bytes=1000)
    assert not wants_gpu("verify", {"mode": "white_box"}, suspect_bytes=10, min_verify_bytes=1000)
    assert not wants_gpu("verify", {"mode": "black_box"}, suspect_bytes=5000, min_verify_bytes=1000)
    assert wants_gpu("verify", {"mode": "white_box", "key_check": {"x": 1}}, suspect_bytes=10, min_verify_bytes=1000)
    on_gpus = job_resources(settings, "find_ticket", {}, suspect_bytes=None, cluster_gpus=8)
    assert (on_gpus.num_cpus, on_gpus.num_gpus) == (2, 0.5)
    assert job_resources(settings, "find_ticket", {}, suspect_bytes=None, cluster_gpus=0).num_gpus == 0
    assert job_resources(settings, "verify", {"mode": "black_box"}, suspect_bytes=None, cluster_gpus=8).num_gpus == 0
    cpu_only = settings.model_copy(update={"ray_gpus_per_job": 0})
    assert job_resources(cpu_only, "attack", {}, suspect_bytes=None, cluster_gpus=8).num_gpus == 0


def test_the_embedded_default_does_not_import_ray(tmp_path):
    code = ("import sys; from service.config import Settings; from service.app import create_app; "
            f"create_app(Settings(data_dir={str(tmp_path)!r}, secret_key='s')); "
            "sys.exit(1 if 'ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


@ON_POSTGRES
def test_jobs_lost_with_a_crashed_ray_cluster_are_rerun_on_the_restarted_one(ray_settings, ray_head, alice,
                                                                            model_files):
    """The Ray side restarts: the actor dies with its cluster, its lease runs out, and a dispatcher
    started against the new cluster requeues the job and runs it to the end."""
    job_id = _queued_search(ray_settings, alice.headers, seed=4, rounds=3, epochs=60)
    first = _dispatcher(ray_settings, ray_head)
    try:
        pid = wait_for(lambda: job_row(ray_settings, job_id).worker_pid, "the job's Ray worker")
        ray_head.crash()
    finally:
        _stop(first, signal.SIGKILL)  # its driver's cluster is gone; compose restarts it with the head
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    assert job_row(ray_settings, job_id).status == "running"
    ray_head.replace()
    second = _dispatcher(ray_settings.model_copy(update={"ray_address": ray_head.address}), ray_head)
    try:
        # the search's own length decides this wait: a loaded machine stretches it (a clean-clone CI run beside
        # other work took over 300 s), so the bound leaves the rest of the test's 600 s to it
        job = wait_for(lambda: (j := job_row(ray_settings, job_id)).status == "succeeded" and j, "success",
                       timeout=420)
    finally:
        _stop(second)
    assert job.attempts == 2 and job.worker_pid != pid


def _frozen_ray_settings(ray_settings: Settings) -> Settings:
    return ray_settings.model_copy(update={"db_idle_timeout": 2.0, "db_lock_timeout": 10.0,
                                           "worker_start_timeout": 20.0})


@ON_POSTGRES
def test_cancel_of_a_ray_worker_frozen_mid_transaction_answers_and_the_rest_runs(ray_settings, alice, model_files):
    """What hung CI: the actor frozen between its first statement on the job's row and its commit. The
    cancel used to wait on that row for good (and the dispatcher's renewals behind it)."""
    settings = _frozen_ray_settings(ray_settings)
    with TestClient(create_app(settings)) as client:
        submitted = _qr_registration(client, alice.headers, model_files.ticket)
        wait_for(lambda: (job_row(settings, submitted["job_id"]).lease_owner or "").startswith("ray:"),
                 "the dispatcher's claim")
        with frozen_worker(settings.resolved_database_url, submitted["job_id"]) as frozen:
            other = register(client, alice.headers, model_files.independent).json()
            started = time.monotonic()
            cancelled = client.post(f"/v1/jobs/{submitted['job_id']}/cancel", headers=alice.headers)
            assert cancelled.status_code == 200, cancelled.text
            assert time.monotonic() - started < 30.0  # it used to be never
            wait_for(lambda: job_row(settings, submitted["job_id"]).status == "cancelled", "cancellation")
            wait_for(lambda: not process_alive(frozen.pid), "the frozen actor's process to be gone")
            wait_for(lambda: job_row(settings, other["job_id"]).status == "succeeded", "the other job")


@ON_POSTGRES
def test_a_ray_worker_frozen_mid_job_is_killed_and_its_job_rerun(ray_settings, alice, model_files):
    settings = _frozen_ray_settings(ray_settings)
    with TestClient(create_app(settings)) as client:
        submitted = _qr_registration(client, alice.headers, model_files.ticket)
        wait_for(lambda: job_row(settings, submitted["job_id"]).heartbeat_at, "the actor to report")
        with frozen_worker(settings.resolved_database_url, submitted["job_id"]) as frozen:
            job = wait_for(lambda: (j := job_row(settings, submitted["job_id"])).status == "succeeded" and j,
                           "the job's second attempt to succeed")
            wait_for(lambda: not process_alive(frozen.pid), "the frozen actor's process to be gone")
    assert job.attempts == 2 and job.worker_pid != frozen.pid
