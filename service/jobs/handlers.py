"""Job kinds: what runs in the worker, and what the final transaction writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from service.attacks.service import ATTACK_KIND, finish_attacks, run_attacks
from service.finding.service import FIND_KIND, finish_find, run_find
from service.jobs.context import JobContext
from service.locks.service import LOCK_KIND, finish_lock, run_lock
from service.models import AttackReport, Job, Ticket, Verification
from service.tickets.service import REGISTER_KIND, finish_registration, run_registration
from service.verifications.service import VERIFY_KIND, finish_verification, run_verification


@dataclass(frozen=True)
class Handler:
    run: Callable[[JobContext], dict[str, Any]]
    finish: Callable[[Session, Job, dict[str, Any]], None]


HANDLERS: dict[str, Handler] = {
    REGISTER_KIND: Handler(run_registration, finish_registration),
    VERIFY_KIND: Handler(run_verification, finish_verification),
    FIND_KIND: Handler(run_find, finish_find),
    LOCK_KIND: Handler(run_lock, finish_lock),
    ATTACK_KIND: Handler(run_attacks, finish_attacks),
}


def mark_domain_failed(session: Session, job: Job) -> None:
    """Carry a failed or cancelled job's outcome to the ticket, verification or report it was for."""
    status = "cancelled" if job.status == "cancelled" else "failed"
    if job.kind == REGISTER_KIND:
        row = session.get(Ticket, job.params.get("ticket_id"))
    elif job.kind == VERIFY_KIND:
        row = session.get(Verification, job.params.get("verification_id"))
    elif job.kind == ATTACK_KIND:
        row = session.get(AttackReport, job.params.get("report_id"))
    else:
        return
    if row is not None:
        row.status, row.error = status, job.error
