"""Attack jobs: an owner's robustness report on one of its tickets. The worker applies each attack of
the plan at each strength (`verifier.attacks.suite`) to a copy of the registered ticket, measures the
thief's test accuracy, and verifies the attacked model with every test the ticket carries, as a
verification would. Each row is saved as soon as it is done, so the report fills in while the job
runs and a worker that dies resumes after the last saved row."""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, replace
from typing import Any

import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.attacks.report import empty_row, scheme_columns, summarize
from service.attacks.schemas import AttackRequest
from service.audit.chain import append_event
from service.datasets.catalog import DatasetRef, load, resolve_dataset
from service.db import sessions_for
from service.errors import APIError
from service.jobs.context import JobContext
from service.jobs.service import enqueue
from service.locks.service import key_check_params, lock_inputs
from service.models import AttackReport, Job, Owner, Ticket, TicketLock, utcnow
from service.signatures.service import code_of
from service.verifications.service import Candidates, candidate_tests, decide_with, load_candidates
from service.visibility import get_visible
from verifier.attacks.finetune import last_linear
from verifier.attacks.forged_key import forged_key_accuracies
from verifier.attacks.suite import ATTACKS, Attacked, ThiefSetup, applicable, run_attack
from verifier.checkpoint import read_state_dict
from verifier.data import Dataset
from verifier.errors import VerifierError
from verifier.masks import load_mask
from verifier.models import build_model
from verifier.training import TrainConfig, evaluate

ATTACK_KIND = "attack"
BASELINE = ("none", 0.0)  # the first row: the ticket itself, unattacked


def submit_attacks(session: Session, *, owner: Owner, ticket: Ticket, request: AttackRequest,
                   max_attempts: int) -> AttackReport:
    """Check the request against the ticket (4xx otherwise), open the report, queue the job. Commits."""
    if ticket.owner_id != owner.id:
        raise APIError(403, "forbidden", "only the ticket's owner can attack it")
    if ticket.status != "registered":
        raise APIError(409, "not_registered", f"ticket {ticket.id} is {ticket.status}, not registered")
    dataset = resolve_dataset(session, ticket.dataset, owner=None)
    thief = resolve_dataset(session, request.data, owner=owner) if request.data else dataset
    if thief.spec != dataset.spec:
        raise APIError(422, "invalid_request", f"data {request.data!r} has input shape {thief.input_shape} and "
                       f"{thief.num_classes} classes; the ticket needs {dataset.input_shape} and "
                       f"{dataset.num_classes}")
    transfer = resolve_dataset(session, request.transfer_dataset, owner=owner) if request.transfer_dataset else None
    if transfer is not None and transfer.input_shape != dataset.input_shape:
        raise APIError(422, "invalid_request", f"transfer_dataset {request.transfer_dataset!r} has input shape "
                       f"{transfer.input_shape}; the ticket's is {dataset.input_shape}")
    plan = request.plan()
    lock = session.get(TicketLock, ticket.id)
    lock_params = None
    if lock is not None and any(name == "forged_key" for name, _ in plan):
        lock_params = {**key_check_params(session, ticket), "train": lock.report["train"],
                       "accuracy_with_key": lock.report["accuracy_with_key"],
                       "accuracy_without_key": lock.report["accuracy_without_key"]}
    report = AttackReport(owner_id=owner.id, ticket_id=ticket.id, status="pending",
                          request=request.model_dump(mode="json"), rows=[])
    session.add(report)
    session.flush()
    job = enqueue(session, owner_id=owner.id, kind=ATTACK_KIND, max_attempts=max_attempts, params={
        "report_id": report.id, "ticket_id": ticket.id, "arch": ticket.arch, "dataset_ref": asdict(dataset),
        "thief_ref": asdict(thief), "transfer_ref": asdict(transfer) if transfer else None,
        "plan": [list(row) for row in plan], "data_fraction": request.data_fraction,
        "fidelity_bound": request.fidelity_bound, "lr": request.lr, "seed": request.seed,
        "budget": request.budget.model_dump(), "lock": lock_params})
    report.job_id = job.id
    append_event(session, actor=owner.name, action="attack.requested", subject=f"attack_report:{report.id}",
                 owner_id=owner.id, ticket_id=ticket.id,
                 payload={"rows": len(plan), "preset": request.preset if request.attacks is None else None,
                          "attacks": sorted({name for name, _ in plan})})
    session.commit()
    return report


def _ref(data: dict[str, Any]) -> DatasetRef:
    return DatasetRef(**{**data, "input_shape": tuple(data["input_shape"])})


def _thief_share(dataset: Dataset, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first round(fraction * n) training examples of a seeded shuffle (all of them at 1)."""
    if fraction >= 1:
        return dataset.x_train, dataset.y_train
    order = torch.randperm(len(dataset.x_train), generator=torch.Generator().manual_seed(seed))
    keep = order[:max(1, round(fraction * len(order)))]
    return dataset.x_train[keep], dataset.y_train[keep]


class _Transfer:
    """The transfer attack's other task: a data set of the ticket's input shape, or the thief's own
    data relabelled by the parity of its class (a new 2-class task on the same inputs)."""

    def __init__(self, other: Dataset | None, thief: Dataset, x: torch.Tensor, y: torch.Tensor) -> None:
        if other is not None:
            self.x, self.y, self.classes = other.x_train, other.y_train, other.num_classes
            self.x_test, self.y_test, self.name = other.x_test, other.y_test, other.name
        else:
            self.x, self.y, self.classes = x, y % 2, 2
            self.x_test, self.y_test, self.name = thief.x_test, thief.y_test % 2, f"{thief.name} parity"


def run_attacks(ctx: JobContext) -> dict[str, Any]:
    """Job body: the baseline row (the ticket itself), then every planned attack and strength."""
    params, settings = ctx.params, ctx.settings
    started = time.monotonic()
    ctx.progress(0.01, "loading the ticket and the thief's data", force=True)
    dataset = load(ctx.store, _ref(params["dataset_ref"]))
    thief = dataset if params["thief_ref"] == params["dataset_ref"] else load(ctx.store, _ref(params["thief_ref"]))
    x, y = _thief_share(thief, params["data_fraction"], params["seed"])
    other = load(ctx.store, _ref(params["transfer_ref"])) if params["transfer_ref"] else None
    transfer = _Transfer(other, thief, x, y)
    found = load_candidates(settings, [params["ticket_id"]], both=True)
    ticket = found.tickets[params["ticket_id"]]
    signature = found.signatures.get(ticket.id)
    setup = ThiefSetup(
        arch=ticket.arch, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        state=read_state_dict(ctx.store.path(ticket.model_sha256)), mask=load_mask(ctx.store.path(ticket.mask_sha256)),
        x=x, y=y, seed=params["seed"], lr=params["lr"], placement=code_of(signature)[1] if signature else None,
        qr_version=signature.version if signature else 3, qr_error=signature.error_level if signature else "H",
        transfer_x=transfer.x, transfer_y=transfer.y, transfer_classes=transfer.classes)
    plan = [BASELINE] + [(name, float(strength)) for name, strength in params["plan"]]
    rows = {(r["attack"], r["strength"]): r for r in _saved_rows(ctx)}  # an earlier attempt's
    for index, (name, strength) in enumerate(plan):
        if (name, strength) in rows:
            continue
        ctx.progress(0.02 + 0.96 * index / len(plan), f"attack {index}/{len(plan) - 1}: {name} at {strength:g}",
                     force=True)
        baseline = rows.get(BASELINE)
        rows[(name, strength)] = _row(ctx, setup, found, dataset, transfer, name, strength, started=started,
                                      baseline_accuracy=baseline["test_accuracy"] if baseline else None)
        _save_rows(ctx, [rows[key] for key in plan if key in rows])
    ordered = [rows[key] for key in plan]
    ctx.progress(0.99, "summarising", force=True)
    return {"report_id": params["report_id"], "rows": ordered,
            "summary": summarize(ordered, fidelity_bound=params["fidelity_bound"], match_alpha=settings.match_alpha)}


def _skip_reason(ctx: JobContext, setup: ThiefSetup, name: str, strength: float, started: float) -> str | None:
    budget = ctx.params["budget"]
    if name == BASELINE[0]:
        return None
    reason = applicable(setup, name, locked=ctx.params["lock"] is not None)
    if reason is not None:
        return reason
    epochs = strength if ATTACKS[name].epochs else 0
    if epochs > budget["max_epochs"]:
        return f"{strength:g} epochs is over the budget's max_epochs ({budget['max_epochs']})"
    if budget.get("max_minutes") and time.monotonic() - started > 60 * budget["max_minutes"]:
        return f"the budget's max_minutes ({budget['max_minutes']:g}) had run out"
    return None


def _row(ctx: JobContext, setup: ThiefSetup, found: Candidates, dataset: Dataset, transfer: _Transfer, name: str,
         strength: float, *, started: float, baseline_accuracy: float | None) -> dict[str, Any]:
    """One row of the report: the attack applied at `strength`, the thief's accuracy, every test."""
    spec = ATTACKS.get(name)
    row = empty_row(name, spec.family if spec else "none", strength, spec.unit if spec else "")
    reason = _skip_reason(ctx, setup, name, strength, started)
    if reason is not None:
        return {**row, "status": "skipped", "note": reason}
    began = time.monotonic()
    seed = (ctx.params["seed"] + zlib.crc32(f"{name}:{strength:g}".encode())) % 2**31
    bound = ctx.params["fidelity_bound"]
    try:
        if name == "forged_key":
            row.update(_forged_key(ctx, int(strength), bound))
        else:
            attacked = Attacked(setup.state, setup.num_classes) if name == BASELINE[0] else run_attack(
                replace(setup, seed=seed), name, strength)
            row.update(_judge(ctx, setup, found, dataset, transfer, attacked, seed, transferred=name == "transfer",
                              baseline_accuracy=baseline_accuracy, bound=bound))
    except VerifierError as error:  # an attack that cannot run on this ticket: the row says why
        return {**row, "status": "failed", "note": str(error), "seconds": round(time.monotonic() - began, 2)}
    return {**row, "status": "done", "seconds": round(time.monotonic() - began, 2)}


def _judge(ctx: JobContext, setup: ThiefSetup, found: Candidates, dataset: Dataset, transfer: _Transfer,
           attacked: Attacked, seed: int, *, transferred: bool, baseline_accuracy: float | None,
           bound: float) -> dict[str, Any]:
    """The attacked model's test accuracy and the verification of it, with every test the ticket
    carries. A model with another head (`transfer`) is scored on its new task and tested on the
    layers it shares with the ticket; the fidelity bound does not apply to it."""
    model = build_model(setup.arch, setup.input_shape, attacked.num_classes)
    model.load_state_dict(attacked.state)
    ticket = found.tickets[ctx.params["ticket_id"]]
    if transferred:
        accuracy = evaluate(model, transfer.x_test, transfer.y_test)
        layers = set(setup.mask) - {f"{last_linear(model)}.weight"}
    else:
        accuracy, layers = evaluate(model, dataset.x_test, dataset.y_test), None
    tests = candidate_tests(ctx, found, ticket, (setup.input_shape, setup.num_classes), attacked.state, None, seed,
                            selection=1, layers=layers)
    decision = decide_with(ctx.settings, tests, compared=1)
    change = accuracy - baseline_accuracy if baseline_accuracy is not None and layers is None else None
    notes = [attacked.note] if attacked.note else []
    if layers is not None:
        notes.append(f"accuracy on {transfer.name}, so the fidelity bound does not apply")
    aligned = tests.get("aligned_topology")
    if aligned is not None and not aligned.evidence["calibrated"]:
        why = aligned.evidence.get("reason") or (f"{aligned.evidence['references']} of "
                                                 f"{aligned.evidence['references_needed']} earlier tickets")
        notes.append(f"aligned topology test not calibrated ({why}), so a permuted copy is not caught")
    if decision.decided_by == "qr_mac":
        notes.append("decided by a valid QR MAC")
    if decision.relation == "shares_initialisation":
        notes.append("shares the ticket's public initialisation: the white-box tests cannot tell it from an honest "
                     "ticket found from that initialisation (sign the ticket or embed a trigger set)")
    return {"test_accuracy": accuracy, "accuracy_change": change,
            "within_fidelity": None if change is None else change >= -bound, **scheme_columns(tests.to_dict()),
            "p_value": decision.p_value, "verdict": decision.verdict, "ownership_proven": decision.verdict == "match",
            "note": "; ".join(notes) or None}


def _forged_key(ctx: JobContext, forgeries: int, bound: float) -> dict[str, Any]:
    """The paper's fake1: retrain the published locked ticket with random keys of the genuine key's
    size, under the lock's recipe and seed. The forgery succeeds if a forged key regains as much as
    the genuine key does, within the fidelity bound; ownership (by key) holds while none does."""
    lock = ctx.params["lock"]
    ticket, data = lock_inputs(ctx, lock)
    key = load_mask(ctx.store.path(lock["key_mask_sha256"]))
    locked = {name: ticket.mask[name].bool() & ~key[name].bool() for name in key}
    accuracies = forged_key_accuracies(ticket, data, locked, key, forgeries=forgeries,
                                       seed=zlib.crc32(lock["ticket_id"].encode()), config=TrainConfig(**lock["train"]))
    genuine, best = lock["accuracy_with_key"], max(accuracies)
    works = best >= genuine - bound
    return {"test_accuracy": best, "accuracy_change": best - genuine, "within_fidelity": works,
            "ownership_proven": not works,
            "note": f"best of {forgeries} forged key(s); the genuine key retrains to {genuine:.4f}, the locked mask "
                    f"alone to {lock['accuracy_without_key']:.4f}; accuracy change is against the genuine key"}


def _saved_rows(ctx: JobContext) -> list[dict[str, Any]]:
    with sessions_for(ctx.settings)() as session:
        report = session.get(AttackReport, ctx.params["report_id"])
        return list(report.rows or []) if report is not None else []


def _save_rows(ctx: JobContext, rows: list[dict[str, Any]]) -> None:
    """Write the rows so far, while this worker still holds the job's lease."""
    held = select(Job.id).where(Job.id == ctx.job_id, Job.lease_owner == ctx.lease_owner,
                                Job.status == "running").exists()
    with sessions_for(ctx.settings)() as session:
        session.execute(update(AttackReport).where(AttackReport.id == ctx.params["report_id"], held)
                        .values(rows=rows, status="running"))
        session.commit()


def finish_attacks(session: Session, job: Job, result: dict[str, Any]) -> None:
    """In the job's final transaction: the report is complete, and the audit chain says so."""
    report = session.get(AttackReport, job.params["report_id"])
    report.rows, report.summary = result.pop("rows"), result["summary"]
    report.status, report.completed_at = "completed", utcnow()
    owner = session.get(Owner, report.owner_id)
    summary = result["summary"]
    append_event(session, actor=owner.name, action="attack.completed", subject=f"attack_report:{report.id}",
                 owner_id=report.owner_id, ticket_id=report.ticket_id,
                 payload={key: summary[key] for key in ("rows", "applied", "within_fidelity",
                                                        "proven_within_fidelity", "escapes")})


def visible_report(session: Session, *, owner: Owner, report_id: str) -> AttackReport:
    return get_visible(session, AttackReport, report_id, owner=owner, what="attack report")


def list_reports(session: Session, *, owner: Owner, ticket_id: str | None) -> list[AttackReport]:
    query = select(AttackReport).order_by(AttackReport.created_at)
    if not owner.is_admin:
        query = query.where(AttackReport.owner_id == owner.id)
    if ticket_id:
        query = query.where(AttackReport.ticket_id == ticket_id)
    return list(session.execute(query).scalars())
