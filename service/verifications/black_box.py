"""Black-box verification (scheme V3): a suspect's answers to a ticket's trigger inputs, from an
uploaded model run as a black box, a remote prediction endpoint, or answers the owner gathered."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from service.datasets.catalog import DatasetRef, load, resolve_dataset
from service.db import sessions_for
from service.jobs.context import JobContext
from service.modelfiles import ParsedModel, fit_to_template
from service.models import Ticket, TriggerSet
from service.triggers.answers import parse_answers
from service.triggers.endpoint import policy_from_settings, query_endpoint
from service.triggers.service import TRIGGER_MATCHES, judge_answers, load_triggers, predict_labels
from service.verifications.calibration import stored_references
from verifier.checkpoint import read_state_dict, split_masks
from verifier.decision import CandidateTests, SchemeResult, decide
from verifier.errors import VerifierError
from verifier.models import build_model
from verifier.triggers import TriggerSet as Triggers


@dataclass
class Candidate:
    """A ticket with a trigger set, as a black-box check needs it."""

    ticket: Ticket
    trigger_set: TriggerSet
    dataset: DatasetRef
    references: list[float]

    @property
    def spec(self) -> tuple:
        return self.dataset.spec


def trigger_candidates(ctx: JobContext, ticket_ids: list[str] | None) -> list[Candidate]:
    """The registered tickets with a trigger set (only `ticket_ids`, if given), oldest first, with their
    dataset's shape and the empirical null's reference matches."""
    with sessions_for(ctx.settings)() as session:
        query = (select(Ticket, TriggerSet).join(TriggerSet, TriggerSet.ticket_id == Ticket.id)
                 .where(Ticket.status == "registered").order_by(Ticket.registered_at, Ticket.id))
        if ticket_ids is not None:
            query = query.where(Ticket.id.in_(ticket_ids))
        rows = list(session.execute(query).all())
        datasets = {d: resolve_dataset(session, d, owner=None) for d in {t.dataset for t, _ in rows}}
        references = stored_references(session, [t.id for t, _ in rows], kind=TRIGGER_MATCHES)
        session.expunge_all()
    return [Candidate(ticket, found, datasets[ticket.dataset], references.get(ticket.id, []))
            for ticket, found in rows]


AnswersFor = Callable[[Candidate, Triggers], tuple[np.ndarray, dict[str, Any]]]  # labels, extra evidence


def trigger_test(ctx: JobContext, candidate: Candidate, answers_for: AnswersFor) -> dict[str, Any]:
    """Judge the suspect's answers (`answers_for`) to this candidate's trigger set."""
    triggers = load_triggers(ctx.store.path(candidate.trigger_set.artifact_sha256))
    answers, extra = answers_for(candidate, triggers)
    result = judge_answers(triggers, answers, candidate.trigger_set.num_classes, candidate.references,
                           min_references=ctx.settings.topology_min_references, source=candidate.trigger_set.source,
                           registered_at=candidate.trigger_set.created_at)
    return {"ticket_id": candidate.ticket.id, **result, **extra}


def model_answers(weights: dict, masks: dict) -> AnswersFor:
    """Answers of an uploaded model run in the worker: only its predicted labels are used."""
    fitted: dict[tuple, ParsedModel | None] = {}

    def answers_for(candidate: Candidate, triggers: Triggers) -> tuple[np.ndarray, dict[str, Any]]:
        key = (candidate.ticket.arch, candidate.spec)
        if key not in fitted:
            template = build_model(candidate.ticket.arch, *candidate.spec).state_dict()
            try:
                fitted[key] = fit_to_template(weights, masks, template=template, arch=candidate.ticket.arch,
                                              spec=candidate.spec, require_sparse=False)
            except VerifierError:
                fitted[key] = None
        if fitted[key] is None:
            raise _Incompatible
        return predict_labels(candidate.ticket.arch, candidate.spec, fitted[key].weights, triggers.x), {}

    return answers_for


class _Incompatible(Exception):
    """The uploaded suspect does not fit this candidate's architecture."""


def endpoint_answers(ctx: JobContext, url: str, seed: int) -> AnswersFor:
    """Answers of a remote endpoint. The trigger inputs go out shuffled among as many ordinary test
    inputs of the ticket's dataset, which hides their position, not their nature (they are out of
    distribution); its accuracy on the ordinary ones is reported beside the test."""
    policy = policy_from_settings(ctx.settings)

    def answers_for(candidate: Candidate, triggers: Triggers) -> tuple[np.ndarray, dict[str, Any]]:
        data = load(ctx.store, candidate.dataset)
        rng = np.random.default_rng(seed)
        ordinary = rng.choice(len(data.x_test), size=min(len(triggers), len(data.x_test)), replace=False)
        inputs = torch.cat([triggers.x, data.x_test[ordinary]]).numpy()
        order = rng.permutation(len(inputs))
        labels = np.empty(len(inputs), dtype=np.int64)
        labels[order] = query_endpoint(url, inputs[order], candidate.trigger_set.num_classes, policy)
        accuracy = float((labels[len(triggers):] == data.y_test[ordinary].numpy()).mean())
        return labels[:len(triggers)], {"queries": len(inputs), "ordinary_inputs": len(ordinary),
                                        "ordinary_accuracy": accuracy}

    return answers_for


def uploaded_answers(ctx: JobContext, sha256: str) -> AnswersFor:
    """Answers the ticket's owner gathered (validated at submission)."""
    body = json.loads(ctx.store.path(sha256).read_bytes().decode("utf-8"))

    def answers_for(candidate: Candidate, triggers: Triggers) -> tuple[np.ndarray, dict[str, Any]]:
        return parse_answers(body, len(triggers), candidate.trigger_set.num_classes), {}

    return answers_for


def run_black_box(ctx: JobContext) -> dict[str, Any]:
    """Job body for `mode=black_box`: test the suspect's answers against the named ticket's trigger set,
    or (an uploaded model without `ticket_id`) against every registered trigger set its architecture
    fits; the smallest p decides, corrected for the number tested."""
    params, settings = ctx.params, ctx.settings
    seed = zlib.crc32(params["verification_id"].encode())
    candidates = trigger_candidates(ctx, [params["ticket_id"]] if params["ticket_id"] else None)
    if params["source"] == "model":
        answers_for = model_answers(*split_masks(read_state_dict(ctx.store.path(params["suspect_sha256"]))))
    elif params["source"] == "endpoint":
        answers_for = endpoint_answers(ctx, params["endpoint"], seed)
    else:
        answers_for = uploaded_answers(ctx, params["suspect_sha256"])
    tests, incompatible = [], 0
    for index, candidate in enumerate(candidates):
        ctx.progress(0.1 + 0.85 * index / max(1, len(candidates)),
                     f"querying trigger set {index + 1}/{len(candidates)}")
        try:
            tests.append(trigger_test(ctx, candidate, answers_for))
        except _Incompatible:
            incompatible += 1
    thresholds = {"match_alpha": settings.match_alpha, "inconclusive_alpha": settings.inconclusive_alpha}
    evidence: dict[str, Any] = {"mode": "black_box", "source": params["source"], "candidates_compared": len(tests),
                                "incompatible_tickets": incompatible, "thresholds": thresholds}
    if not tests:
        evidence["reason"] = "no registered ticket with a trigger set fits the suspect"
        return {"verdict": "no_match", "p_value": None, "ticket_id": None, "evidence": evidence}
    best = min(tests, key=lambda t: t["p_value"])
    decision = decide(CandidateTests([SchemeResult("trigger_set", best["p_value"], best)]), compared=len(tests),
                      alpha=settings.match_alpha, inconclusive_below=settings.inconclusive_alpha)
    ticket = next(c.ticket for c in candidates if c.ticket.id == best["ticket_id"])
    disclose = decision.verdict == "match" or ticket.owner_id == params["requester_id"]
    evidence["schemes"] = ["trigger_set"]
    evidence["trigger_set"] = best if disclose else {"p_value": best["p_value"]}
    if disclose:
        evidence.update({"raw_p_value": best["p_value"], "decided_by": decision.decided_by,
                         "correction": f"bonferroni over {len(tests)} trigger set(s)"})
    return {"verdict": decision.verdict, "p_value": decision.p_value, "evidence": evidence,
            "ticket_id": ticket.id if disclose else None}
