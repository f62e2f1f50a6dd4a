"""Ray executor: every job runs as a named, detached Ray actor with the resources its kind wants.

The jobs table stays the truth. The dispatcher claims a queued job (a lease token starting `ray:`),
creates the actor `job-<job id>-<attempt>` with `get_if_exists`, and calls its `run`, the same body as
a local worker process (`service.jobs.run.run_job`). The job id (with its attempt) is the idempotency
key: a second submission of the same attempt finds the same actor, whose `run` executes the job once
and then only returns the outcome; a retry is a new attempt, a new actor, and the old attempt's actor
is killed. Cancellation kills the actor. Actors are detached, so they outlive a dispatcher restart;
the next dispatcher adopts the actors of running jobs and kills the others, and a job whose actor is
gone (the cluster restarted) stops renewing its lease and is requeued when it expires.

Only this module imports Ray (`pip install ticketguard[ray]`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError
from sqlalchemy import select

from service.config import Settings
from service.jobs.executors import Ended, Supervisor, WorkerHandle, _Running
from service.jobs.runner import TRANSIENT_OUTCOMES
from service.models import Artifact, Job

log = logging.getLogger("ticketguard.ray")

ACTOR_PREFIX = "job-"
TRAINING_KINDS = frozenset({"find_ticket", "lock_ticket", "attack"})


def actor_name(job_id: str, attempt: int) -> str:
    return f"{ACTOR_PREFIX}{job_id}-{attempt}"


def parse_actor_name(name: str) -> tuple[str, int] | None:
    """(job id, attempt) of one of our actors' names, or None for any other name."""
    job_id, _, attempt = name.removeprefix(ACTOR_PREFIX).rpartition("-")
    return (job_id, int(attempt)) if name.startswith(ACTOR_PREFIX) and job_id and attempt.isdigit() else None


def wants_gpu(kind: str, params: dict[str, Any], *, suspect_bytes: int | None, min_verify_bytes: int) -> bool:
    """Whether a job of this kind profits from a GPU.

    Training, embedding and attacks do; a registration only when it trains (a QR signature's recovery
    fine-tune or a trigger set); a verification when it retrains (key check) or the suspect model is
    large enough for its white-box tests to be GPU work. Fingerprints and black-box checks do not."""
    if kind in TRAINING_KINDS:
        return True
    if kind == "register_ticket":
        signature, triggers = params.get("signature") or {}, params.get("triggers") or {}
        trains_signature = signature.get("kind", "auto") in ("auto", "qr") and signature.get("recovery_epochs", 0) > 0
        return trains_signature or bool(triggers.get("enabled"))
    if kind == "verify":
        if params.get("key_check"):
            return True
        return params.get("mode") != "black_box" and (suspect_bytes or 0) >= min_verify_bytes
    return False


@dataclass(frozen=True)
class Resources:
    num_cpus: float
    num_gpus: float


def job_resources(settings: Settings, kind: str, params: dict[str, Any], *, suspect_bytes: int | None,
                  cluster_gpus: float) -> Resources:
    """What to ask Ray for: GPUs for a job that wants them when the cluster has any, else CPUs only."""
    gpu = (settings.ray_gpus_per_job > 0 and cluster_gpus > 0
           and wants_gpu(kind, params, suspect_bytes=suspect_bytes, min_verify_bytes=settings.ray_gpu_verify_bytes))
    return Resources(settings.ray_cpus_per_job, settings.ray_gpus_per_job if gpu else 0.0)


def worker_environment(settings: Settings) -> dict[str, str]:
    """The `TICKETGUARD_*` settings a job actor runs with (not the dispatcher's PATH, threads or GPUs).

    The server secret goes too, also when it was generated into DATA_DIR: a node elsewhere would
    otherwise generate its own and sign QR payloads and trigger sets with another key."""
    env = {k: v for k, v in settings.child_environment().items() if k.startswith("TICKETGUARD_")}
    env["TICKETGUARD_SECRET_KEY"] = settings.secret().decode()
    return env


class JobActor:
    """One job on a Ray worker process of its own; `run` executes it once, later calls return the outcome."""

    def __init__(self) -> None:
        self._outcome: str | None = None
        self._lease_owner: str | None = None

    def run(self, job_id: str, lease_owner: str, env: dict[str, str]) -> str:
        if self._lease_owner not in (None, lease_owner):
            return "not_owned"  # another attempt's actor: never run a job for a lease it was not made for
        self._lease_owner = lease_owner
        if self._outcome is None:
            os.environ.update(env)
            from service.db import sessions_for
            from service.jobs.run import run_job
            from service.jobs.service import record_worker_pid

            with sessions_for(Settings())() as session:  # the pid first: a dispatcher can tell what to kill
                record_worker_pid(session, job_id, lease_owner, os.getpid())
            self._outcome = run_job(job_id, lease_owner)
        return self._outcome

    def outcome(self) -> str | None:
        """The outcome once `run` returned (an actor runs one call at a time, so this waits for it)."""
        return self._outcome


RemoteJobActor = ray.remote(max_restarts=0, max_task_retries=0)(JobActor)


class _Actor:
    """A job's actor and the reference to its `run` (or, for an adopted actor, `outcome`) call.

    `started` is set once a node took the actor (an adopted actor: at once), so the supervisor's
    `worker_start_timeout` counts from there, not from a wait for a free GPU."""

    pid = None

    def __init__(self, actor: Any, ref: Any, name: str, *, start_timeout: float | None = None) -> None:
        self.actor, self.ref, self.name, self.start_timeout = actor, ref, name, start_timeout
        self.ready = actor.__ray_ready__.remote() if start_timeout is not None else None
        self.created = time.monotonic()
        self.started = self.created if self.ready is None else None

    def poll(self) -> Ended | None:
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            if self.ready is not None:
                if ray.wait([self.ready], timeout=0)[0]:
                    self.ready, self.started = None, time.monotonic()  # it started: no deadline on the job
                elif time.monotonic() - self.created > self.start_timeout:
                    self.kill()
                    return Ended(f"not scheduled by Ray within {self.start_timeout:g} s (no node has the "
                                 "CPUs or GPUs it asks for)")
            return None
        try:
            outcome = ray.get(self.ref)
            ended = Ended(f"worker returned {outcome!r}", transient=outcome in TRANSIENT_OUTCOMES)
        except RayError as exc:
            ended = Ended(f"ray worker died ({type(exc).__name__})")
        self.kill()  # detached: the actor holds its CPUs/GPU until killed
        return ended

    def kill(self) -> None:
        kill_actor(self.actor, self.name)

    def __repr__(self) -> str:
        return f"ray actor {self.name}"


def kill_actor(actor: Any, name: str) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except RayError as exc:  # already gone
        log.debug("actor %s: %s", name, exc)


class RayDispatcher(Supervisor):
    """Submits jobs to a Ray cluster (`TICKETGUARD_RAY_ADDRESS`; a local instance without one).

    `workers` bounds the jobs in flight on the cluster: the rest stay queued in the jobs table, where
    any dispatcher can take them, rather than claimed and waiting in Ray's queue."""

    lease_prefix = "ray:"

    def start(self) -> None:
        if not ray.is_initialized():
            ray.init(address=self.settings.ray_address, namespace=self.settings.ray_namespace,
                     ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
        self.reconcile()
        super().start()

    def stop(self) -> None:
        """Stop dispatching. Actors whose job ended are killed; the others keep running (they renew
        their own leases) and the next dispatcher adopts them."""
        self._join()
        with self._make_session() as session:
            self._reap(session)
        self.running.clear()

    def reconcile(self) -> None:
        """Match Ray's job actors with the jobs table: adopt the actors of running jobs, kill the rest."""
        ours = {name: parsed for name in ray.util.list_named_actors()
                if (parsed := parse_actor_name(name)) is not None and parsed[0] not in self.running}
        with self._make_session() as session:  # read, then close: no transaction across the Ray calls below
            jobs = {job.id: job for job in session.execute(
                select(Job).where(Job.id.in_([job_id for job_id, _ in ours.values()]))).scalars()}
        for name, (job_id, attempt) in ours.items():
            try:
                actor = ray.get_actor(name, namespace=self.settings.ray_namespace)
            except ValueError:  # died meanwhile
                continue
            job = jobs.get(job_id)
            if (job is not None and job.status == "running" and job.attempts == attempt
                    and (job.lease_owner or "").startswith(self.lease_prefix)):
                self.running[job_id] = _Running(_Actor(actor, actor.outcome.remote(), name), job.lease_owner)
                log.info("job %s: adopted its running actor", job_id)
            else:
                kill_actor(actor, name)
                log.info("job %s (%s): killed its stale actor %s", job_id, job.status if job else "unknown", name)

    def _spawn(self, job: Job, token: str) -> WorkerHandle:
        suspect, suspect_bytes = job.params.get("suspect_sha256"), None
        if suspect:
            with self._make_session() as session:  # closed before the Ray calls below
                artifact = session.get(Artifact, suspect)
                suspect_bytes = artifact.size if artifact is not None else None
        resources = job_resources(self.settings, job.kind, job.params, suspect_bytes=suspect_bytes,
                                  cluster_gpus=ray.cluster_resources().get("GPU", 0.0))
        for earlier in range(1, job.attempts):  # an earlier attempt's actor may outlive its lease: stop it
            with contextlib.suppress(ValueError):
                kill_actor(ray.get_actor(actor_name(job.id, earlier), namespace=self.settings.ray_namespace),
                           actor_name(job.id, earlier))
        name = actor_name(job.id, job.attempts)
        actor = RemoteJobActor.options(
            name=name, namespace=self.settings.ray_namespace, get_if_exists=True, lifetime="detached",
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus).remote()
        return _Actor(actor, actor.run.remote(job.id, token, worker_environment(self.settings)), name,
                      start_timeout=self.settings.ray_start_timeout)
