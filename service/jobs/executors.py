"""Executors: inline (in the API process, for tests), local (one subprocess per job), ray, external."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import sessions_for
from service.jobs.run import TRANSIENT_EXIT
from service.jobs.runner import execute_job
from service.jobs.service import (
    TERMINAL,
    claim,
    finish_cancelled,
    hold_if_ours,
    new_lease_owner,
    renew_leases,
    requeue_expired,
    requeue_or_fail,
)
from service.models import Job, utcnow

log = logging.getLogger("ticketguard.supervisor")

SPAWN_BACKOFF_SECONDS = 5.0


class Executor(Protocol):
    def submit(self, job_id: str) -> None: ...
    def wake(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class ExternalExecutor:
    """Jobs stay queued for a separate `ticketguard supervise` process."""

    def submit(self, job_id: str) -> None: ...
    def wake(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class InlineExecutor(ExternalExecutor):
    """Runs each job in the calling thread right after its request commits (tests, debugging)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def submit(self, job_id: str) -> None:
        token = f"inline/{uuid.uuid4().hex[:12]}"
        with sessions_for(self.settings)() as session:
            if not claim(session, job_id, lease_owner=token, lease_seconds=self.settings.lease_seconds):
                return
        execute_job(self.settings, job_id, token)


@dataclass(frozen=True)
class Ended:
    """How a worker ended. `transient`: the infrastructure failed (database, object store), not the job,
    so a requeue gives the attempt back."""

    reason: str
    transient: bool = False


class WorkerHandle(Protocol):
    """A worker running one job: a local process or a Ray actor."""

    pid: int | None
    started: float | None  # time.monotonic() when its process began; None while it waits for a node

    def poll(self) -> Ended | None:
        """None while the worker runs; once it ended, how."""

    def kill(self) -> None:
        """Stop the worker now (its job's outcome is the caller's to write)."""


@dataclass
class _Running:
    handle: WorkerHandle
    token: str


class Supervisor:
    """Claims queued jobs and hands each to a worker; what a worker is, subclasses say (`_spawn`).

    A worker reports for its job (`beat`: lease and heartbeat) and renews its own lease while it runs;
    the supervisor renews only the leases of workers that have not reported yet. At every tick it reads
    what the jobs table says of each job it runs and acts without waiting on anyone: a cancelled job's
    worker is killed; a worker that lost its job (its lease ran out and the job was requeued elsewhere)
    is killed; a worker that stopped renewing its lease (frozen: SIGSTOP, a VM pause, a partition) or
    never reported within `worker_start_timeout` is killed and its job requeued (up to `max_attempts`);
    a worker that ended before writing an outcome has its job requeued. Then it requeues jobs whose
    lease expired because their worker died unseen, and launches queued jobs. No transaction of its own
    stays open across a kill, a spawn or a call to Ray.
    """

    lease_prefix = ""

    def __init__(self, settings: Settings, *, poll_interval: float = 0.5) -> None:
        self.settings, self.poll_interval = settings, poll_interval
        self.identity = self.lease_prefix + new_lease_owner()
        self.running: dict[str, _Running] = {}
        self._make_session = sessions_for(settings)
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renew = 0.0
        self._launch_paused_until = 0.0
        # since when (monotonic) the database has answered every tick (-inf: no outage seen); after an
        # outage, workers get a lease's time to renew before anyone's expired lease counts against them
        self._db_since: float | None = float("-inf")

    def submit(self, job_id: str) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="ticketguard-supervisor", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def stop(self) -> None:
        """Stop claiming; kill running workers and hand their jobs back to the queue."""
        self._join()
        with self._make_session() as session:
            for job_id, running in list(self.running.items()):
                running.handle.kill()
                job = hold_if_ours(session, job_id, running.token)
                if job is not None:
                    job.attempts = max(0, job.attempts - 1)  # a shutdown is not the job's fault
                    requeue_or_fail(session, job, "supervisor shut down")
                session.commit()
            self.running.clear()

    def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except OperationalError as exc:
                self._db_since = None
                log.warning("database unavailable, retrying: %s", exc.orig)
            except Exception:
                log.exception("supervisor tick failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def tick(self) -> None:
        """One round: reap ended workers, watch the running ones, renew, requeue, launch."""
        if self._db_since is None:
            self._db_since = time.monotonic()
        with self._make_session() as session:
            self._reap(session)
            self._watch(session)
            if time.monotonic() - self._last_renew > self.settings.lease_seconds / 3:
                renew_leases(session, {j: r.token for j, r in self.running.items()},
                             lease_seconds=self.settings.lease_seconds)
                self._last_renew = time.monotonic()
            if self._leases_count():
                requeue_expired(session, ours=frozenset(self.running))
            if not self._stopping.is_set():
                self._launch(session)

    def _reap(self, session) -> None:
        for job_id, running in list(self.running.items()):
            ended = running.handle.poll()
            if ended is None:
                continue
            del self.running[job_id]
            job = hold_if_ours(session, job_id, running.token)  # None: the worker wrote its outcome
            if job is not None:
                if ended.transient:  # the database or object store was away: retry later, at no cost
                    job.attempts = max(0, job.attempts - 1)
                    self._launch_paused_until = time.monotonic() + SPAWN_BACKOFF_SECONDS
                status = requeue_or_fail(session, job, f"{ended.reason} before finishing")
                log.warning("job %s: worker ended (%s); now %s", job_id, ended.reason, status)
            session.commit()

    def _leases_count(self) -> bool:
        """Whether expired leases mean dead or frozen workers: not until the database has answered for
        a whole lease (after an outage every worker's renewals failed too)."""
        return self._db_since is not None and time.monotonic() - self._db_since >= self.settings.lease_seconds

    def _watch(self, session) -> None:
        """Act on the jobs table's word on each running job: cancelled, lost, frozen or never started."""
        if not self.running:
            return
        rows = {row.id: row for row in session.execute(
            select(Job.id, Job.status, Job.lease_owner, Job.lease_expires_at, Job.heartbeat_at,
                   Job.cancel_requested).where(Job.id.in_(list(self.running))))}
        session.commit()  # a plain read (it waits on no lock); nothing below runs inside it
        clock = time.monotonic()
        # a beat is due every third of a lease: one more third of slack before a late one counts
        overdue = utcnow() - timedelta(seconds=self.settings.lease_seconds / 3)
        for job_id, running in list(self.running.items()):
            row = rows.get(job_id)
            if row is not None and row.status in TERMINAL:
                continue  # its worker wrote the outcome and is ending: `_reap` sees it go
            if row is None or row.status != "running" or row.lease_owner != running.token:
                self._drop(session, job_id, "lost its job (its lease ran out)", then="release")
            elif row.cancel_requested:
                self._drop(session, job_id, "was cancelled", then="cancel")
            elif row.heartbeat_at is None:
                started = running.handle.started
                if started is not None and clock - started > self.settings.worker_start_timeout:
                    self._drop(session, job_id, f"did not report within {self.settings.worker_start_timeout:g} s "
                                                "of starting")
            elif self._leases_count() and row.lease_expires_at is not None and row.lease_expires_at < overdue:
                self._drop(session, job_id, f"stopped renewing its lease (silent since "
                                            f"{row.heartbeat_at.isoformat(timespec='seconds')}; frozen?)")

    def _drop(self, session, job_id: str, reason: str, *, then: str = "requeue") -> None:
        """Kill a job's worker first, then write what follows (`then`): "cancel", "requeue" (or fail, its
        attempts spent), or "release" (the job is no longer ours: nothing to write). Commits."""
        running = self.running.pop(job_id)
        running.handle.kill()
        job = hold_if_ours(session, job_id, running.token) if then != "release" else None
        status = "not ours"
        if job is not None and then == "cancel":
            finish_cancelled(session, job)
            status = job.status
        elif job is not None:
            status = requeue_or_fail(session, job, f"its worker {reason}")
        session.commit()
        log.warning("job %s: worker %s %s; killed it; job now %s", job_id, running.handle, reason, status)

    def _launch(self, session) -> None:
        free = self.settings.workers - len(self.running)
        if free <= 0 or time.monotonic() < self._launch_paused_until:
            return
        queued = session.execute(select(Job.id).where(Job.status == "queued")
                                 .order_by(Job.created_at).limit(free)).scalars().all()
        session.commit()
        for job_id in queued:
            token = f"{self.identity}/{uuid.uuid4().hex[:8]}"
            if not claim(session, job_id, lease_owner=token, lease_seconds=self.settings.lease_seconds):
                continue
            job = session.get(Job, job_id, populate_existing=True)
            session.commit()  # no transaction open while the worker starts (a Ray call may take a while)
            try:
                handle = self._spawn(job, token)
            except Exception as exc:  # no worker could be started (Ray unreachable, no processes left):
                # not the job's fault, so its attempt is given back; launching pauses for a while
                log.warning("job %s: no worker could be started (%s: %s); retrying in %s s", job_id,
                            type(exc).__name__, exc, SPAWN_BACKOFF_SECONDS)
                held = hold_if_ours(session, job_id, token)
                if held is not None:
                    held.attempts = max(0, held.attempts - 1)
                    requeue_or_fail(session, held, f"no worker could be started ({type(exc).__name__})")
                session.commit()
                self._launch_paused_until = time.monotonic() + SPAWN_BACKOFF_SECONDS
                return
            self.running[job_id] = _Running(handle, token)
            if handle.pid is not None:
                session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == token)
                                .values(worker_pid=handle.pid))
            session.commit()
            log.info("job %s (%s) started (%s)", job_id, job.kind, handle)

    def _spawn(self, job: Job, token: str) -> WorkerHandle:
        raise NotImplementedError


class _Process:
    """A local worker process (its own process group)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process, self.pid, self.started = process, process.pid, time.monotonic()

    def poll(self) -> Ended | None:
        code = self.process.poll()
        return None if code is None else Ended(f"worker exited with code {code}", transient=code == TRANSIENT_EXIT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __repr__(self) -> str:
        return f"process {self.pid}"


class LocalSupervisor(Supervisor):
    """Runs each job in a fresh `python -m service.jobs.run` process group on this machine."""

    def __init__(self, settings: Settings, *, poll_interval: float = 0.5) -> None:
        super().__init__(settings, poll_interval=poll_interval)
        self._log_dir = settings.data_dir / "logs"

    def _spawn(self, job: Job, token: str) -> WorkerHandle:
        env = self.settings.child_environment() | {"TICKETGUARD_LEASE_OWNER": token}
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log_dir / f"job-{job.id}.log", "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.jobs.run", job.id], env=env, stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return _Process(process)


def make_supervisor(settings: Settings) -> Supervisor:
    """The supervisor a `ticketguard supervise` process runs: Ray's dispatcher or local processes."""
    if settings.executor == "ray":
        from service.jobs.ray_executor import RayDispatcher  # Ray is an optional extra

        return RayDispatcher(settings)
    return LocalSupervisor(settings)


def make_executor(settings: Settings) -> Executor:
    if settings.executor == "inline":
        return InlineExecutor(settings)
    if settings.executor in ("local", "ray"):
        return make_supervisor(settings)
    return ExternalExecutor()
