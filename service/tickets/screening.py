"""Screening at registration (issue 15): before a ticket becomes `registered` it is searched for among
every earlier registered ticket of its architecture and dataset with a 1:N verification's tests. A
ticket that derives from another owner's earlier ticket is refused and that owner alerted; one that
derives from its own owner's earlier ticket is registered and linked to it.

Registrations of one architecture and dataset cannot both win a race: the screen records the audit
log's size when it read the registry, and the final transaction (which holds the log's head row, so
registrations finish one at a time) runs the job again if a ticket of that kind was registered since.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.audit.chain import HEAD_ID, append_event
from service.audit.webhooks import append_alert
from service.config import Settings
from service.db import sessions_for
from service.jobs.context import JobContext, RunAgain
from service.modelfiles import parse_for_arch
from service.models import AuditEvent, AuditHead, Owner, Ticket
from service.verifications.search import index_entries, rank_entries
from service.verifications.service import candidate_tests, decide_with, load_candidates, pair_seed
from verifier.summaries import spectral_summary

REFUSED_CODE = "derives_from_registered_ticket"
REFUSED_MESSAGE = ("registration refused: this model derives from a ticket another owner registered earlier "
                   "(a 1:N verification of it answers `match`). If you believe it is your own work, ask the "
                   "service's operator to review it")
ALERT_REFUSED = "alert.derived_registration_refused"


@dataclass
class Screening:
    """What the screen found: every earlier ticket the new one matches, oldest registration first."""

    log_size: int  # registrations committed after this audit event were not screened
    compared: int = 0
    candidates: int = 0
    matches: list[dict[str, Any]] = field(default_factory=list)  # ticket_id, owner_id, p_value, relation

    def others(self, owner_id: str) -> list[dict[str, Any]]:
        return [m for m in self.matches if m["owner_id"] != owner_id]

    def own(self, owner_id: str) -> list[dict[str, Any]]:
        return [m for m in self.matches if m["owner_id"] == owner_id]


def screen_registration(ctx: JobContext, *, arch: str, dataset: str, spec: tuple, weights: dict, mask: dict,
                        prunable: list[str], upload_sha256: str, before: Ticket | None = None) -> Screening:
    """The new ticket (`weights`, `mask` as uploaded, before any signature) against the earlier tickets of
    its kind (with `before`, a registered ticket: those registered before it): ranked by weight summary,
    the nearest `search_candidates` tested in full (white-box, and the trigger set where one was
    embedded), each decided as a 1:N verification decides its best candidate."""
    settings = ctx.settings
    with sessions_for(settings)() as session:
        log_size = session.get(AuditHead, HEAD_ID).seq
        entries = [e for e in index_entries(session, None) if e.arch == arch and e.dataset == dataset]
        if before is not None:
            earlier = set(session.execute(select(Ticket.id).where(
                Ticket.status == "registered", Ticket.registered_at < before.registered_at)).scalars())
            entries = [e for e in entries if e.ticket_id in earlier]
    screening = Screening(log_size=log_size, candidates=len(entries))
    if not entries:
        return screening
    ranked = rank_entries(entries, spectral_summary(weights, prunable), prunable, ctx.store)
    shortlist = ranked[:settings.search_candidates]
    found = load_candidates(settings, [entry.ticket_id for _, entry in shortlist], both=True)
    for index, (_, entry) in enumerate(shortlist):
        ctx.progress(0.02 + 0.06 * index / len(shortlist), f"screening: earlier ticket {index + 1}/{len(shortlist)}")
        ticket = found.tickets[entry.ticket_id]
        tests = candidate_tests(ctx, found, ticket, spec, weights, mask, pair_seed(ticket.id, upload_sha256),
                                selection=len(ranked))
        decision = decide_with(settings, tests, compared=len(shortlist), chosen_from=len(ranked))
        screening.compared += 1
        if decision.verdict == "match":
            screening.matches.append({"ticket_id": ticket.id, "owner_id": ticket.owner_id,
                                      "p_value": decision.p_value, "relation": decision.relation,
                                      "registered_at": ticket.registered_at.isoformat()})
    screening.matches.sort(key=lambda m: m["registered_at"])
    return screening


def check_no_registration_since(session: Session, ticket: Ticket, log_size: int) -> None:
    """In the registration's final transaction: hold the audit log's head (so registrations finish one at a
    time) and raise RunAgain if a ticket of the same architecture and dataset was registered after the
    screen read the registry, so the screen runs again and sees it."""
    session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=AuditHead.seq))
    since = session.execute(
        select(AuditEvent.ticket_id).join(Ticket, Ticket.id == AuditEvent.ticket_id)
        .where(AuditEvent.seq > log_size, AuditEvent.action == "ticket.registered", Ticket.arch == ticket.arch,
               Ticket.dataset == ticket.dataset, Ticket.id != ticket.id).limit(1)).scalar()
    if since is not None:  # which ticket stays unsaid: it may be another owner's
        raise RunAgain("a ticket of the same architecture and dataset was registered while this one was being "
                       "screened")


def refuse(session: Session, ticket: Ticket, screening: Screening, *, registrant: str) -> None:
    """Mark `ticket` refused, record it, and alert each earlier owner whose ticket it derives from (by a
    pseudonym of the registrant: the alert reveals who asked no more than the refusal reveals whose)."""
    ticket.status, ticket.error_code, ticket.error = "refused", REFUSED_CODE, REFUSED_MESSAGE
    append_event(session, actor=session.get(Owner, ticket.owner_id).name, action="ticket.refused",
                 subject=f"ticket:{ticket.id}", owner_id=ticket.owner_id, ticket_id=ticket.id,
                 payload={"code": REFUSED_CODE})
    for match in screening.others(ticket.owner_id):
        append_alert(session, actor="screening", action=ALERT_REFUSED, subject=f"ticket:{match['ticket_id']}",
                     owner_id=match["owner_id"], ticket_id=match["ticket_id"],
                     payload={"refused_ticket_id": ticket.id, "registrant": registrant,
                              "p_value": match["p_value"], "relation": match["relation"]})


def screening_report(screening: Screening, owner_id: str) -> dict[str, Any]:
    """What the registering owner's job shows: counts, and only their own earlier tickets by id."""
    return {"candidates": screening.candidates, "compared": screening.compared,
            "derived_from": [m["ticket_id"] for m in screening.own(owner_id)],
            "refused": bool(screening.others(owner_id))}


@dataclass
class OfflineContext:
    """What the screen needs of a job's context, outside a job (`ticketguard registry screen`)."""

    settings: Settings
    store: ArtifactStore
    params: dict[str, Any] = field(default_factory=dict)

    def progress(self, fraction: float, message: str, *, force: bool = False) -> None:
        """No job to report to."""


def screen_registered(ctx: OfflineContext, ticket: Ticket, spec: tuple) -> Screening:
    """A registered ticket screened as its registration would be today: its upload against the tickets
    registered before it."""
    parsed = parse_for_arch(ctx.store.path(ticket.upload_sha256), arch=ticket.arch, spec=spec, require_sparse=True)
    return screen_registration(ctx, arch=ticket.arch, dataset=ticket.dataset, spec=spec, weights=parsed.weights,
                               mask=parsed.mask, prunable=parsed.prunable, upload_sha256=ticket.upload_sha256,
                               before=ticket)
