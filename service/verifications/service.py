"""Verifying a suspect model against one ticket, or against every registered ticket (1:N)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.artifact_records import record_artifact
from service.artifacts import ArtifactStore, Staged
from service.audit.chain import append_event
from service.audit.webhooks import append_alert
from service.datasets.catalog import resolve_dataset
from service.db import sessions_for
from service.errors import APIError
from service.jobs.context import JobContext, JobFailed
from service.jobs.service import enqueue
from service.locks.service import key_check_params, run_key_check
from service.modelfiles import ParsedModel, fit_to_template, parse_for_arch
from service.models import Job, Owner, Signature, Ticket, TriggerSet, Verification, utcnow
from service.security import pseudonym
from service.signatures.service import check_signature
from service.triggers.endpoint import EndpointPolicy, EndpointRefused, resolve_target
from service.triggers.service import (
    TRIGGER_MATCHES,
    judge_answers,
    load_triggers,
    owned_trigger_set,
    predict_labels,
    read_answers,
)
from service.verifications.black_box import run_black_box
from service.verifications.calibration import (
    AlignedReference,
    aligned_references,
    references_at_density,
    stored_references,
)
from service.verifications.search import IndexEntry, index_entries, rank_entries
from service.visibility import get_visible
from verifier.aligned import STATISTIC, DensityOutsideReferences, aligned_overlap, calibrated_p
from verifier.checkpoint import read_state_dict, split_masks
from verifier.decision import CandidateTests, Decision, SchemeResult, bonferroni, decide
from verifier.errors import VerifierError
from verifier.initialisation import suspect_agreement
from verifier.masks import load_mask, overall_density
from verifier.models import build_model, permutable_axes
from verifier.signatures.signing import signature_read_mask
from verifier.summaries import spectral_summary
from verifier.topology import compare_topology, estimate_suspect_mask
from verifier.units import layer_groups

VERIFY_KIND = "verify"


def submit_verification(session: Session, *, owner: Owner, store: ArtifactStore, upload: Staged | None,
                        ticket_id: str | None, max_attempts: int, key_check: bool = False,
                        mode: str | None = None, endpoint: str | None = None, answers: bytes | None = None,
                        policy: EndpointPolicy | None = None) -> Verification:
    """Check the request (422/409 on bad input), keep what the job needs, queue the job. Commits.

    The suspect is an uploaded model (`upload`), a remote prediction endpoint, or answers the ticket's
    owner gathered for its trigger inputs. `mode` defaults to white_box for a model, black_box
    otherwise; black_box and both need trigger sets."""
    sources = [name for name, given in (("model", upload), ("endpoint", endpoint), ("answers", answers))
               if given is not None]
    if len(sources) != 1:
        raise APIError(422, "invalid_request", "send exactly one suspect: a `model` file, an `endpoint` URL "
                                               "or `answers`")
    source = sources[0]
    mode = mode or ("white_box" if source == "model" else "black_box")
    if source != "model" and mode != "black_box":
        raise APIError(422, "invalid_request", f"an {source} suspect is black-box only: use mode=black_box")
    if key_check and (not ticket_id or mode == "black_box"):
        raise APIError(422, "invalid_request", "key_check needs a model file and the `ticket_id` of a locked ticket")
    if source != "model" and not ticket_id:
        raise APIError(422, "invalid_request", f"an {source} suspect needs the `ticket_id` whose trigger set "
                                               "it is checked against")
    key_params, ticket, suspect_sha256 = None, None, None
    if ticket_id:
        ticket = get_visible(session, Ticket, ticket_id, owner=owner, what="ticket")
        if ticket.status != "registered":
            raise APIError(409, "not_registered", f"ticket {ticket.id} is {ticket.status}, not registered")
        if mode != "white_box" and session.get(TriggerSet, ticket.id) is None:
            raise APIError(409, "no_trigger_set", f"ticket {ticket.id} was registered without a trigger set "
                                                  "(`trigger_set=true`); only white-box checks are possible")
        key_params = key_check_params(session, ticket) if key_check else None
    session.commit()  # end the request's reads: no transaction idles while the upload is parsed and stored
    if source == "model":
        if ticket is not None:
            spec = resolve_dataset(session, ticket.dataset, owner=None).spec
            parse_for_arch(upload.path, arch=ticket.arch, spec=spec, require_sparse=False)
        else:
            check_fits_a_registered_ticket(session, *split_masks(read_state_dict(upload.path)))
        suspect_sha256 = store.keep(upload)
        record_artifact(session, sha256=suspect_sha256, size=upload.size, kind="suspect")
    elif source == "answers":
        found = owned_trigger_set(session, owner=owner, ticket_id=ticket.id)  # only the owner has the inputs
        read_answers(answers, found.size, found.num_classes)
        suspect_sha256, size = store.put_bytes(answers)
        record_artifact(session, sha256=suspect_sha256, size=size, kind="answers")
    else:
        try:
            resolve_target(endpoint, policy or EndpointPolicy())
        except EndpointRefused as exc:
            raise APIError(422, "endpoint_refused", str(exc)) from None
    verification = Verification(owner_id=owner.id, requested_ticket_id=ticket_id or None,
                                suspect_sha256=suspect_sha256, status="pending", mode=mode, source=source,
                                endpoint=endpoint)
    session.add(verification)
    session.flush()
    job = enqueue(session, owner_id=owner.id, kind=VERIFY_KIND,
                  params={"verification_id": verification.id, "suspect_sha256": suspect_sha256,
                          "ticket_id": ticket_id or None, "requester_id": owner.id, "key_check": key_params,
                          "mode": mode, "source": source, "endpoint": endpoint},
                  max_attempts=max_attempts)
    verification.job_id = job.id
    append_event(session, actor=owner.name, action="verification.requested",
                 subject=f"verification:{verification.id}", owner_id=owner.id, ticket_id=ticket_id,
                 payload={"suspect_sha256": suspect_sha256, "ticket_id": ticket_id, "mode": mode, "source": source,
                          "endpoint": endpoint})
    session.commit()
    return verification


def run_verification(ctx: JobContext) -> dict[str, Any]:
    """Job body: the verdict (`judge`), and the requester's pseudonym for the alert a match sends the
    matched ticket's owner."""
    return judge(ctx) | {"requester": pseudonym(ctx.settings.secret(), ctx.params["requester_id"])}


def judge(ctx: JobContext) -> dict[str, Any]:
    """The verdict. White-box (and `both`): rank the compatible registered tickets by weight summary, then
    test the nearest few in full (topology; the QR module test and decoding where signed, else the
    aligned topology test where calibrated; in `both` mode the trigger set too). The candidate with
    the smallest p decides, corrected for the number tested; a decoded payload with a valid MAC ends
    the search at once. Black-box: `black_box.run_black_box`."""
    params, settings = ctx.params, ctx.settings
    if params.get("mode") == "black_box":
        return run_black_box(ctx)
    with sessions_for(settings)() as session:
        entries = index_entries(session, params["ticket_id"])
        specs = {d: resolve_dataset(session, d, owner=None).spec for d in {e.dataset for e in entries}}
    weights, masks = split_masks(read_state_dict(ctx.store.path(params["suspect_sha256"])))
    ctx.progress(0.05, f"ranking {len(entries)} registered ticket(s)", force=True)
    ranked, suspects, incompatible = _rank(ctx, entries, specs, weights, masks)
    shortlist = ranked[:settings.search_candidates]
    found = load_candidates(settings, [entry.ticket_id for _, entry in shortlist], both=params.get("mode") == "both")
    best: tuple[CandidateTests, Ticket, float] | None = None
    tested: list[tuple[CandidateTests, Ticket, float]] = []
    span = 0.5 if params.get("key_check") else 0.9  # the key check's retraining takes the rest
    for index, (distance, entry) in enumerate(shortlist):
        ctx.progress(0.1 + span * index / len(shortlist), f"testing candidate {index + 1}/{len(shortlist)}")
        ticket, suspect = found.tickets[entry.ticket_id], suspects[(entry.arch, entry.dataset)]
        tests = candidate_tests(ctx, found, ticket, specs[ticket.dataset], suspect.weights,
                                suspect.mask if masks else None, pair_seed(ticket.id, params["suspect_sha256"]),
                                selection=1 if params["ticket_id"] else len(ranked))
        tested.append((tests, ticket, distance))
        if best is None or tests.stronger_than(best[0], alpha=settings.match_alpha):  # ties keep the earlier one
            best = (tests, ticket, distance)
    compared = len(tested)
    # first to register wins: of the candidates that match on their own, the verdict names the one
    # registered first (every shortlisted candidate is tested, so none is skipped), the others are its lineage
    matched = sorted((t for t in tested if decide_with(settings, t[0], compared=compared,
                                                       chosen_from=len(ranked)).verdict == "match"),
                     key=lambda t: (t[1].registered_at, t[1].id))
    if matched:
        best = matched[0]
    key_evidence = None
    if params.get("key_check") and best is not None:
        ticket_mask = load_mask(ctx.store.path(best[1].mask_sha256))
        suspect = suspects[(best[1].arch, best[1].dataset)]
        mask, _, _ = estimate_suspect_mask(ticket_mask, suspect.weights, suspect.mask if masks else None)
        key_evidence = run_key_check(ctx, params["key_check"], mask)
    ctx.progress(1.0, "deciding", force=True)
    thresholds = {"match_alpha": settings.match_alpha, "inconclusive_alpha": settings.inconclusive_alpha}
    evidence: dict[str, Any] = {"candidates_compatible": len(ranked), "candidates_compared": compared,
                                "incompatible_tickets": incompatible, "thresholds": thresholds}
    if best is None and incompatible:  # checked at submission; the tickets it fitted were withdrawn since
        raise JobFailed("the suspect fits no registered ticket's architecture: nothing was compared")
    if best is None:
        evidence["reason"] = "no ticket is registered"
        return {"verdict": "no_match", "p_value": None, "ticket_id": None, "evidence": evidence}
    tests, ticket, distance = best
    decision = decide_with(settings, tests, compared=compared, chosen_from=len(ranked))
    if len(matched) > 1:
        evidence["lineage"] = lineage(settings, matched, compared=compared, chosen_from=len(ranked))
    owner_sees = ticket.owner_id == params["requester_id"]
    disclose = decision.verdict == "match" or owner_sees
    if disclose:  # which tests a ticket carries is the ticket's business until it matches
        evidence.update({"schemes": [r.scheme for r in tests.counted], "raw_p_value": tests.p_value,
                         "decided_by": decision.decided_by, "summary_distance": distance,
                         "correction": decision.correction})
    topology = tests.get("topology")
    evidence["topology"] = topology.report if disclose else {
        k: topology.report[k] for k in ("p_value", "z", "jaccard", "suspect_dense", "estimated_layers", "withheld")
        if k in topology.report}
    evidence["relation"] = decision.relation
    if tests.initialisation is not None:
        evidence["initialisation"] = tests.initialisation if disclose else {
            k: tests.initialisation[k] for k in ("known", "shared") if k in tests.initialisation}
    if key_evidence is not None:
        evidence["key_mask"] = key_evidence
    for scheme in ("aligned_topology", "trigger_set"):
        if tests.get(scheme) is not None and disclose:
            evidence[scheme] = tests.get(scheme).report
    qr = tests.get("qr")
    if qr is not None and disclose:
        # where the code sits and what the window shows stay with the ticket's owner
        evidence["qr"] = qr.evidence if owner_sees else {k: qr.evidence[k] for k in ("p_value", "decoded",
                                                                                      "payload_valid")}
    return {"verdict": decision.verdict, "p_value": decision.p_value, "evidence": evidence,
            "ticket_id": ticket.id if disclose else None}


def lineage(settings, matched: list[tuple[CandidateTests, Ticket, float]], *, compared: int,
            chosen_from: int) -> list[dict[str, Any]]:
    """Every ticket the suspect matches, earliest registration first: the one the verdict names, then the
    later ones (each with its own p, its owner and the earlier ticket it was registered as deriving from)."""
    with sessions_for(settings)() as session:
        names = {o.id: o.name for o in session.execute(
            select(Owner).where(Owner.id.in_({t.owner_id for _, t, _ in matched}))).scalars()}
    ids = {ticket.id for _, ticket, _ in matched}
    return [{"ticket_id": ticket.id, "owner": names.get(ticket.owner_id),
             "registered_at": ticket.registered_at.isoformat(),
             "p_value": decide_with(settings, tests, compared=compared, chosen_from=chosen_from).p_value,
             # only a link to a ticket that matched too: the others stay their owners' business
             "derived_from": ticket.derived_from_id if ticket.derived_from_id in ids else None}
            for tests, ticket, _ in matched]


def decide_with(settings, tests: CandidateTests, *, compared: int, chosen_from: int | None = None) -> Decision:
    """`verifier.decision.decide` at the settings' thresholds."""
    return decide(tests, compared=compared, alpha=settings.match_alpha, inconclusive_below=settings.inconclusive_alpha,
                  chosen_from=chosen_from)


@dataclass
class Candidates:
    """What the full tests need of the tickets tested in full, read in one session."""

    tickets: dict[str, Ticket]
    signatures: dict[str, Signature]
    aligned_ids: list[str]  # the ones that get the aligned topology test
    references: dict[str, list[AlignedReference]]  # their calibration
    trigger_sets: dict[str, TriggerSet] = field(default_factory=dict)  # mode both only
    trigger_references: dict[str, list[float]] = field(default_factory=dict)


def load_candidates(settings, ids: list[str], *, both: bool) -> Candidates:
    """The tickets `ids` with their signatures, calibrations and (`both`) trigger sets."""
    with sessions_for(settings)() as session:
        signatures = {s.ticket_id: s for s in session.execute(
            select(Signature).where(Signature.ticket_id.in_(ids))).scalars()}
        aligned_ids = ids[:settings.aligned_candidates]
        found = Candidates(
            tickets={t.id: t for t in session.execute(select(Ticket).where(Ticket.id.in_(ids))).scalars()},
            signatures=signatures, aligned_ids=aligned_ids, references=aligned_references(session, aligned_ids))
        if both:
            found.trigger_sets = {t.ticket_id: t for t in session.execute(
                select(TriggerSet).where(TriggerSet.ticket_id.in_(ids))).scalars()}
            found.trigger_references = stored_references(session, list(found.trigger_sets), kind=TRIGGER_MATCHES)
        session.expunge_all()
    return found


def check_fits_a_registered_ticket(session: Session, weights: dict, masks: dict) -> None:
    """422 unless the suspect's tensors fit the architecture of at least one registered ticket: a search
    must read the file it judges, never answer `no_match` about a file that fits nothing."""
    kinds = session.execute(select(Ticket.arch, Ticket.dataset).where(Ticket.status == "registered")
                            .distinct()).all()
    problems = []
    for arch, dataset in kinds:
        spec = resolve_dataset(session, dataset, owner=None).spec
        try:
            fit_to_template(weights, masks, template=build_model(arch, *spec).state_dict(), arch=arch, spec=spec,
                            require_sparse=False)
            return
        except VerifierError as exc:
            problems.append(f"{arch}/{dataset}: {exc}")
    if not problems:
        return  # nothing registered: the search's answer is `no_match`, with nothing compared
    found = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in list(weights.items())[:4])
    raise APIError(422, "model_fits_no_ticket",
                   f"the suspect fits no registered ticket's architecture (its tensors: {found}, ...); "
                   f"{'; '.join(problems[:3])}. Rename its tensors to the architecture's parameter names "
                   "(a `module.` or `model.` prefix on every name is removed by itself) or name `ticket_id`")


def _rank(ctx: JobContext, entries: list[IndexEntry], specs: dict[str, Any], weights: dict,
          masks: dict) -> tuple[list[tuple[float, IndexEntry]], dict[tuple[str, str], ParsedModel], int]:
    """Fit the suspect once per (architecture, dataset) among the entries; rank the entries it fits,
    nearest first. Returns the ranking, the fitted suspects and how many entries it does not fit."""
    groups: dict[tuple[str, str], list[IndexEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.arch, entry.dataset), []).append(entry)
    ranked: list[tuple[float, IndexEntry]] = []
    suspects: dict[tuple[str, str], ParsedModel] = {}
    incompatible = 0
    for (arch, dataset), group in groups.items():
        spec = specs[dataset]
        try:
            suspect = fit_to_template(weights, masks, template=build_model(arch, *spec).state_dict(), arch=arch,
                                      spec=spec, require_sparse=False)
        except VerifierError:
            incompatible += len(group)
            continue
        suspects[(arch, dataset)] = suspect
        summary = spectral_summary(suspect.weights, suspect.prunable)
        ranked += rank_entries(group, summary, suspect.prunable, ctx.store)
    ranked.sort(key=lambda item: item[0])  # stable: equal distances keep registration order
    return ranked, suspects, incompatible


def pair_seed(ticket_id: str, suspect_sha256: str) -> int:
    """The permutation nulls' seed for one (ticket, suspect file) pair: the same pair always gets the same
    p, so resubmitting a borderline suspect cannot re-roll it."""
    return int.from_bytes(hashlib.sha256(f"{ticket_id}:{suspect_sha256}".encode()).digest()[:4], "big")


def candidate_tests(ctx: JobContext, found: Candidates, ticket: Ticket, spec: tuple, suspect_weights: dict,
                    suspect_mask: dict | None, seed: int, *, selection: int,
                    layers: set[str] | None = None) -> CandidateTests:
    """Every test `ticket` carries against one suspect (white-box; the trigger set too where `found`
    holds it); `verifier.decision` combines them. `selection` is how many tickets the
    candidate was chosen from. `layers` restricts the white-box tests to those prunable layers (a
    suspect with another head); the aligned test, calibrated on every layer, is then left out, and
    so is the trigger set, whose labels the suspect no longer shares."""
    calibration = found.references.get(ticket.id, []) if ticket.id in found.aligned_ids and layers is None else None
    tests = _white_box_tests(ctx, ticket, found.signatures.get(ticket.id), suspect_weights, suspect_mask, seed,
                             references=calibration, selection=selection, layers=layers)
    if ticket.id in found.trigger_sets and layers is None:  # the same weights' answers to the trigger inputs
        trigger_set = found.trigger_sets[ticket.id]
        triggers = load_triggers(ctx.store.path(trigger_set.artifact_sha256))
        answers = predict_labels(ticket.arch, spec, suspect_weights, triggers.x)
        judged = judge_answers(triggers, answers, trigger_set.num_classes, found.trigger_references.get(ticket.id, []),
                               min_references=ctx.settings.topology_min_references, source=trigger_set.source,
                               registered_at=trigger_set.created_at)
        tests.add(SchemeResult("trigger_set", judged["p_value"], judged))
    return tests


def _white_box_tests(ctx: JobContext, ticket: Ticket, signature: Signature | None, suspect_weights: dict,
                     suspect_mask: dict | None, seed: int, *, references: list[AlignedReference] | None,
                     selection: int, layers: set[str] | None) -> CandidateTests:
    """Topology, the QR test where signed, and the aligned topology test where `references` (None: not
    among the candidates that get it) calibrate it; `selection` corrects the latter."""
    settings = ctx.settings
    ticket_mask = load_mask(ctx.store.path(ticket.mask_sha256))
    if layers is not None:
        ticket_mask = {name: keep for name, keep in ticket_mask.items() if name in layers}
    topology = compare_topology(
        ticket_mask, suspect_weights, suspect_mask=suspect_mask,
        groups=layer_groups(ticket.arch, suspect_weights),
        permutations=settings.verify_permutations, seed=seed).to_dict()
    relation = _initialisation(ctx, ticket, suspect_weights, suspect_mask)
    withheld = SHARED_PUBLIC_INIT if relation.get("shared") and ticket.init_public else None
    tests = CandidateTests([SchemeResult("topology", topology["p_value"], topology, withheld=withheld)],
                           initialisation=relation)
    # the alignment-based tests read a dense suspect cut back by balanced magnitudes, which a per-unit
    # rescaling cannot steer; the topology test above keeps the raw cut (no alignment to undo it)
    estimated = estimate_suspect_mask(ticket_mask, suspect_weights, suspect_mask, balanced=True)
    mask = estimated[0]
    read_weights = signature is not None or references is not None
    ticket_weights = read_state_dict(ctx.store.path(ticket.model_sha256)) if read_weights else None
    if signature is not None:
        window_mask = signature_read_mask(ticket_mask, suspect_weights, suspect_mask, estimated=estimated)
        qr = check_signature(
            secret=settings.secret(), signature=signature, owner_id=ticket.owner_id, arch=ticket.arch,
            ticket_weights=ticket_weights, suspect_weights=suspect_weights,
            suspect_mask=window_mask, permutations=settings.verify_permutations, seed=seed)
        # the module test is withheld too: placement picks a window the ticket's own pattern already
        # half fits, and a mask grown from the same initialisation reproduces that pattern (honest
        # same-init lenet300_100 tickets scored module p at the floor of 1/1000); a decoded payload with
        # a valid MAC cannot come from an honest mask and stays decisive
        tests.add(SchemeResult("qr", qr["p_value"], qr, decisive=bool(qr.get("payload_valid")), withheld=withheld))
    if references is not None:
        aligned = _aligned_test(ctx, ticket, ticket_weights, ticket_mask, suspect_weights, mask, references, selection)
        # uncalibrated: evidence only, no p-value to count
        tests.add(SchemeResult("aligned_topology", aligned["p_value"] if aligned["calibrated"] else None, aligned,
                               withheld=withheld))
    return tests


SHARED_PUBLIC_INIT = ("the suspect shares the ticket's public initialisation: an honest ticket found from it "
                      "resembles this one too, so this test's null (an independent ticket) does not cover it")


def _initialisation(ctx: JobContext, ticket: Ticket, suspect_weights: dict, suspect_mask: dict | None) -> dict:
    """Whether the suspect shares the ticket's initialisation (`verifier.initialisation`), read on every
    cell the suspect uses (its nonzero weights, within its declared mask): a choice of cells made
    without the initialisation, so the sign test's p is exact. `{"known": False}` where the ticket's
    initialisation is unknown."""
    if ticket.init_signs_sha256 is None:
        return {"known": False}
    agreement = suspect_agreement(load_mask(ctx.store.path(ticket.init_signs_sha256)), suspect_weights, suspect_mask)
    return {"known": True, "public": bool(ticket.init_public), **agreement.to_dict()}


def _aligned_test(ctx: JobContext, ticket: Ticket, ticket_weights: dict, ticket_mask: dict, suspect_weights: dict,
                  suspect_mask: dict, references: list[AlignedReference], selection: int) -> dict[str, Any]:
    """The aligned topology test's evidence; `calibrated` False (and no p) while the ticket has fewer
    references than the settings ask for, or none near the suspect's density. The null is read at
    the suspect's density; where the stored references do not reach it, earlier tickets of that
    density are measured and stored first (`references_at_density`). The p is corrected for
    `selection`: the shortlist was chosen by weight summaries, which may correlate with aligned
    overlap among independent tickets, so only a correction over every ticket it was chosen from
    keeps the p valid."""
    settings = ctx.settings
    needed = settings.topology_min_references
    if len(references) < needed:
        return {"calibrated": False, "references": len(references), "references_needed": needed}
    overlap = aligned_overlap(ticket_weights, ticket_mask, suspect_weights, suspect_mask,
                              {name: permutable_axes(ticket.arch, name) for name in ticket_mask})
    density, added = overall_density(suspect_mask), []

    def read(refs: list[AlignedReference]):
        return calibrated_p(overlap.kappa, [r.value for r in refs], densities=[r.density for r in refs],
                            suspect_density=density)

    try:
        calibration = read(references)
    except DensityOutsideReferences:
        added = references_at_density(settings, ctx.store, ticket, weights=ticket_weights, mask=ticket_mask,
                                      density=density, known={r.reference_id for r in references}, limit=needed)
        references = references + added
        try:
            calibration = read(references)
        except DensityOutsideReferences as exc:
            return {"calibrated": False, "references": len(references), "references_added": len(added),
                    "reason": str(exc), "statistic": STATISTIC, **overlap.to_dict()}
    return {"calibrated": True, "statistic": STATISTIC, **overlap.to_dict(), **calibration.to_dict(),
            "references_added": len(added), "p_uncorrected": calibration.p_value,
            "selection_correction": selection, "p_value": bonferroni(calibration.p_value, selection)}


def finish_verification(session: Session, job: Job, result: dict[str, Any]) -> None:
    """In the job's final transaction: store the verdict and append it to the audit chain."""
    verification = session.get(Verification, job.params["verification_id"])
    attested = attested_by(verification.source)
    verification.status, verification.verdict = "completed", result["verdict"]
    verification.p_value, verification.evidence = result["p_value"], result["evidence"] | {"attested_by": attested}
    verification.matched_ticket_id = result["ticket_id"] if result["verdict"] == "match" else None
    verification.completed_at = utcnow()
    requester = session.get(Owner, verification.owner_id)
    append_event(session, actor=requester.name, action="verification.completed",
                 subject=f"verification:{verification.id}", owner_id=verification.owner_id,
                 ticket_id=verification.matched_ticket_id or verification.requested_ticket_id,
                 payload={"verdict": result["verdict"], "p_value": result["p_value"],
                          "matched_ticket_id": verification.matched_ticket_id, "attested_by": attested})
    asker = result.pop("requester", None)
    named = [{"ticket_id": verification.matched_ticket_id, "p_value": result["p_value"]}] \
        if verification.matched_ticket_id else []
    for entry in result["evidence"].get("lineage", named):  # every matched ticket's owner, not who asked
        matched = session.get(Ticket, entry["ticket_id"])
        if matched is not None and matched.owner_id != verification.owner_id:
            append_alert(session, actor="verification", action=ALERT_MATCHED, subject=f"ticket:{matched.id}",
                         owner_id=matched.owner_id, ticket_id=matched.id,
                         payload={"asker": asker, "p_value": entry["p_value"], "mode": verification.mode,
                                  "attested_by": attested})


ALERT_MATCHED = "alert.ticket_matched"


def attested_by(source: str) -> str:
    """Who vouches for what the verdict rests on: `owner` for answers the ticket's owner gathered and
    uploaded (the service never saw the suspect answer them), `observed` for what the service collected
    itself (an uploaded model it ran, an endpoint it queried)."""
    return "owner" if source == "answers" else "observed"


def visible_verification(session: Session, *, owner: Owner, verification_id: str) -> Verification:
    return get_visible(session, Verification, verification_id, owner=owner, what="verification")
