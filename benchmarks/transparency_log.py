"""What the transparency log costs as it grows: signing a tree head, a receipt (head + inclusion proof),
a consistency proof, and the whole log's check, on the embedded SQLite database.

    python benchmarks/transparency_log.py [--sizes 1000 10000 50000] [--repeats 5]

For each size the log is filled with that many events (through `append_event`, as the service writes
them), then each operation is timed `--repeats` times after a warm-up (median and max, ms). A receipt
and a proof read the stored chain hashes of the events they cover and build the tree (O(N)); the check
recomputes every event's hash from its content as well. Prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import time_calls  # noqa: E402

from service.app import prepare_database  # noqa: E402
from service.audit.chain import append_event  # noqa: E402
from service.audit.log_key import signing_key  # noqa: E402
from service.audit.transparency import (  # noqa: E402
    consistency_proof,
    latest_tree_head,
    log_size,
    receipt,
    verify_log,
)
from service.config import Settings  # noqa: E402
from service.db import session_factory  # noqa: E402
from service.models import AuditEvent  # noqa: E402


def measure(session, key, size: int, repeats: int) -> list[list[float]]:
    """Milliseconds of: a new tree head, a receipt, a consistency proof, the whole log's check."""
    def new_head():
        # a head over one more event each time: the cost a growing log pays per head
        append_event(session, actor="bench", action="bench.event", subject="head", payload={})
        latest_tree_head(session, key)
        session.rollback()

    def one_receipt():
        receipt(session, session.get(AuditEvent, size // 2), key)
        session.rollback()

    return [time_calls(new_head, repeats), time_calls(one_receipt, repeats),
            time_calls(lambda: consistency_proof(session, size // 3, log_size(session)), repeats),
            time_calls(lambda: verify_log(session, key.public_key()), repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), secret_key="bench")
        prepare_database(settings)
        key = signing_key(settings)
        sessions = session_factory(settings.resolved_database_url)
        print("| events | fill (s) | new tree head (ms) | receipt (ms) | consistency proof (ms) | "
              "check the whole log (ms) |")
        print("|---:|---:|---:|---:|---:|---:|")
        filled = 0
        for size in sorted(args.sizes):
            started = time.perf_counter()
            with sessions() as session:
                for i in range(filled, size):
                    append_event(session, actor="bench", action="bench.event", subject=f"thing:{i}",
                                 owner_id=None, payload={"i": i, "note": "a typical payload of a few fields"})
                    if i % 1000 == 999:
                        session.commit()
                session.commit()
            fill_s, filled = time.perf_counter() - started, size
            with sessions() as session:
                timings = measure(session, key, size, args.repeats)
            row = [f"{statistics.median(t):.0f} (max {max(t):.0f})" for t in timings]
            print(f"| {size} | {fill_s:.1f} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
