"""Every connection carries the timeouts that keep a frozen holder from blocking the others for good."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from service.db import Timeouts, get_engine, sessions_for


def _show(session, name: str) -> str:
    return session.execute(text(f"SHOW {name}")).scalar_one()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_sessions_have_lock_statement_and_idle_in_transaction_timeouts(settings):
    with sessions_for(settings)() as jobs, sessions_for(settings, requests=True)() as requests:
        assert (_show(jobs, "lock_timeout"), _show(jobs, "statement_timeout")) == ("10s", "1min")
        assert _show(jobs, "idle_in_transaction_session_timeout") == "5s"
        assert _show(requests, "idle_in_transaction_session_timeout") == "2min"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_urls_own_options_are_kept_beside_the_timeouts(database_url):
    url = f"{database_url}?options=-c%20search_path%3Dpublic%2Cpg_catalog"
    with get_engine(url, Timeouts(lock=3)).connect() as connection:
        assert connection.execute(text("SHOW search_path")).scalar_one() == "public,pg_catalog"
        assert connection.execute(text("SHOW lock_timeout")).scalar_one() == "3s"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_waits_for_a_lock_as_long_as_the_lock_timeout(settings):
    quick = settings.model_copy(update={"db_lock_timeout": 2.5})
    with sessions_for(quick)() as session:
        assert session.execute(text("PRAGMA busy_timeout")).scalar_one() == 2500
