"""`find_ticket` jobs: run a ticket finder in a worker and keep the ticket it leaves as an artifact."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.artifact_records import record_artifact
from service.audit.chain import append_event
from service.datasets.catalog import DatasetRef, load
from service.errors import APIError
from service.finding.configs import build_config
from service.jobs.context import JobContext
from service.jobs.service import enqueue, visible_job
from service.models import Job, Owner
from verifier.tickets import load_ticket, save_ticket
from verifier.tickets.registry import get_finder

FIND_KIND = "find_ticket"


def submit_find(session: Session, *, owner: Owner, arch: str, dataset: DatasetRef, method: str, seed: int | None,
                hyperparameters: dict[str, Any], max_attempts: int) -> Job:
    """Validate the hyperparameters (422 naming the field) and queue the search. Commits. Without a
    `seed` a random one is drawn and kept in the job's parameters (a resumed search uses it again)."""
    drawn = seed is None  # a drawn seed is a private initialisation; a given one, anyone may give too
    if drawn:
        seed = secrets.randbelow(2**31)
    finder = get_finder(method)
    config = build_config(finder.config_type, hyperparameters)
    if finder.needs_base:
        if not config.base:
            raise APIError(422, "invalid_hyperparameters", f"{method} needs `base`: the id of a find_ticket job")
        base = found_ticket_path(None, visible_job(session, owner=owner, job_id=config.base), check_only=True)
        if base["arch"] != arch or base["dataset"] != dataset.name:
            raise APIError(422, "invalid_hyperparameters",
                           f"base ticket is {base['arch']} on {base['dataset']}, not {arch} on {dataset.name}")
    job = enqueue(session, owner_id=owner.id, kind=FIND_KIND, max_attempts=max_attempts,
                  params={"arch": arch, "dataset": dataclasses.asdict(dataset), "method": method, "seed": seed,
                          "seed_drawn": drawn,
                          "hyperparameters": dataclasses.asdict(config),
                          "base_sha256": base["ticket_sha256"] if finder.needs_base else None})
    session.commit()
    return job


def run_find(ctx: JobContext) -> dict[str, Any]:
    """Job body: load the data, run the finder with progress, store the ticket artifact."""
    params = ctx.params
    finder = get_finder(params["method"])
    config = build_config(finder.config_type, params["hyperparameters"])
    ref = DatasetRef(**{**params["dataset"], "input_shape": tuple(params["dataset"]["input_shape"])})
    ctx.progress(0.0, f"loading {ref.name}", force=True)
    dataset = load(ctx.store, ref)
    checkpoints = ctx.settings.data_dir / "checkpoints" / ctx.job_id
    base = load_ticket(ctx.store.path(params["base_sha256"])) if finder.needs_base else None
    ticket = finder.find(params["arch"], dataset, seed=params["seed"], config=config, checkpoint_dir=checkpoints,
                         base=base, progress=lambda fraction, message: ctx.progress(0.98 * fraction, message))
    ctx.progress(0.99, "storing the ticket", force=True)
    with tempfile.TemporaryDirectory(dir=ctx.store.root / "tmp") as tmp:
        path = Path(tmp) / "ticket.safetensors"
        save_ticket(ticket, path)
        sha256, size = ctx.store.put_file(path)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return {"ticket_sha256": sha256, "size": size, **ticket.metadata()}


def finish_find(session: Session, job: Job, result: dict[str, Any]) -> None:
    record_artifact(session, sha256=result["ticket_sha256"], size=result["size"], kind="found_ticket")
    owner = session.get(Owner, job.owner_id)
    append_event(session, actor=owner.name, action="ticket.found", subject=f"job:{job.id}",
                 owner_id=job.owner_id,
                 payload={"job_id": job.id, "method": result["method"], "arch": result["arch"],
                          "dataset": result["dataset"], "seed": result["seed"],
                          "density": round(result["density"], 6), "accuracy": result["accuracy"],
                          "ticket_sha256": result["ticket_sha256"]})


def found_ticket_path(store, job: Job, *, check_only: bool = False):
    """The artifact a succeeded `find_ticket` job left (its result with `check_only`); 409 for other jobs."""
    if job.kind != FIND_KIND or job.status != "succeeded" or not job.result:
        raise APIError(409, "no_ticket", f"job {job.id} is a {job.kind} job that is {job.status}; "
                       "only a succeeded find_ticket job has a ticket")
    return job.result if check_only else store.path(job.result["ticket_sha256"])


def export_state(path: Path, form: str) -> dict:
    """The found ticket's trained weights: plain (pruned weights are zeros) or prune form."""
    ticket = load_ticket(path)
    if form == "plain":
        return ticket.state
    state = {k: v for k, v in ticket.state.items() if k not in ticket.mask}
    for name, keep in ticket.mask.items():
        state[f"{name}_orig"] = ticket.state[name]
        state[f"{name}_mask"] = keep.float()
    return state
