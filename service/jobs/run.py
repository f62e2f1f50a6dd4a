"""Worker entry point: `python -m service.jobs.run <job_id>` (started by a supervisor), or `run_job` (Ray)."""

from __future__ import annotations

import logging
import os
import sys

from service.config import Settings
from service.jobs.runner import TRANSIENT_OUTCOMES, execute_job

TRANSIENT_EXIT = 75  # EX_TEMPFAIL: the database or object store was away; the job is retried at no cost


def run_job(job_id: str, lease_owner: str) -> str:
    """Run one claimed job with the settings of this process's environment; returns its status."""
    return execute_job(Settings(), job_id, lease_owner)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m service.jobs.run <job_id>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    lease_owner = os.environ.get("TICKETGUARD_LEASE_OWNER")
    if not lease_owner:
        print("TICKETGUARD_LEASE_OWNER is not set; workers are started by a supervisor", file=sys.stderr)
        return 2
    status = run_job(argv[0], lease_owner)
    if status in TRANSIENT_OUTCOMES:
        return TRANSIENT_EXIT
    return 0 if status in ("succeeded", "failed", "cancelled") else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
