"""Alembic environment: the URL comes from the caller (`service.migrate`) or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service import models  # noqa: F401  (registers the tables on Base.metadata)
from service.config import get_settings
from service.db import Base

config = context.config
url = config.attributes.get("url") or get_settings().resolved_database_url


def run_migrations() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = create_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations()
