"""Registering tickets: accept an upload, then (as a job) store its mask and the ownership record."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.artifact_records import record_artifact
from service.artifacts import ArtifactStore, Staged
from service.audit.chain import append_event
from service.datasets.catalog import DatasetRef
from service.db import sessions_for
from service.errors import APIError
from service.jobs.context import JobContext
from service.jobs.service import enqueue
from service.modelfiles import parse_for_arch, store_mask, store_weights
from service.models import Job, Owner, Signature, Ticket, TicketSummary, TriggerSet, utcnow
from service.security import pseudonym
from service.signatures.service import SignatureRequest, sign_registration
from service.tickets import screening
from service.triggers.service import (
    TRIGGER_MATCHES,
    TriggerRequest,
    embed_for_registration,
    save_triggers,
    trigger_references,
)
from service.verifications.calibration import calibrate_registration, store_references
from service.verifications.search import SUMMARY_KIND
from service.visibility import get_visible
from verifier.initialisation import (
    KNOWN_SEEDS,
    PUBLIC_SEED_ALPHA,
    KnownInitialisation,
    find_known_seed,
    seeded_signs,
    sign_agreement,
)
from verifier.masks import densities, overall_density
from verifier.summaries import spectral_summary
from verifier.tickets import load_ticket

REGISTER_KIND = "register_ticket"


def submit_registration(session: Session, *, owner: Owner, store: ArtifactStore, upload: Staged,
                        name: str, arch: str, dataset: DatasetRef, signature: SignatureRequest,
                        rewind_sha256: str | None, max_attempts: int,
                        triggers: TriggerRequest | None = None, seed_drawn: bool | None = None) -> Ticket:
    """Validate the uploaded model now (422 on bad input), keep it, queue its registration. Commits.

    `rewind_sha256` names a found ticket whose rewind weights a QR signature revives weights from;
    `seed_drawn` says whether its search drew its seed (a private initialisation) or was given one."""
    session.commit()  # end the request's reads: no transaction idles while the upload is parsed and stored
    parse_for_arch(upload.path, arch=arch, spec=dataset.spec, require_sparse=True)
    record_artifact(session, sha256=store.keep(upload), size=upload.size, kind="upload")
    ticket = Ticket(owner_id=owner.id, name=name, arch=arch, dataset=dataset.name,
                    upload_sha256=upload.sha256, status="pending")
    session.add(ticket)
    session.flush()
    params = registration_params(ticket, dataset) | {"signature": asdict(signature), "rewind_sha256": rewind_sha256,
                                                     "seed_drawn": seed_drawn,
                                                     "triggers": asdict(triggers or TriggerRequest())}
    job = enqueue(session, owner_id=owner.id, kind=REGISTER_KIND, params=params, max_attempts=max_attempts)
    ticket.job_id = job.id
    session.commit()
    return ticket


def run_registration(ctx: JobContext) -> dict[str, Any]:
    """Job body: parse the upload, sign it if asked, store canonical weights and the bit-packed mask."""
    params = ctx.params
    ctx.progress(0.1, "reading the model", force=True)
    dataset = DatasetRef(**{**params["dataset_ref"], "input_shape": tuple(params["dataset_ref"]["input_shape"])})
    parsed = parse_for_arch(ctx.store.path(params["upload_sha256"]), arch=params["arch"], spec=dataset.spec,
                            require_sparse=True)
    weights, mask, credential = parsed.weights, parsed.mask, None
    found = screening.screen_registration(ctx, arch=params["arch"], dataset=params["dataset"], spec=dataset.spec,
                                          weights=weights, mask=mask, prunable=parsed.prunable,
                                          upload_sha256=params["upload_sha256"])
    if found.others(params["owner_id"]):  # refused: nothing is signed, stored or calibrated
        return {"screening": asdict(found),
                "registrant": pseudonym(ctx.settings.secret(), params["owner_id"])}
    previous = params.get("previous_result") or {}
    if "model_sha256" in previous:  # run again after a race: only the screen can have gone stale
        return previous | {"screening": asdict(found)}
    request = SignatureRequest(**params.get("signature") or {"kind": "none"})
    if request.kind in ("auto", "qr"):
        signed = sign_registration(ctx, request=request, owner_id=params["owner_id"], ticket_id=params["ticket_id"],
                             arch=params["arch"], dataset=dataset, weights=weights, mask=mask,
                             rewind_sha256=params.get("rewind_sha256"))
        if signed is not None:
            weights, mask, credential = signed.weights, signed.mask, signed.credential
    kind = "qr" if credential else ("fingerprint" if request.kind == "auto" else request.kind)
    trigger_request, embedded = TriggerRequest(**params.get("triggers") or {}), None
    if trigger_request.enabled:
        epochs = trigger_request.epochs
        embedded = embed_for_registration(
            ctx, request=trigger_request, ticket_id=params["ticket_id"], arch=params["arch"], dataset=dataset,
            weights=weights, mask=mask,
            progress=lambda epoch, loss: ctx.progress(0.4 + 0.35 * (epoch + 1) / epochs,
                                                      f"trigger-set fine-tune: epoch {epoch + 1}/{epochs}, "
                                                      f"loss {loss:.4f}"))
        weights = embedded.weights
    ctx.progress(0.8, "storing weights and mask; finding the initialisation", force=True)
    model_sha, model_size = store_weights(ctx.store, weights)
    mask_sha, mask_size = store_mask(ctx.store, mask)
    initialisation = describe_initialisation(ctx.store, params["arch"], dataset.spec, weights, mask,
                                             params.get("rewind_sha256"), params.get("seed_drawn"))
    references, trigger_set = [], None
    with sessions_for(ctx.settings)() as session:
        if embedded is not None:
            artifact_sha, artifact_size = save_triggers(ctx.store, embedded.triggers)
            trigger_set = {"artifact_sha256": artifact_sha, "artifact_size": artifact_size,
                           "source": trigger_request.source, "size": len(embedded.triggers),
                           "num_classes": dataset.spec[1], "report": embedded.report,
                           "references": trigger_references(
                               session, ctx.store, ticket_id=params["ticket_id"], model_sha256=model_sha,
                               arch=params["arch"], dataset=dataset, triggers=embedded.triggers,
                               limit=ctx.settings.topology_references)}
        # every ticket gets the aligned topology test, a signed one too: a code can be cut out of a
        # copy (the window replaced) where the rest of the topology still says whose it is
        references = calibrate_registration(
            session, ctx.store, ticket_id=params["ticket_id"], model_sha256=model_sha, arch=params["arch"],
            dataset=params["dataset"], weights=weights, mask=mask, limit=ctx.settings.topology_references,
            progress=lambda i, n: ctx.progress(0.85 + 0.14 * i / n, f"calibrating: reference {i + 1}/{n}"))
    return {"model_sha256": model_sha, "model_size": model_size, "mask_sha256": mask_sha,
            "mask_size": mask_size, "sparsity": 1.0 - overall_density(mask),
            "layer_sparsity": {k: 1.0 - v for k, v in densities(mask).items()},
            "signature": kind, "credential": credential,
            "summary": spectral_summary(weights, parsed.prunable).tolist(),
            "topology_references": references, "trigger_set": trigger_set, "initialisation": initialisation,
            "screening": asdict(found)}


def describe_initialisation(store: ArtifactStore, arch: str, spec: tuple, weights: dict, mask: dict,
                            rewind_sha256: str | None, seed_drawn: bool | None) -> dict[str, Any]:
    """The initialisation `weights` start from, its sign fingerprint stored like a mask: a found ticket's
    seed (`rewind_sha256`, checked against the weights; public when a person gave it or it is one of
    `verifier.initialisation.KNOWN_SEEDS`, private when the search drew it), else a seed anyone would
    try (public), else `{"known": False}`."""
    found, public = None, True
    if rewind_sha256:
        seed = load_ticket(store.path(rewind_sha256)).seed
        signs = seeded_signs(arch, spec, seed, mask)
        agreement = sign_agreement(signs, weights, mask)
        if agreement.log10_p <= math.log10(PUBLIC_SEED_ALPHA):
            found, public = KnownInitialisation(seed, signs, agreement), seed in KNOWN_SEEDS or seed_drawn is False
    found = found or find_known_seed(arch, spec, weights, mask)
    if found is None:
        return {"known": False}
    signs_sha, signs_size = store_mask(store, found.signs)
    return {"known": True, "signs_sha256": signs_sha, "signs_size": signs_size, "seed": found.seed,
            "public": public, "agreement": found.agreement.to_dict()}


def keep_initialisation(session: Session, ticket: Ticket, initialisation: dict[str, Any]) -> None:
    """Record `describe_initialisation`'s answer on the ticket; an unknown one is marked checked
    (`init_public` False, no fingerprint)."""
    ticket.init_public = initialisation["known"] and initialisation["public"]
    if initialisation["known"]:
        record_artifact(session, sha256=initialisation["signs_sha256"], size=initialisation["signs_size"],
                        kind="init_signs")
        ticket.init_signs_sha256, ticket.init_seed = initialisation["signs_sha256"], initialisation["seed"]


def record_initialisation(session: Session, store: ArtifactStore, ticket: Ticket, spec: tuple,
                          rewind_sha256: str | None, seed_drawn: bool | None) -> str:
    """Find and keep the initialisation of a ticket registered before tickets recorded one (`ticketguard
    calibrate`). Commits."""
    from verifier.checkpoint import read_state_dict
    from verifier.masks import load_mask

    keep_initialisation(session, ticket, describe_initialisation(
        store, ticket.arch, spec, read_state_dict(store.path(ticket.model_sha256)),
        load_mask(store.path(ticket.mask_sha256)), rewind_sha256, seed_drawn))
    session.commit()
    return initialisation_label(ticket)


def finish_registration(session: Session, job: Job, result: dict[str, Any]) -> None:
    """In the job's final transaction: the ticket becomes `registered` (or `refused`: it derives from another
    owner's earlier ticket), and the audit says so."""
    ticket = session.get(Ticket, job.params["ticket_id"])
    found = screening.Screening(**result.pop("screening"))
    screening.check_no_registration_since(session, ticket, found.log_size)
    result["screening"] = screening.screening_report(found, ticket.owner_id)
    if found.others(ticket.owner_id):
        screening.refuse(session, ticket, found, registrant=result.pop("registrant"))
        return
    own = found.own(ticket.owner_id)
    ticket.derived_from_id = own[0]["ticket_id"] if own else None
    record_artifact(session, sha256=result["model_sha256"], size=result["model_size"], kind="model")
    record_artifact(session, sha256=result["mask_sha256"], size=result["mask_size"], kind="mask")
    ticket.model_sha256, ticket.mask_sha256 = result["model_sha256"], result["mask_sha256"]
    ticket.sparsity, ticket.layer_sparsity = result["sparsity"], result["layer_sparsity"]
    ticket.status, ticket.registered_at = "registered", utcnow()
    ticket.signature = result["signature"]
    credential = result.pop("credential")  # server-side only: not in the job result the API shows
    if credential:
        session.add(Signature(ticket_id=ticket.id, **credential))
    references = result.pop("topology_references")  # the calibration's rows; the job shows their count
    store_references(session, ticket.id, [(reference_id, value) for reference_id, value in references])
    result["topology_references"] = len(references)
    trigger_set = result.pop("trigger_set")  # server-side: the job shows the report only
    if trigger_set is not None:
        record_artifact(session, sha256=trigger_set["artifact_sha256"], size=trigger_set["artifact_size"],
                        kind="trigger_set")
        session.add(TriggerSet(ticket_id=ticket.id, artifact_sha256=trigger_set["artifact_sha256"],
                               source=trigger_set["source"], size=trigger_set["size"],
                               num_classes=trigger_set["num_classes"],
                               report=trigger_set["report"]))
        store_references(session, ticket.id, [(rid, value) for rid, value in trigger_set["references"]],
                         kind=TRIGGER_MATCHES)
        result["trigger_set"] = trigger_set["report"] | {"references": len(trigger_set["references"])}
    keep_initialisation(session, ticket, result.pop("initialisation"))  # the seed stays server-side
    result["initialisation"] = initialisation_label(ticket)
    summary = result.pop("summary")  # the search index's row; not part of what the job shows
    session.add(TicketSummary(ticket_id=ticket.id, kind=SUMMARY_KIND,
                              vector=np.asarray(summary, dtype="<f4").tobytes()))
    owner = session.get(Owner, ticket.owner_id)
    append_event(session, actor=owner.name, action="ticket.registered", subject=f"ticket:{ticket.id}",
                 owner_id=ticket.owner_id, ticket_id=ticket.id,
                 payload={"name": ticket.name, "arch": ticket.arch, "dataset": ticket.dataset,
                          "model_sha256": ticket.model_sha256, "mask_sha256": ticket.mask_sha256,
                          "sparsity": round(ticket.sparsity, 6), "signature": ticket.signature,
                          "derived_from": ticket.derived_from_id,
                          "trigger_set": trigger_set["source"] if trigger_set else None,
                          # commits the set's contents to this time (an uploaded set proves nothing
                          # about models that existed before it)
                          "trigger_set_sha256": trigger_set["artifact_sha256"] if trigger_set else None})


def initialisation_label(ticket: Ticket) -> str:
    """What a ticket's owner is told of its initialisation."""
    if ticket.init_signs_sha256 is None:
        return "unknown"
    return f"public (seed {ticket.init_seed})" if ticket.init_public else "private"


def registration_params(ticket: Ticket, dataset: DatasetRef) -> dict[str, Any]:
    return {"ticket_id": ticket.id, "owner_id": ticket.owner_id, "upload_sha256": ticket.upload_sha256,
            "arch": ticket.arch, "dataset": ticket.dataset, "dataset_ref": asdict(dataset)}


def visible_ticket(session: Session, *, owner: Owner, ticket_id: str) -> Ticket:
    """A ticket the caller may see (its own, or any for an admin); 404 otherwise."""
    return get_visible(session, Ticket, ticket_id, owner=owner, what="ticket")


def list_tickets(session: Session, *, owner: Owner) -> list[Ticket]:
    query = select(Ticket).order_by(Ticket.created_at)
    if not owner.is_admin:
        query = query.where(Ticket.owner_id == owner.id)
    return list(session.execute(query).scalars())


def ticket_model_path(store: ArtifactStore, ticket: Ticket) -> Path:
    if ticket.status != "registered" or ticket.model_sha256 is None:
        raise APIError(409, "not_registered", f"ticket {ticket.id} is {ticket.status}, not registered")
    return store.path(ticket.model_sha256)
