"""What a running job sees: its parameters, the stores, and a progress callback."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update

from service.artifacts import ArtifactStore
from service.config import Settings
from service.db import sessions_for
from service.models import Job, utcnow


class JobFailed(Exception):
    """A failure the job's owner can act on; its message is stored on the job."""


class RunAgain(Exception):
    """Raised by a job's final transaction when what the body read has changed since (a registration of
    the same kind committed meanwhile): the runner rolls back and runs the body again, a few times."""


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


class LeaseLost(Exception):
    """Another worker owns this job now; stop without writing anything."""


@dataclass
class JobContext:
    settings: Settings
    job_id: str
    lease_owner: str
    params: dict[str, Any]
    store: ArtifactStore
    min_interval: float = 0.5
    _last: float = field(default=0.0, repr=False)

    def progress(self, fraction: float, message: str, *, force: bool = False) -> None:
        """Record progress (throttled); raise if the job was cancelled or its lease was taken."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        with sessions_for(self.settings)() as session:
            updated = session.execute(
                update(Job).where(Job.id == self.job_id, Job.lease_owner == self.lease_owner,
                                  Job.status == "running")
                .values(progress=max(0.0, min(1.0, fraction)), message=message[:500], heartbeat_at=utcnow())
                .returning(Job.cancel_requested)).first()
            session.commit()
        if updated is None:
            raise LeaseLost(self.job_id)
        if updated[0]:
            raise JobCancelled(self.job_id)
