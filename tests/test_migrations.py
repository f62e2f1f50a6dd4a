"""The migrations build exactly the schema the models declare, and downgrade cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.db import Base, get_engine
from service.migrate import alembic_config, upgrade


def test_migrated_schema_matches_the_models(database_url):
    with get_engine(database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(database_url):
    command.downgrade(alembic_config(database_url), "base")
    upgrade(database_url)
    with get_engine(database_url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
