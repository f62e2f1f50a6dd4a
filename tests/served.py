"""The real service as a subprocess (`python -m service.cli serve`, what `ticketguard serve` runs) on a
PostgreSQL database of its own, and the checks of what its jobs left behind.

Shared by tests/test_faults.py and benchmarks/load.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180  # a loaded 2-core machine imports torch slowly; a healthy start never waits it out


def service_env(database_url: str, data_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of a served process: TICKETGUARD_<NAME> for each setting (executor local)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TICKETGUARD_")}
    values = {"database_url": database_url, "data_dir": data_dir, "executor": "local",
              "secret_key": "served-secret"} | settings
    env.update({f"TICKETGUARD_{key.upper()}": str(value) for key, value in values.items()})
    return env


def cli(env: dict[str, str], *args: str) -> str:
    """Run `ticketguard ARGS` (as `python -m service.cli`); its stdout. Fails loudly with its output."""
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"ticketguard {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def create_owner(env: dict[str, str], name: str) -> dict[str, str]:
    """Headers with the API key of a new owner (`ticketguard owners create` prints it last)."""
    key = cli(env, "owners", "create", name).strip().splitlines()[-1].strip()
    return {"Authorization": f"Bearer {key}"}


class Served:
    """`ticketguard serve` on 127.0.0.1:`port`, in its own session (so a SIGKILL hits it alone, and its
    worker processes, each in a session of their own, outlive it as they would a crashed host process)."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env, self.port, self.log_path = env, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Served:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"the service did not answer /healthz:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, running workers are left behind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if that takes over a minute."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def is_worker(pid: int) -> bool:
    """True while `pid` is a live job worker (`python -m service.jobs.run`), not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"service.jobs.run" in cmdline


def kill_worker(pid: int) -> None:
    """SIGKILL a worker's process group (a supervisor starts each worker as a group leader)."""
    if is_worker(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def kill_leftover_workers(database_url: str) -> None:
    """After a test: kill any worker a killed service left running (it would hold the database open)."""
    from service.db import session_factory
    from service.models import Job

    with session_factory(database_url)() as session:
        pids = session.execute(select(Job.worker_pid).where(Job.worker_pid.is_not(None))).scalars().all()
    for pid in pids:
        kill_worker(pid)


@dataclass
class Outcome:
    """What the jobs of some verifications left in the database, against the verdicts expected."""

    expected: int
    wrong: list[str] = field(default_factory=list)  # verification ids with another verdict
    lost: list[str] = field(default_factory=list)  # submitted, but missing or never finished
    run_twice: list[str] = field(default_factory=list)  # more than one attempt or completion event
    not_succeeded: list[str] = field(default_factory=list)  # job not `succeeded`
    unexpected: int = 0  # verifications in the database nobody submitted (here)

    @property
    def ok(self) -> bool:
        return not (self.wrong or self.lost or self.run_twice or self.not_succeeded or self.unexpected)


def verification_outcome(database_url: str, expected: dict[str, str]) -> Outcome:
    """Compare each verification ({id: verdict}) with the database: verdict, its job (succeeded, one
    attempt), one `verification.requested` and one `verification.completed` audit event each."""
    from service.db import session_factory
    from service.models import AuditEvent, Job, Verification

    outcome = Outcome(expected=len(expected))
    with session_factory(database_url)() as session:
        rows = {v.id: v for v in session.execute(select(Verification)).scalars()}
        jobs = {j.id: j for j in session.execute(select(Job)).scalars()}
        counts = session.execute(select(AuditEvent.subject, AuditEvent.action, func.count())
                                 .group_by(AuditEvent.subject, AuditEvent.action)).all()
        events = {(subject, action): count for subject, action, count in counts}
    outcome.unexpected = len(set(rows) - set(expected))
    for verification_id, verdict in expected.items():
        row = rows.get(verification_id)
        job = jobs.get(row.job_id) if row is not None else None
        if row is None or job is None or row.status == "pending":
            outcome.lost.append(verification_id)  # gone, or never finished
            continue
        if job.status != "succeeded" or row.status != "completed":
            outcome.not_succeeded.append(verification_id)
        subject = f"verification:{verification_id}"
        if job.attempts != 1 or events.get((subject, "verification.completed")) != 1 \
                or events.get((subject, "verification.requested")) != 1:
            outcome.run_twice.append(verification_id)
        if row.verdict != verdict:
            outcome.wrong.append(verification_id)
    return outcome


TERMINAL = ("succeeded", "failed", "cancelled")
COMPLETION_EVENTS = {  # job kind -> (audit action of its success, the event's subject)
    "register_ticket": ("ticket.registered", lambda job: f"ticket:{job.params['ticket_id']}"),
    "verify": ("verification.completed", lambda job: f"verification:{job.params['verification_id']}"),
    "find_ticket": ("ticket.found", lambda job: f"job:{job.id}"),
}


def jobs_by_id(database_url: str) -> dict:
    from service.db import session_factory
    from service.models import Job

    with session_factory(database_url)() as session:
        return {job.id: job for job in session.execute(select(Job)).scalars()}


def wait_finished(database_url: str, job_ids: list[str], timeout: float) -> dict:
    """Every job of `job_ids` once all are finished ({id: Job}); AssertionError naming the rest at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_by_id(database_url)
        pending = [j for j in job_ids if j not in jobs or jobs[j].status not in TERMINAL]
        if not pending:
            return {j: jobs[j] for j in job_ids}
        if time.monotonic() > deadline:
            states = {j: jobs[j].status if j in jobs else "missing" for j in pending}
            raise AssertionError(f"jobs not finished after {timeout} s: {states}")
        time.sleep(0.2)


def completion_events(database_url: str) -> dict[str, int]:
    """{job id: how many audit events record its success} for registration, verification and find jobs."""
    from service.db import session_factory
    from service.models import AuditEvent

    jobs = jobs_by_id(database_url)
    with session_factory(database_url)() as session:
        counts = session.execute(select(AuditEvent.subject, AuditEvent.action, func.count())
                                 .group_by(AuditEvent.subject, AuditEvent.action)).all()
        events = {(subject, action): count for subject, action, count in counts}
    return {job.id: events.get((COMPLETION_EVENTS[job.kind][1](job), COMPLETION_EVENTS[job.kind][0]), 0)
            for job in jobs.values() if job.kind in COMPLETION_EVENTS}


def post_model(client: httpx.Client, url: str, path: Path, **fields: object) -> httpx.Response:
    """POST a model file as a multipart form (`model`), with form `fields`."""
    return client.post(url, data={k: str(v) for k, v in fields.items() if v is not None},
                       files={"model": ("model.safetensors", path.read_bytes(), "application/octet-stream")})
