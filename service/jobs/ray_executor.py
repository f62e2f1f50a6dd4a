"""Ray executor: every job runs as a named, detached Ray actor with the resources its kind wants.

The jobs table stays the truth. The dispatcher claims a queued job (a lease token starting `ray:`),
creates the actor `job-<job id>` with `get_if_exists`, and calls its `run`, the same body as a local
worker process (`service.jobs.run.run_job`). The job id is the idempotency key: a second submission
of the same job finds the same actor, whose `run` executes the job once and then only returns the
outcome. Cancellation kills the actor. Actors are detached, so they outlive a dispatcher restart;
the next dispatcher adopts the actors of running jobs and kills those of finished ones, and a job
whose actor is gone (the cluster restarted) stops renewing its lease and is requeued when it expires.

Only this module imports Ray (`pip install ticketguard[ray]`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError
from sqlalchemy.orm import object_session

from service.config import Settings
from service.jobs.executors import Supervisor, WorkerHandle, _Running
from service.models import Artifact, Job

log = logging.getLogger("ticketguard.ray")

ACTOR_PREFIX = "job-"
TRAINING_KINDS = frozenset({"find_ticket", "lock_ticket", "attack"})


def actor_name(job_id: str) -> str:
    return f"{ACTOR_PREFIX}{job_id}"


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
    """The `TICKETGUARD_*` settings a job actor runs with (not the dispatcher's PATH, threads or GPUs)."""
    return {k: v for k, v in settings.child_environment().items() if k.startswith("TICKETGUARD_")}


class JobActor:
    """One job on a Ray worker process of its own; `run` executes it once, later calls return the outcome."""

    def __init__(self) -> None:
        self._outcome: str | None = None

    def run(self, job_id: str, lease_owner: str, env: dict[str, str]) -> str:
        if self._outcome is None:
            os.environ.update(env)
            from service.db import session_factory
            from service.jobs.run import run_job
            from service.jobs.service import record_worker_pid

            with session_factory(Settings().resolved_database_url)() as session:
                record_worker_pid(session, job_id, lease_owner, os.getpid())
            self._outcome = run_job(job_id, lease_owner)
        return self._outcome

    def outcome(self) -> str | None:
        """The outcome once `run` returned (an actor runs one call at a time, so this waits for it)."""
        return self._outcome


RemoteJobActor = ray.remote(max_restarts=0, max_task_retries=0)(JobActor)


class _Actor:
    """A job's actor and the reference to its `run` (or, for an adopted actor, `outcome`) call."""

    pid = None

    def __init__(self, actor: Any, ref: Any, name: str) -> None:
        self.actor, self.ref, self.name = actor, ref, name

    def poll(self) -> str | None:
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            ended = f"worker returned {ray.get(self.ref)!r}"
        except RayError as exc:
            ended = f"ray worker died ({type(exc).__name__})"
        self.kill()  # detached: the actor holds its CPUs/GPU until killed
        return ended

    def kill(self) -> None:
        try:
            ray.kill(self.actor, no_restart=True)
        except RayError as exc:  # already gone
            log.debug("actor %s: %s", self.name, exc)

    def __repr__(self) -> str:
        return f"ray actor {self.name}"


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
        names = [n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX)]
        with self._make_session() as session:
            for name in names:
                job_id = name.removeprefix(ACTOR_PREFIX)
                try:
                    actor = ray.get_actor(name, namespace=self.settings.ray_namespace)
                except ValueError:  # died meanwhile
                    continue
                job = session.get(Job, job_id)
                if (job is not None and job.status == "running" and (job.lease_owner or "").startswith("ray:")
                        and job_id not in self.running):
                    self.running[job_id] = _Running(_Actor(actor, actor.outcome.remote(), name), job.lease_owner)
                    log.info("job %s: adopted its running actor", job_id)
                elif job_id not in self.running:
                    _Actor(actor, None, name).kill()
                    log.info("job %s (%s): killed its stale actor", job_id, job.status if job else "unknown")

    def _spawn(self, job: Job, token: str) -> WorkerHandle:
        suspect = job.params.get("suspect_sha256")
        artifact = object_session(job).get(Artifact, suspect) if suspect else None
        suspect_bytes = artifact.size if artifact is not None else None
        resources = job_resources(self.settings, job.kind, job.params, suspect_bytes=suspect_bytes,
                                  cluster_gpus=ray.cluster_resources().get("GPU", 0.0))
        name = actor_name(job.id)
        actor = RemoteJobActor.options(
            name=name, namespace=self.settings.ray_namespace, get_if_exists=True, lifetime="detached",
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus).remote()
        return _Actor(actor, actor.run.remote(job.id, token, worker_environment(self.settings)), name)

