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


# the row a job kind works for: the model and the job parameter naming it
DOMAIN_ROWS = {REGISTER_KIND: (Ticket, "ticket_id"), VERIFY_KIND: (Verification, "verification_id"),
               ATTACK_KIND: (AttackReport, "report_id")}


def mark_domain_failed(session: Session, job: Job) -> None:
    """Carry a failed or cancelled job's outcome to the ticket, verification or report it was for."""
    status = "cancelled" if job.status == "cancelled" else "failed"
    model, key = DOMAIN_ROWS.get(job.kind, (None, None))
    row_id = job.params.get(key) if key else None
    row = session.get(model, row_id) if row_id is not None else None
    if row is not None:
        row.status, row.error = status, job.error
