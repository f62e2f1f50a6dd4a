"""Engine, sessions and the declarative base (with a constraint naming convention)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

if TYPE_CHECKING:
    from service.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# seconds a new PostgreSQL connection may take: a server that accepts but never answers (overloaded,
# half-restarted, a dropped network) then costs a request a 503, not a hang, and a worker a retry
CONNECT_TIMEOUT = 5
# connections an engine's pool opens at most (kept open, and beyond those while in demand)
POOL_SIZE, MAX_OVERFLOW = 10, 20
# requests that may hold a database session at once (deps.get_session): fewer than the pool's
# connections, so that the API key checks before a body is read and the job supervisor always find one
REQUEST_SESSIONS = POOL_SIZE + MAX_OVERFLOW - 5


@dataclass(frozen=True)
class Timeouts:
    """How long a connection's statements may wait, in seconds (0: no limit).

    `lock`: for a lock (PostgreSQL `lock_timeout`, SQLite's busy timeout); `statement`: for a statement to
    run (`statement_timeout`); `idle_in_transaction`: for the client between statements of an open
    transaction, after which PostgreSQL ends the session and releases its locks
    (`idle_in_transaction_session_timeout`). So a holder that froze mid-transaction (SIGSTOP, a GC pause,
    a VM freeze, a partition) blocks the others for `idle_in_transaction` at most, and a waiter gets an
    error (a 503 with Retry-After, or a retry) rather than waiting for good. SQLite has row locks on no
    one but its own process: only `lock` applies there."""

    lock: float = 10.0
    statement: float = 60.0
    idle_in_transaction: float = 5.0

    def postgres_options(self) -> str:
        settings = {"lock_timeout": self.lock, "statement_timeout": self.statement,
                    "idle_in_transaction_session_timeout": self.idle_in_transaction}
        return " ".join(f"-c {name}={round(seconds * 1000)}" for name, seconds in settings.items())


NO_TIMEOUTS = Timeouts(lock=0, statement=0, idle_in_transaction=0)  # migrations: DDL may take its time


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(busy_ms: int):
    def apply(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()
    return apply


@lru_cache(maxsize=16)
def get_engine(url: str, timeouts: Timeouts = Timeouts()) -> Engine:
    """One engine per URL and timeouts per process (SQLite gets WAL, foreign keys and a busy timeout)."""
    if url.startswith("sqlite"):
        busy = timeouts.lock or 3600.0
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy},
                               pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
        event.listen(engine, "connect", _sqlite_pragmas(round(busy * 1000)))
        return engine
    # pre-ping: a connection that died with a database restart (or was ended by the server after idling
    # in a transaction) is replaced, not handed to a request
    connect_args: dict = {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # after the URL's own `options` (a search_path, say), which connect_args would otherwise replace
        connect_args["options"] = " ".join(filter(None, [parsed.query.get("options"), timeouts.postgres_options()]))
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                         connect_args=connect_args)


def session_factory(url: str, timeouts: Timeouts = Timeouts()) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, timeouts), expire_on_commit=False)


def sessions_for(settings: Settings, *, requests: bool = False) -> sessionmaker[Session]:
    """Sessions on the settings' database with its timeouts: the job system's (workers, supervisors,
    dispatchers), or with `requests` the API requests' (a longer idle limit: a request may validate a
    large upload between two statements)."""
    return session_factory(settings.resolved_database_url, settings.db_timeouts(requests=requests))


def release(session: Session) -> None:
    """Detach what the session read and end its transaction, before work that takes a while (models run,
    references aligned): a job-system connection idling in a transaction is ended by the server after
    `db_idle_timeout`. Commits anything pending."""
    session.expunge_all()
    session.commit()
