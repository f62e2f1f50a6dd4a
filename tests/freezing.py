"""Freeze a job's worker between a statement and its commit, as SIGSTOP, a long GC pause, a VM freeze or a
network partition can: the worker's PostgreSQL session is left idle in a transaction, holding the job
row's lock, while its process stands still.

Deterministic: the test holds the job's row (`SELECT ... FOR UPDATE` on a connection without timeouts),
waits until a worker's statement on that row queues behind it, finds the worker's process from the
waiting backend's client port, stops it (SIGSTOP), and lets its statement through. The worker's
transaction is then open, its statement done, its COMMIT never sent."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
from sqlalchemy import create_engine, text

from tests.helpers import wait_for

POSTGRES_PORT = 5432


@dataclass(frozen=True)
class Frozen:
    pid: int  # the stopped worker process
    backend: int  # its PostgreSQL backend, idle in a transaction that holds the job's row
    query: str  # the statement it ran last


def _client_pid(port: int) -> int | None:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and connection.laddr.port == port and connection.pid:
            return connection.pid
    return None


def freeze_next_statement_on(url: str, job_id: str, *, timeout: float = 120.0) -> Frozen:
    """Stop the process whose next statement on the job's row comes from outside this test process,
    right after that statement ran and before its commit. Returns once its backend is idle in
    transaction, holding the row."""
    engine = create_engine(url)  # no lock or idle timeouts: this holder waits for the test, not a clock
    # pg_stat_activity is a snapshot per transaction: watch from a connection of its own, in autocommit
    watcher = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as holder, watcher.connect() as observer:
            holder.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
            holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()

            def waiting_worker():
                for backend, port in observer.execute(text(
                        "SELECT pid, client_port FROM pg_stat_activity "
                        "WHERE :holder = ANY(pg_blocking_pids(pid))"), {"holder": holder_pid}):
                    pid = _client_pid(port)
                    if pid is not None and pid != os.getpid():  # not the supervisor in this process
                        return backend, pid
                return None

            backend, pid = wait_for(waiting_worker, "a worker's statement on the job's row", timeout=timeout)
            os.kill(pid, signal.SIGSTOP)
            holder.rollback()  # the worker's statement goes through; its commit never comes

            def idle_in_transaction():  # then its last statement is the one that took the row
                row = observer.execute(text("SELECT state, query FROM pg_stat_activity WHERE pid = :b"),
                                       {"b": backend}).first()
                return row.query if row is not None and row.state == "idle in transaction" else None

            query = wait_for(idle_in_transaction, "the frozen worker's session to sit idle in its transaction",
                             timeout=timeout)
    finally:
        engine.dispose()
        watcher.dispose()
    return Frozen(pid, backend, query)


@contextlib.contextmanager
def frozen_worker(url: str, job_id: str) -> Iterator[Frozen]:
    """`freeze_next_statement_on`, and the process let go on afterwards (if it still exists), so nothing
    is left stopped after a test."""
    frozen = freeze_next_statement_on(url, job_id)
    try:
        yield frozen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen.pid, signal.SIGCONT)


def backend_alive(url: str, backend: int) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :b"),
                                      {"b": backend}).scalar_one() > 0
    finally:
        engine.dispose()
