"""Load: N verification requests at once against the real service (local executor, PostgreSQL).

    python benchmarks/load.py [--requests 200] [--workers 2] [--read-rate 10] \\
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Creates a fresh database on the server of `--database-url` (dropped at the end), runs `ticketguard
migrate`, starts `ticketguard serve` as a subprocess (TICKETGUARD_EXECUTOR=local, `--workers` job
processes, the service's default 9,999 permutations) on a free loopback port, and creates an owner.
Two lenet300_100 digits tickets are made as the test suite makes them (`tests/conftest.py`,
`make_model_files`): the original and an independent one (another seed), both registered over HTTP.
Then N verification POSTs (model upload, `ticket_id` of the original) are fired at once from N
client threads: even ones send the stolen copy (fine-tuned, pruned a further 10 %: `match`), odd
ones the independent ticket (`no_match`). While the jobs run, one client polls cheap reads at
`--read-rate` per second, in turn: GET /healthz, GET /v1/jobs/{id}, GET /v1/verifications/{id}
(ids of submitted verifications). When every job has finished it checks, in the database: each
verdict right, each job `succeeded` after one attempt, exactly one `verification.requested` and one
`verification.completed` audit event per verification, no verification missing or extra, and the
audit hash chain intact (GET /v1/audit/verify). Prints the table; exits 1 if any check fails.

"submit" is a POST's latency (upload, validation, queueing; all N in flight together); "jobs/s" is
N over the time from the first POST to the last job's end; "wall" that time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.embedded import free_port  # noqa: E402
from tests.conftest import make_model_files  # noqa: E402
from tests.helpers import POSTGRES_URL, fresh_database  # noqa: E402
from tests.served import (  # noqa: E402
    Served,
    cli,
    create_owner,
    jobs_by_id,
    kill_leftover_workers,
    post_model,
    service_env,
    verification_outcome,
    wait_finished,
)

JOB_TIMEOUT = 7200.0  # seconds for all N jobs; a healthy run of 200 on 2 cores takes minutes


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`, in the values' unit; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Reader(threading.Thread):
    """Polls cheap reads at `rate` per second until stopped; keeps each one's latency (ms) and status."""

    def __init__(self, client: httpx.Client, rate: float, verification_ids: list[str], job_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.period = client, 1.0 / rate
        self.verification_ids, self.job_ids = verification_ids, job_ids  # filled while submissions return
        self.latency: dict[str, list[float]] = {"healthz": [], "job": [], "verification": []}
        self.failures: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            kinds = ["healthz"] + (["job", "verification"] if self.job_ids else [])
            kind = kinds[turn % len(kinds)]
            index = turn // len(kinds)
            if kind == "healthz":
                url = "/healthz"
            elif kind == "job":
                url = f"/v1/jobs/{self.job_ids[index % len(self.job_ids)]}"
            else:
                url = f"/v1/verifications/{self.verification_ids[index % len(self.verification_ids)]}"
            started = time.perf_counter()
            try:
                status = self.client.get(url).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            elapsed = (time.perf_counter() - started) * 1000
            if status == 200:
                self.latency[kind].append(elapsed)
            else:
                self.failures[f"{kind} {status}"] = self.failures.get(f"{kind} {status}", 0) + 1
            turn += 1
            self.stop.wait(max(0.0, self.period - elapsed / 1000))


def register(client: httpx.Client, database_url: str, path: Path, name: str) -> str:
    accepted = post_model(client, "/v1/tickets", path, arch="lenet300_100", dataset="digits", name=name,
                          signature="fingerprint")
    accepted.raise_for_status()
    job = wait_finished(database_url, [accepted.json()["job_id"]], 600)[accepted.json()["job_id"]]
    if job.status != "succeeded":
        raise RuntimeError(f"registration of {name} {job.status}: {job.error}")
    return accepted.json()["id"]


def run(requests: int, workers: int, admin_url: str, read_rate: float, root: Path) -> bool:
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}: {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; load average before {os.getloadavg()}")
    print("making the tickets (tests/conftest.py make_model_files) ...", flush=True)
    files = make_model_files(root / "models")
    with fresh_database(admin_url, prefix="tg_load") as url:
        env = service_env(url, root / "data", workers=workers)
        cli(env, "migrate")
        headers = create_owner(env, "load")
        served = Served(env, free_port(), root / "serve.log").start()
        try:
            limits = httpx.Limits(max_connections=requests + 8, max_keepalive_connections=requests + 8)
            with httpx.Client(base_url=served.url, headers=headers, timeout=600, limits=limits) as client:
                ticket_id = register(client, url, files.ticket, "original")
                register(client, url, files.independent, "independent")
                print(f"registered; firing {requests} verifications with {workers} worker(s) ...", flush=True)
                suspects = [(files.stolen, "match") if i % 2 == 0 else (files.independent, "no_match")
                            for i in range(requests)]
                payloads = {path: path.read_bytes() for path in (files.stolen, files.independent)}
                verification_ids: list[str] = []
                job_ids: list[str] = []
                reader_client = httpx.Client(base_url=served.url, headers=headers, timeout=600)
                reader = Reader(reader_client, read_rate, verification_ids, job_ids)
                go = threading.Barrier(requests)

                def submit(suspect: tuple[Path, str]) -> tuple[float, httpx.Response | str]:
                    go.wait()  # all N leave together
                    started = time.perf_counter()
                    try:
                        response = client.post("/v1/verifications", data={"ticket_id": ticket_id},
                                               files={"model": ("suspect.safetensors", payloads[suspect[0]],
                                                                "application/octet-stream")})
                    except httpx.HTTPError as exc:
                        return (time.perf_counter() - started) * 1000, type(exc).__name__
                    if response.status_code == 202:
                        verification_ids.append(response.json()["id"])
                        job_ids.append(response.json()["job_id"])
                    return (time.perf_counter() - started) * 1000, response

                first_post = time.monotonic()
                reader.start()
                with ThreadPoolExecutor(requests) as pool:
                    results = list(pool.map(submit, suspects))
                submitted = time.monotonic()
                expected, refused = {}, {}
                for (_, outcome), (_, verdict) in zip(results, suspects, strict=True):
                    if isinstance(outcome, httpx.Response) and outcome.status_code == 202:
                        expected[outcome.json()["id"]] = verdict
                    else:
                        reason = outcome if isinstance(outcome, str) else f"{outcome.status_code} {outcome.text[:120]}"
                        refused[reason] = refused.get(reason, 0) + 1
                print(f"all {requests} POSTs answered in {submitted - first_post:.1f} s; waiting for the jobs ...",
                      flush=True)
                jobs = wait_finished(url, [o.json()["job_id"] for _, o in results
                                           if isinstance(o, httpx.Response) and o.status_code == 202], JOB_TIMEOUT)
                done = time.monotonic()
                reader.stop.set()
                reader.join()
                reader_client.close()
                chain_ok = client.get("/v1/audit/verify").json()["ok"]
        finally:
            served.stop()
            kill_leftover_workers(url)
        outcome = verification_outcome(url, expected)
        all_jobs = jobs_by_id(url)
    wall = done - first_post
    submit_ms = [ms for ms, _ in results]
    rows = [
        ("requests (accepted)", f"{requests} ({len(expected)})"),
        ("refused or failed POSTs", ", ".join(f"{k}: {v}" for k, v in refused.items()) or "0"),
        ("submit p50 / p95 / max (ms)", f"{percentile(submit_ms, 50):.0f} / {percentile(submit_ms, 95):.0f} / "
                                        f"{max(submit_ms):.0f}"),
        *[(f"read {kind} p50 / p95 (ms), n", f"{percentile(v, 50):.1f} / {percentile(v, 95):.1f}, {len(v)}")
          for kind, v in reader.latency.items()],
        ("failed reads", ", ".join(f"{k}: {v}" for k, v in reader.failures.items()) or "0"),
        ("all POSTs answered after (s)", f"{submitted - first_post:.1f}"),
        ("wall: first POST to last job end (s)", f"{wall:.1f}"),
        ("throughput (jobs/s)", f"{len(jobs) / wall:.2f}"),
        ("wrong verdicts", str(len(outcome.wrong))),
        ("lost (missing or unfinished)", str(len(outcome.lost))),
        ("run twice (attempts > 1 or events != 1)", str(len(outcome.run_twice))),
        ("jobs not succeeded", str(len(outcome.not_succeeded))),
        ("unexpected verifications", str(outcome.unexpected)),
        ("audit chain intact", "yes" if chain_ok else "NO"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n| {'what'.ljust(width)} | value |\n|{'-' * (width + 2)}|---:|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    print(f"\nload average after {os.getloadavg()}; jobs in the database: {len(all_jobs)} "
          f"({', '.join(sorted({j.status for j in all_jobs.values()}))})")
    return outcome.ok and chain_ok and not refused and len(expected) == requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="verification POSTs fired at once")
    parser.add_argument("--workers", type=int, default=2, help="TICKETGUARD_WORKERS of the service")
    parser.add_argument("--database-url", default=POSTGRES_URL,
                        help="a PostgreSQL database on the server to use; a fresh database is created beside it")
    parser.add_argument("--read-rate", type=float, default=10.0, help="cheap reads per second while jobs run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ticketguard-load-") as tmp:
        ok = run(args.requests, args.workers, args.database_url, args.read_rate, Path(tmp))
    print("load benchmark", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
