"""Key masks (the paper's scheme V1) in the service: a `lock_ticket` job splits a registered ticket's
mask into a locked part, published, and a key, kept here; it measures at once how much accuracy
retraining from the rewind weights loses without the key, and with a forged (random) key instead.
The science is `verifier.keymask`."""

from __future__ import annotations

import zlib
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.artifact_records import record_artifact
from service.audit.chain import append_event
from service.datasets.catalog import DatasetRef, load, resolve_dataset
from service.errors import APIError
from service.jobs.context import JobContext
from service.jobs.service import enqueue
from service.modelfiles import store_mask, store_weights
from service.models import Job, Owner, Ticket, TicketLock
from verifier.checkpoint import read_state_dict
from verifier.keymask import KeyConfig, key_gap, lock_ticket, random_key
from verifier.masks import Mask, count_kept, load_mask
from verifier.tickets import load_ticket
from verifier.tickets.ticket import Ticket as FoundTicket

LOCK_KIND = "lock_ticket"


def rewind_source(session: Session, ticket: Ticket) -> str | None:
    """The found-ticket artifact whose rewind weights the ticket came with (None for an upload)."""
    job = session.get(Job, ticket.job_id) if ticket.job_id else None
    return job.params.get("rewind_sha256") if job is not None else None


def submit_lock(session: Session, *, owner: Owner, ticket: Ticket, score: str, key_fraction: float,
                epochs: int | None, max_attempts: int) -> Job:
    """Check the ticket can be locked by this caller (4xx otherwise) and queue the job. Commits."""
    if ticket.owner_id != owner.id:
        raise APIError(403, "forbidden", "only the ticket's owner can lock it")
    if ticket.status != "registered":
        raise APIError(409, "not_registered", f"ticket {ticket.id} is {ticket.status}, not registered")
    if session.get(TicketLock, ticket.id) is not None:
        raise APIError(409, "already_locked", f"ticket {ticket.id} is locked already")
    running = session.execute(select(Job.id, Job.params).where(
        Job.kind == LOCK_KIND, Job.status.in_(("queued", "running")))).all()
    if any(params.get("ticket_id") == ticket.id for _, params in running):
        raise APIError(409, "lock_in_progress", f"ticket {ticket.id} is being locked already")
    if rewind_source(session, ticket) is None:
        raise APIError(409, "no_rewind_weights", "a key mask is checked by retraining from the ticket's rewind "
                       "weights, and an uploaded ticket has none: register a found ticket (`from_job`)")
    job = enqueue(session, owner_id=owner.id, kind=LOCK_KIND, max_attempts=max_attempts, params={
        **_ticket_params(session, ticket), "score": score, "key_fraction": key_fraction, "epochs": epochs})
    session.commit()
    return job


def _ticket_params(session: Session, ticket: Ticket) -> dict[str, Any]:
    """What `lock_inputs` reads in the worker: the ticket's artifacts, rewind source and dataset."""
    return {"ticket_id": ticket.id, "arch": ticket.arch,
            "dataset_ref": asdict(resolve_dataset(session, ticket.dataset, owner=None)),
            "rewind_sha256": rewind_source(session, ticket), "model_sha256": ticket.model_sha256,
            "mask_sha256": ticket.mask_sha256}


def lock_inputs(ctx: JobContext, params: dict[str, Any]) -> tuple[FoundTicket, Any]:
    """The registered ticket as the verifier sees it (its weights and mask, the rewind weights and
    training recipe of the ticket it was found as), and its dataset."""
    ref = params["dataset_ref"]
    dataset = load(ctx.store, DatasetRef(**{**ref, "input_shape": tuple(ref["input_shape"])}))
    found = load_ticket(ctx.store.path(params["rewind_sha256"]))
    ticket = FoundTicket(arch=params["arch"], dataset=dataset.name, seed=found.seed,
                         state=read_state_dict(ctx.store.path(params["model_sha256"])), rewind=found.rewind,
                         mask=load_mask(ctx.store.path(params["mask_sha256"])), accuracy=found.accuracy,
                         dense_accuracy=found.dense_accuracy, method=found.method,
                         hyperparameters=found.hyperparameters)
    return ticket, dataset


def run_lock(ctx: JobContext) -> dict[str, Any]:
    """Job body: score the kept weights, split off the key, retrain with and without it (and with a
    random key of the same size), store the locked ticket and the key."""
    params = ctx.params
    ticket, dataset = lock_inputs(ctx, params)
    config = KeyConfig(score=params["score"], key_fraction=params["key_fraction"],
                       seed=zlib.crc32(params["ticket_id"].encode()))
    overrides = {"epochs": params["epochs"]} if params.get("epochs") else {}
    ctx.progress(0.02, f"scoring kept weights ({config.score})", force=True)
    locked, key = lock_ticket(ticket, dataset, config)
    stages = (("key", key), ("forged key", random_key(locked, count_kept(key), config.seed + 1)))
    gaps = {}
    for index, (label, candidate) in enumerate(stages):
        def progress(fraction: float, message: str, index: int = index, label: str = label) -> None:
            ctx.progress(0.05 + 0.9 * (index + fraction) / len(stages), f"{label}: {message}")

        gaps[label] = key_gap(ticket, dataset, locked, candidate, config, progress=progress, **overrides)
    ctx.progress(0.96, "storing the locked ticket and the key", force=True)
    locked_weights = {k: (v * locked[k] if k in locked else v) for k, v in ticket.state.items()}
    model_sha, model_size = store_weights(ctx.store, locked_weights)
    key_sha, key_size = store_mask(ctx.store, key)
    genuine, forged = gaps["key"], gaps["forged key"]
    report = {"score": config.score, "key_fraction": config.key_fraction, "key_size": genuine.key_size,
              "locked_size": genuine.locked_size, "accuracy_without_key": genuine.accuracy_without_key,
              "accuracy_with_key": genuine.accuracy_with_key, "gap": genuine.gap,
              "accuracy_with_forged_key": forged.accuracy_with_key, "forged_gap": forged.gap,
              "train": genuine.config["train"]}
    return {"locked_model_sha256": model_sha, "locked_model_size": model_size, "key_mask_sha256": key_sha,
            "key_mask_size": key_size, "report": report}


def finish_lock(session: Session, job: Job, result: dict[str, Any]) -> None:
    """In the job's final transaction: keep the key, and say so in the audit chain."""
    ticket = session.get(Ticket, job.params["ticket_id"])
    record_artifact(session, sha256=result["locked_model_sha256"], size=result["locked_model_size"], kind="model")
    record_artifact(session, sha256=result["key_mask_sha256"], size=result["key_mask_size"], kind="mask")
    report = result["report"]
    session.add(TicketLock(ticket_id=ticket.id, score=report["score"], key_fraction=report["key_fraction"],
                           key_mask_sha256=result.pop("key_mask_sha256"),
                           locked_model_sha256=result["locked_model_sha256"], report=report))
    owner = session.get(Owner, ticket.owner_id)
    append_event(session, actor=owner.name, action="ticket.locked", subject=f"ticket:{ticket.id}",
                 owner_id=ticket.owner_id, ticket_id=ticket.id,
                 payload={"score": report["score"], "key_size": report["key_size"],
                          "locked_model_sha256": result["locked_model_sha256"], "gap": round(report["gap"], 6)})


def ticket_lock(session: Session, ticket: Ticket) -> TicketLock:
    lock = session.get(TicketLock, ticket.id)
    if lock is None:
        raise APIError(404, "not_locked", f"ticket {ticket.id} has no key mask (POST /v1/tickets/{ticket.id}/lock)")
    return lock


def key_check_params(session: Session, ticket: Ticket) -> dict[str, Any]:
    """What a verification's key check needs, fixed when it is asked for (404 if the ticket is not locked)."""
    found = ticket_lock(session, ticket)
    return {**_ticket_params(session, ticket), "key_mask_sha256": found.key_mask_sha256, "score": found.score,
            "key_fraction": found.key_fraction, "epochs": found.report["train"]["epochs"],
            "registered_gap": found.report["gap"], "registered_forged_gap": found.report["forged_gap"]}


def run_key_check(ctx: JobContext, params: dict[str, Any], suspect_mask: Mask) -> dict[str, Any]:
    """The paper's V1 verification: retrain from the ticket's rewind weights with the suspect's mask
    (less the key) and with the key added back; a suspect that is the published locked ticket
    regains what the key took, as it did at lock time. Reported beside the verdict, without a
    p-value: the gap is one retraining pair, not a calibrated test."""
    ticket, dataset = lock_inputs(ctx, params)
    key = load_mask(ctx.store.path(params["key_mask_sha256"]))
    without = {name: suspect_mask[name].bool() & ~key[name].bool() for name in key}
    config = KeyConfig(score=params["score"], key_fraction=params["key_fraction"],
                       seed=zlib.crc32(params["ticket_id"].encode()))

    def progress(fraction: float, message: str) -> None:
        ctx.progress(0.6 + 0.4 * fraction, f"key check: {message}")

    gap = key_gap(ticket, dataset, without, key, config, progress=progress, epochs=params["epochs"])
    return {"accuracy_without_key": gap.accuracy_without_key, "accuracy_with_key": gap.accuracy_with_key,
            "gap": gap.gap, "gap_at_lock": params["registered_gap"],
            "forged_gap_at_lock": params["registered_forged_gap"], "epochs": params["epochs"]}
