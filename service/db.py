"""Engine, sessions and the declarative base (with a constraint naming convention)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process (SQLite gets WAL, foreign keys and a busy timeout)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # pre-ping: a connection that died with a database restart is replaced, not handed to a request
        parsed = make_url(url)
        timeout = ({"connect_timeout": CONNECT_TIMEOUT}
                   if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query else {})
        engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                               connect_args=timeout)
    return engine


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
