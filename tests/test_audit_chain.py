"""The audit chain: append-only in the database, tampering named by the verification."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from service.app import create_app
from service.audit.chain import GENESIS, link_hash
from service.cli import app as cli_app
from service.db import get_engine, session_factory
from service.models import Job
from tests.helpers import register, register_ok


def _tamper(url: str, sql: str) -> None:
    """Change audit rows behind the API's back, switching the append-only triggers off to do it."""
    with get_engine(url).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            connection.execute(text(sql))
            connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
            connection.execute(text("DROP TRIGGER audit_events_no_delete"))
            connection.execute(text(sql))


@pytest.mark.parametrize("sql", ["UPDATE audit_events SET actor = 'mallory' WHERE seq = 2",
                                 "DELETE FROM audit_events WHERE seq = 1"])
def test_database_refuses_update_and_delete(settings, alice, sql):
    engine = get_engine(settings.resolved_database_url)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(sql))


def test_hashes_recompute_from_the_api_json_alone(client, alice, admin, model_files):
    register_ok(client, alice.headers, model_files.ticket)
    events = client.get("/v1/audit", headers=admin.headers).json()["events"]
    assert any(e["owner_id"] == alice.id for e in events) and any(e["ticket_id"] for e in events)
    prev_hash = GENESIS
    for event in events:
        body = {k: event[k] for k in ("seq", "actor", "action", "subject", "owner_id", "ticket_id", "payload")}
        ts = datetime.fromisoformat(event["ts"])
        body["ts"] = ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert event["prev_hash"] == prev_hash
        assert link_hash(prev_hash, body) == event["hash"], event
        prev_hash = event["hash"]


@pytest.mark.parametrize("status", ["queued", "running"])
def test_cancel_event_records_the_status_before_cancelling(settings, alice, model_files, status):
    with TestClient(create_app(settings.model_copy(update={"executor": "external"}))) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
        with session_factory(settings.resolved_database_url)() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=status))
            session.commit()
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=alice.headers).status_code == 200
        event = client.get("/v1/audit", headers=alice.headers).json()["events"][-1]
    assert event["action"] == "job.cancelled" and event["payload"]["status_at_cancel"] == status


def test_tampered_payload_is_named(client, settings, alice, model_files):
    register_ok(client, alice.headers, model_files.ticket)
    assert client.get("/v1/audit/verify", headers=alice.headers).json()["ok"] is True
    _tamper(settings.resolved_database_url,
            "UPDATE audit_events SET payload = '{\"name\": \"forged\"}' WHERE seq = 3")
    report = client.get("/v1/audit/verify", headers=alice.headers).json()
    assert report["ok"] is False and report["first_broken_seq"] == 3
    assert "hash" in report["reason"]


def test_removed_event_is_named(client, settings, alice, bob):
    _tamper(settings.resolved_database_url, "DELETE FROM audit_events WHERE seq = 2")
    report = client.get("/v1/audit/verify", headers=alice.headers).json()
    assert report["ok"] is False and report["first_broken_seq"] == 2


def test_removed_tail_is_detected(client, settings, alice, bob):
    _tamper(settings.resolved_database_url, "DELETE FROM audit_events WHERE seq = 4")
    report = client.get("/v1/audit/verify", headers=alice.headers).json()
    assert report["ok"] is False and report["first_broken_seq"] == 4


def test_cli_audit_verify(settings, alice, monkeypatch):
    monkeypatch.setenv("TICKETGUARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TICKETGUARD_DATABASE_URL", settings.resolved_database_url)
    from service.config import get_settings
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        ok = runner.invoke(cli_app, ["audit", "verify"])
        assert ok.exit_code == 0 and "intact" in ok.output and "2 events" in ok.output
        _tamper(settings.resolved_database_url, "UPDATE audit_events SET action = 'x' WHERE seq = 1")
        broken = runner.invoke(cli_app, ["audit", "verify"])
        assert broken.exit_code == 1 and "event 1" in broken.output
    finally:
        get_settings.cache_clear()
