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


def test_an_existing_audit_chain_becomes_the_transparency_logs_first_leaves(database_url, tmp_path):
    """Events written before the transparency log existed (revision 0010) are its leaves after the
    upgrade: the log verifies, and a receipt for an old event verifies offline."""
    from sqlalchemy.orm import Session

    from service.audit.chain import append_event
    from service.audit.log_key import signing_key
    from service.audit.merkle import HashTree, verify_receipt
    from service.audit.transparency import receipt, verify_log
    from service.config import Settings
    from service.models import AuditEvent

    command.downgrade(alembic_config(database_url), "0010")
    engine = get_engine(database_url)
    with Session(engine) as session:
        for i in range(5):
            append_event(session, actor="old", action="test.event", subject=f"thing:{i}", payload={"i": i})
        session.commit()
        hashes = [e.hash for e in session.query(AuditEvent).order_by(AuditEvent.seq)]
    upgrade(database_url)
    key = signing_key(Settings(data_dir=tmp_path))
    with Session(engine) as session:
        report = verify_log(session, key.public_key())
        assert report.ok and report.tree_size == 5 and report.root_hash == HashTree(hashes).root_hex()
        old = receipt(session, session.get(AuditEvent, 2), key)
        session.commit()
    assert verify_receipt(old, key.public_key()).tree_size == 5
