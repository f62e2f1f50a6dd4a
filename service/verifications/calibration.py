"""Calibration of the aligned topology test: a registration measures the new ticket against the
tickets registered before it, and a verification judges a suspect against those values.

Under the null the suspect is one more independently found ticket, so its statistic against the
ticket is exchangeable with the references' (`verifier.aligned.calibrated_p`). References are
earlier tickets only: a copy of the ticket registered later (by whoever stole it) would otherwise
join its null and shield it. A related earlier reference (the owner's own earlier ticket from the
same run, say) widens the null, which can cost power but never produces a false match."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.db import release, sessions_for
from service.models import Ticket, TicketReference
from verifier.aligned import DENSITY_MARGIN, STATISTIC, aligned_overlap, spread_order
from verifier.checkpoint import read_state_dict
from verifier.masks import Mask, load_mask, overall_density
from verifier.models import permutable_axes

DENSITY_FACTOR = 2.0  # references keep between 1/2 and 2 times the ticket's share of weights


def reference_tickets(session: Session, *, ticket_id: str, model_sha256: str, arch: str, dataset: str,
                      density: float | None, limit: int, before: datetime | None = None,
                      factor: float = DENSITY_FACTOR) -> list[Ticket]:
    """`limit` tickets registered before `before` (if given) of the same architecture and dataset, with a
    density within `factor` of `density` (None: any), one per distinct model (the same file
    registered twice is one reference, and the ticket's own weights none): of the 4 x `limit` most
    recent, the sparsest and the densest, then the most recent. A verification reads the null only at
    densities its references cover (`verifier.aligned.calibrated_p`), so the ends widen what the
    test can judge: a copy pruned further than the ticket, say."""
    query = (select(Ticket).where(Ticket.status == "registered", Ticket.arch == arch, Ticket.dataset == dataset,
                                  Ticket.id != ticket_id)
             .order_by(Ticket.registered_at.desc(), Ticket.id.desc()).limit(4 * limit))
    if density is not None:
        low, high = density / factor, min(1.0, density * factor)
        query = query.where(Ticket.sparsity >= 1.0 - high, Ticket.sparsity <= 1.0 - low)
    if before is not None:
        query = query.where(Ticket.registered_at < before)
    recent: dict[str, Ticket] = {}
    for ticket in session.execute(query).scalars():
        if ticket.model_sha256 != model_sha256:
            recent.setdefault(ticket.model_sha256, ticket)
    candidates = list(recent.values())
    if density is not None:  # the window's tickets all have a density
        candidates = [candidates[i] for i in spread_order([1.0 - t.sparsity for t in candidates])]
    return candidates[:limit]


def measure_references(store: ArtifactStore, references: list[Ticket], *, arch: str, weights: dict, mask: Mask,
                       progress: Callable[[int], None] | None = None) -> list[tuple[str, float]]:
    """(reference id, statistic) of the ticket (`weights`, `mask`) against each reference, aligned the
    way a suspect is: the ticket in its own order, the reference permuted onto it."""
    permutable = {name: permutable_axes(arch, name) for name in mask}
    values = []
    for index, reference in enumerate(references):
        if progress is not None:
            progress(index)
        reference_mask = load_mask(store.path(reference.mask_sha256))
        if set(reference_mask) != set(mask):
            continue  # another layer layout (registered under an older architecture definition)
        reference_weights = read_state_dict(store.path(reference.model_sha256))
        values.append((reference.id, aligned_overlap(weights, mask, reference_weights, reference_mask,
                                                     permutable).kappa))
    return values


def calibrate_registration(session: Session, store: ArtifactStore, *, ticket_id: str, model_sha256: str, arch: str,
                           dataset: str, weights: dict, mask: Mask, limit: int, before: datetime | None = None,
                           progress: Callable[[int, int], None] | None = None) -> list[tuple[str, float]]:
    """The references of a ticket being registered (or registered at `before`), measured, not stored:
    a registration's final transaction stores them with the ticket."""
    if limit == 0:
        return []
    references = reference_tickets(session, ticket_id=ticket_id, model_sha256=model_sha256, arch=arch,
                                   dataset=dataset, density=overall_density(mask), limit=limit, before=before)
    release(session)  # no transaction held while the references are measured
    report = (lambda index: progress(index, len(references))) if progress is not None else None
    return measure_references(store, references, arch=arch, weights=weights, mask=mask, progress=report)


def store_references(session: Session, ticket_id: str, values: list[tuple[str, float]], *,
                     kind: str = STATISTIC) -> None:
    """Add a ticket's reference rows of one kind (default: the aligned test's statistic) to the session."""
    session.add_all(TicketReference(ticket_id=ticket_id, reference_id=reference_id, kind=kind, value=value)
                    for reference_id, value in values)


def stored_references(session: Session, ticket_ids: list[str], *, kind: str = STATISTIC) -> dict[str, list[float]]:
    """Each ticket's stored reference values of one kind (tickets without any: absent)."""
    rows = session.execute(select(TicketReference.ticket_id, TicketReference.value)
                           .where(TicketReference.ticket_id.in_(ticket_ids), TicketReference.kind == kind))
    values: dict[str, list[float]] = {}
    for ticket_id, value in rows:
        values.setdefault(ticket_id, []).append(value)
    return values


class AlignedReference(NamedTuple):
    """One stored reference of the aligned test: whose, its statistic, the reference ticket's density."""

    reference_id: str
    value: float
    density: float


def aligned_references(session: Session, ticket_ids: list[str]) -> dict[str, list[AlignedReference]]:
    """Each ticket's aligned-test references: a verification reads the null at the suspect's density
    (`verifier.aligned.calibrated_p`)."""
    rows = session.execute(select(TicketReference.ticket_id, TicketReference.reference_id, TicketReference.value,
                                  Ticket.sparsity)
                           .join(Ticket, Ticket.id == TicketReference.reference_id)
                           .where(TicketReference.ticket_id.in_(ticket_ids), TicketReference.kind == STATISTIC,
                                  Ticket.sparsity.is_not(None)))
    references: dict[str, list[AlignedReference]] = {}
    for ticket_id, reference_id, value, sparsity in rows:
        references.setdefault(ticket_id, []).append(AlignedReference(reference_id, value, 1.0 - sparsity))
    return references


def references_at_density(settings, store: ArtifactStore, ticket: Ticket, *, weights: dict, mask: Mask,
                          density: float, known: set[str], limit: int) -> list[AlignedReference]:
    """More references for a suspect whose density the stored ones do not cover: up to `limit` tickets
    registered before `ticket` (earlier only, as at registration) within DENSITY_MARGIN of `density`
    and not among `known`, measured now and stored with the ticket's others, so the next suspect of
    that density finds them. Returns the new ones (none where the registry holds no such ticket)."""
    with sessions_for(settings)() as session:
        found = [t for t in reference_tickets(session, ticket_id=ticket.id, model_sha256=ticket.model_sha256,
                                              arch=ticket.arch, dataset=ticket.dataset, density=density,
                                              limit=limit + len(known), before=ticket.registered_at,
                                              factor=DENSITY_MARGIN)
                 if t.id not in known][:limit]
        release(session)
        if not found:
            return []
        values = measure_references(store, found, arch=ticket.arch, weights=weights, mask=mask)
        store_references(session, ticket.id, values)
        try:
            session.commit()
        except IntegrityError:  # a verification beside this one stored them first (the same values)
            session.rollback()
    densities = {t.id: 1.0 - t.sparsity for t in found}
    return [AlignedReference(reference_id, value, densities[reference_id]) for reference_id, value in values]


def recalibrate(session: Session, store: ArtifactStore, ticket: Ticket, *, limit: int) -> int:
    """Measure a registered ticket's references again, from the tickets registered before it, and
    replace its stored rows (for tickets registered before calibration existed, or with fewer
    references than wanted). Commits; returns the number of references."""
    weights, mask = read_state_dict(store.path(ticket.model_sha256)), load_mask(store.path(ticket.mask_sha256))
    values = calibrate_registration(session, store, ticket_id=ticket.id, model_sha256=ticket.model_sha256,
                                    arch=ticket.arch, dataset=ticket.dataset, weights=weights, mask=mask,
                                    limit=limit, before=ticket.registered_at)
    session.execute(delete(TicketReference).where(TicketReference.ticket_id == ticket.id,
                                                    TicketReference.kind == STATISTIC))
    store_references(session, ticket.id, values)
    session.commit()
    return len(values)
