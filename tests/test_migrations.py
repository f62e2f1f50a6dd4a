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
    """Events written before the transparency log existed (revision 0010; two hosts whose clocks differ,
    so their times are not in order) are its leaves after the upgrade: the log verifies, a receipt for
    an old event verifies offline, and only events appended after the upgrade must keep time order."""
    import json
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from service.audit.chain import GENESIS, append_event, link_hash
    from service.audit.log_key import signing_key
    from service.audit.merkle import HashTree, verify_receipt
    from service.audit.transparency import receipt, verify_log
    from service.config import Settings
    from service.models import AuditEvent

    command.downgrade(alembic_config(database_url), "0010")
    engine = get_engine(database_url)
    start, prev, hashes = datetime(2026, 11, 1, tzinfo=UTC), GENESIS, []
    with engine.begin() as connection:  # as the code of revision 0010 wrote them
        for seq in range(1, 6):
            ts = start + timedelta(seconds=seq * 10 - (15 if seq == 3 else 0))  # event 3: a skewed clock
            body = {"seq": seq, "ts": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                    "actor": "old", "action": "test.event", "subject": f"thing:{seq}", "owner_id": None,
                    "ticket_id": None, "payload": {"i": seq}}
            prev = link_hash(prev, body)
            hashes.append(prev)
            connection.execute(text(
                "INSERT INTO audit_events (seq, ts, actor, action, subject, owner_id, ticket_id, payload, prev_hash, "
                "hash) VALUES (:seq, :ts, 'old', 'test.event', :subject, NULL, NULL, :payload, :prev_hash, :hash)"),
                {"seq": seq, "ts": ts, "subject": f"thing:{seq}", "payload": json.dumps({"i": seq}),
                 "prev_hash": hashes[-2] if seq > 1 else GENESIS, "hash": prev})
        connection.execute(text("UPDATE audit_head SET seq = 5, hash = :hash"), {"hash": prev})
    upgrade(database_url)
    key = signing_key(Settings(data_dir=tmp_path))
    with Session(engine) as session:
        report = verify_log(session, key.public_key())
        assert report.ok, report
        assert report.tree_size == 5 and report.root_hash == HashTree(hashes).root_hex()
        old = receipt(session, session.get(AuditEvent, 2), key)
        append_event(session, actor="new", action="test.event", subject="after", payload={})
        session.commit()
        assert verify_log(session, key.public_key()).ok
    assert verify_receipt(old, key.public_key()).tree_size == 5
