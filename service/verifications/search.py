"""The 1:N search's shortlist: registered tickets ranked by how close their indexed weight summary
is to the suspect's, so that only the nearest few get the full (aligned, permutation-null) tests.

The summaries are permutation-invariant (`verifier.summaries`). Choosing candidates by them therefore
leaves each full test's null intact: an independent suspect's hidden units are exchangeable whatever
its summary, so the permutation p-values stay valid for the shortlisted tickets and the correction
counts the tickets actually tested."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.datasets.catalog import resolve_dataset
from service.db import release
from service.models import Ticket, TicketSummary
from verifier.checkpoint import read_state_dict
from verifier.models import build_model, prunable_parameters
from verifier.summaries import KIND as SUMMARY_KIND
from verifier.summaries import spectral_summary, summary_distances


@dataclass
class IndexEntry:
    """One registered ticket as the search sees it before loading anything."""

    ticket_id: str
    arch: str
    dataset: str
    model_sha256: str
    vector: np.ndarray | None  # None: not indexed (or indexed with another summary kind)


def index_entries(session: Session, ticket_id: str | None) -> list[IndexEntry]:
    """Every registered ticket (or only `ticket_id`) with its summary, oldest registration first."""
    query = (select(Ticket.id, Ticket.arch, Ticket.dataset, Ticket.model_sha256, TicketSummary.kind,
                    TicketSummary.vector)
             .outerjoin(TicketSummary, TicketSummary.ticket_id == Ticket.id)
             .where(Ticket.status == "registered").order_by(Ticket.registered_at, Ticket.id))
    if ticket_id:
        query = query.where(Ticket.id == ticket_id)
    return [IndexEntry(tid, arch, dataset, model_sha,
                       np.frombuffer(vector, dtype="<f4") if kind == SUMMARY_KIND else None)
            for tid, arch, dataset, model_sha, kind, vector in session.execute(query)]


def rank_entries(entries: list[IndexEntry], suspect: np.ndarray, prunable: list[str],
                 store: ArtifactStore) -> list[tuple[float, IndexEntry]]:
    """(distance, entry) nearest first. The entries share one architecture and dataset, so their
    summaries line up with the suspect's; an entry without one (registered before the index
    existed) gets it from its stored weights. Ties keep the older registration first."""
    if not entries:
        return []
    vectors = [entry.vector if entry.vector is not None and entry.vector.shape == suspect.shape
               else spectral_summary(read_state_dict(store.path(entry.model_sha256)), prunable)
               for entry in entries]
    distances = summary_distances(suspect, np.stack(vectors), len(prunable))
    return [(float(distances[i]), entries[i]) for i in np.argsort(distances, kind="stable")]


def reindex(session: Session, store: ArtifactStore, ticket: Ticket) -> None:
    """Replace a registered ticket's index row with its summary of the current kind, from its stored
    weights (for tickets indexed before the summary changed, which a search otherwise summarises
    again each time). Commits."""
    spec = resolve_dataset(session, ticket.dataset, owner=None).spec
    release(session)  # no transaction held while the weights are read and summarised
    prunable = prunable_parameters(ticket.arch, build_model(ticket.arch, *spec))
    vector = spectral_summary(read_state_dict(store.path(ticket.model_sha256)), prunable).astype("<f4").tobytes()
    row = session.get(TicketSummary, ticket.id)
    if row is None:
        session.add(TicketSummary(ticket_id=ticket.id, kind=SUMMARY_KIND, vector=vector))
    else:
        row.kind, row.vector = SUMMARY_KIND, vector
    session.commit()
