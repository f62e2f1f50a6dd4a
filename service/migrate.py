"""Schema migrations (Alembic) run from code: upgrade, and is the database at head?"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

import migrations
from service.db import get_engine


class DatabaseUnusable(SystemExit):
    """A database the operator must fix first, told in one line with the password hidden."""


def display_url(url: str) -> str:
    """`url` with its password hidden (an unparseable URL is not shown at all)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["url"] = url
    return config


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest schema (refusing one newer than the code)."""
    known_revision(url)
    command.upgrade(alembic_config(url), "head")


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    """The database's Alembic revision; DatabaseUnusable when the URL is bad, its driver is missing or
    the database cannot be reached."""
    try:
        with get_engine(url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except (ArgumentError, ImportError, OperationalError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        first_line = next(iter(str(reason).strip().splitlines()), type(reason).__name__)
        raise DatabaseUnusable(f"cannot use the database at {display_url(url)}: {first_line}") from exc


def known_revision(url: str) -> str | None:
    """The database's revision; DatabaseUnusable when our migrations do not know it (a newer TicketGuard's)."""
    revision = current_revision(url)
    script = ScriptDirectory.from_config(alembic_config(url))
    if revision is not None and revision not in {known.revision for known in script.walk_revisions()}:
        raise DatabaseUnusable(f"the database schema is newer than this TicketGuard; upgrade TicketGuard "
                               f"(the database at {display_url(url)} is at revision {revision})")
    return revision


def schema_is_current(url: str) -> bool:
    """True at our newest revision, False behind it; DatabaseUnusable for a newer schema."""
    return known_revision(url) == head_revision(url)
