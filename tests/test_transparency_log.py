"""The transparency log (issue 15): signed tree heads, proofs and receipts, and every rewrite of the
database that the plain hash chain let through, caught against a checkpoint taken before it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import service.cli as cli
from service.app import create_app
from service.audit import chain
from service.audit.chain import GENESIS, HEAD_ID, append_event, event_body, link_hash
from service.audit.log_key import load_public_key
from service.audit.merkle import (
    HashTree,
    TreeHead,
    VerificationFailed,
    verify_consistency,
    verify_inclusion,
    verify_receipt,
)
from service.client import TicketGuardClient
from service.config import get_settings
from service.db import get_engine, session_factory
from service.models import AuditEvent, AuditHead, AuditTreeHead
from tests.helpers import assert_json_error, register_ok

EVENTS = 12  # events in the log before a tamper: the fixtures' owners and these


def _add_events(settings, count: int) -> None:
    with session_factory(settings.resolved_database_url)() as session:
        for i in range(count):
            append_event(session, actor="test", action="test.event", subject=f"thing:{i}", payload={"i": i})
        session.commit()


def _size(settings) -> int:
    with session_factory(settings.resolved_database_url)() as session:
        return session.get(AuditHead, HEAD_ID).seq


@contextmanager
def _behind_the_api(url: str) -> Iterator[Session]:
    """A session on the database with the append-only triggers off: what someone who can write the
    database (the server's disk, a stolen admin password) has."""
    engine = get_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            for table in ("audit_events", "audit_tree_heads"):
                connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            for table in ("audit_events", "audit_tree_heads"):
                for verb in ("update", "delete"):
                    connection.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{verb}"))
        session = Session(bind=connection)
        yield session
        session.commit()
        if connection.dialect.name == "postgresql":
            for table in ("audit_events", "audit_tree_heads"):
                connection.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        connection.commit()


def _rechain(session: Session) -> None:
    """Recompute every link and the head, as a careful forger would, and drop the signed tree heads the
    database holds (they would contradict the rewrite)."""
    session.flush()
    prev = GENESIS
    last = 0
    for event in session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars():
        event.prev_hash, event.hash = prev, link_hash(prev, event_body(event))
        prev, last = event.hash, event.seq
    session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=last, hash=prev))
    session.execute(delete(AuditTreeHead))


def _drop_tail(session: Session) -> None:
    last = session.get(AuditHead, HEAD_ID).seq
    session.execute(delete(AuditEvent).where(AuditEvent.seq > last - 3))


def _edit_middle(session: Session) -> None:
    event = session.get(AuditEvent, 8)
    event.payload = {"name": "forged"}


def _back_date_at_end(session: Session) -> None:
    last = session.get(AuditHead, HEAD_ID).seq
    session.add(AuditEvent(seq=last + 1, ts=datetime(2025, 1, 1, tzinfo=UTC), actor="mallory",
                           action="ticket.registered", subject="ticket:" + "f" * 32, owner_id=None,
                           ticket_id="f" * 32, payload={}, prev_hash="", hash=""))


def _back_date_at_start(session: Session) -> None:
    """The same forged registration slipped in before every event, the rest renumbered: the times stay
    in order, so only a tree head taken before it can tell."""
    session.execute(text("UPDATE audit_events SET seq = seq + 1000000"))
    session.execute(text("UPDATE audit_events SET seq = seq - 999999"))
    session.add(AuditEvent(seq=1, ts=datetime(2025, 1, 1, tzinfo=UTC), actor="mallory",
                           action="ticket.registered", subject="ticket:" + "f" * 32, owner_id=None,
                           ticket_id="f" * 32, payload={}, prev_hash="", hash=""))


def _wipe(session: Session) -> None:
    session.execute(delete(AuditEvent))


TAMPERS: dict[str, Callable[[Session], None]] = {
    "last 3 events deleted, head moved back": _drop_tail,
    "event 8 edited, every later hash and the head recomputed": _edit_middle,
    "back-dated registration appended": _back_date_at_end,
    "back-dated registration inserted first, the rest renumbered": _back_date_at_start,
    "everything deleted, head reset": _wipe,
}


@pytest.fixture
def cli_env(settings, monkeypatch) -> Iterator[CliRunner]:
    """`ticketguard` run against the test's database and data directory (its log key)."""
    monkeypatch.setenv("TICKETGUARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TICKETGUARD_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TICKETGUARD_SECRET_KEY", "test-secret")
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_every_rewrite_is_caught_against_a_checkpoint_taken_before_it(settings, alice, cli_env, tmp_path, tamper):
    _add_events(settings, EVENTS - _size(settings))
    checkpoint = tmp_path / "checkpoint.json"
    taken = cli_env.invoke(cli.app, ["audit", "checkpoint", "-o", str(checkpoint)])
    assert taken.exit_code == 0, taken.output
    _add_events(settings, 2)  # the log goes on after the checkpoint
    intact = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(checkpoint)])
    assert intact.exit_code == 0 and "intact" in intact.output and f"checkpoint of {EVENTS}" in intact.output, \
        intact.output

    with _behind_the_api(settings.resolved_database_url) as session:
        TAMPERS[tamper](session)
        _rechain(session)

    caught = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(checkpoint)])
    assert caught.exit_code == 1 and "broken" in caught.output, caught.output


def test_a_rewrite_contradicts_the_tree_heads_the_log_signed_before_it(client, settings, alice):
    """Without an outside checkpoint, a forger who leaves the stored heads in place is caught by them."""
    _add_events(settings, 5)
    assert client.get("/v1/audit/tree-head", headers=alice.headers).status_code == 200
    with _behind_the_api(settings.resolved_database_url) as session:
        session.get(AuditEvent, 3).payload = {"forged": True}
        session.flush()
        prev = GENESIS
        for event in session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars():
            event.prev_hash, event.hash = prev, link_hash(prev, event_body(event))
            prev = event.hash
        session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(hash=prev))
    report = client.get("/v1/audit/verify", headers=alice.headers).json()
    assert report["ok"] is False and "stored tree head" in report["reason"], report


def test_back_dating_is_caught_even_without_a_checkpoint(client, settings, alice):
    with _behind_the_api(settings.resolved_database_url) as session:
        _back_date_at_end(session)
        _rechain(session)
    report = client.get("/v1/audit/verify", headers=alice.headers).json()
    assert report["ok"] is False and "back-dated" in report["reason"], report


def test_appends_never_go_back_in_time(settings, alice, monkeypatch):
    """A clock that steps back (or another machine's) cannot make a later event look earlier."""
    _add_events(settings, 1)
    monkeypatch.setattr(chain, "utcnow", lambda: datetime.now(UTC) - timedelta(days=365))
    _add_events(settings, 1)
    with session_factory(settings.resolved_database_url)() as session:
        times = session.execute(select(AuditEvent.ts).order_by(AuditEvent.seq)).scalars().all()
    assert times == sorted(times)


def test_proofs_verify_between_every_pair_of_tree_heads(client, settings, alice):
    public = load_public_key(client.get("/v1/audit/public-key").json()["public_key_pem"])
    heads = []
    for _ in range(4):
        _add_events(settings, 3)
        head = TreeHead.from_dict(client.get("/v1/audit/tree-head", headers=alice.headers).json())
        head.verify(public)
        heads.append(head)
    events = client.get("/v1/audit", headers=alice.headers).json()["events"]
    assert [h.tree_size for h in heads] == [5, 8, 11, 14]
    for older in heads:
        for newer in heads:
            if older.tree_size <= newer.tree_size:
                proof = client.get("/v1/audit/proofs/consistency", headers=alice.headers,
                                   params={"first": older.tree_size, "second": newer.tree_size}).json()["proof"]
                verify_consistency(older, newer, proof)
    # a head for a tree that is not a prefix of the log is refused by the proof
    forged = TreeHead(heads[0].tree_size, HashTree(["ab" * 32] * heads[0].tree_size).root_hex(),
                      heads[0].timestamp, heads[0].key_id)
    proof = client.get("/v1/audit/proofs/consistency", headers=alice.headers,
                       params={"first": forged.tree_size, "second": heads[-1].tree_size}).json()["proof"]
    with pytest.raises(VerificationFailed, match="does not extend"):
        verify_consistency(forged, heads[-1], proof)
    for event in events:  # alice's own events: her owner and key creation
        found = client.get(f"/v1/audit/proofs/inclusion/{event['seq']}", headers=alice.headers,
                           params={"tree_size": heads[-1].tree_size}).json()
        verify_inclusion(found["event"]["hash"], event["seq"], heads[-1], found["proof"])


def test_proof_requests_out_of_range_and_other_owners_events_are_refused(client, settings, alice, bob):
    size = _size(settings)
    for params in ({"first": 2, "second": 1}, {"first": 0, "second": size + 1}, {"first": -1, "second": 1}):
        assert_json_error(client.get("/v1/audit/proofs/consistency", headers=alice.headers, params=params), 422)
    assert_json_error(client.get("/v1/audit/proofs/inclusion/1", headers=alice.headers,
                                 params={"tree_size": size + 5}), 422)
    bobs = client.get("/v1/audit", headers=bob.headers).json()["events"][0]["seq"]
    assert_json_error(client.get(f"/v1/audit/receipts/{bobs}", headers=alice.headers), 404, "event_not_found")
    assert_json_error(client.get(f"/v1/audit/proofs/inclusion/{bobs}", headers=alice.headers,
                                 params={"tree_size": size}), 404, "event_not_found")
    assert_json_error(client.get(f"/v1/audit/receipts/{2**70}", headers=alice.headers), 404)
    assert client.get("/v1/audit/tree-head").status_code == 401
    assert client.get("/v1/audit/public-key").status_code == 200


def _remote(client: TestClient, key: str | None) -> Callable[..., TicketGuardClient]:
    """`TicketGuardClient(url, key)` as the CLI builds it, talking to the test app instead of a socket."""
    def build(url: str, api_key: str | None, **_: object) -> TicketGuardClient:
        remote = TicketGuardClient.__new__(TicketGuardClient)
        remote.http = TestClient(client.app, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        return remote
    return build


def test_a_registration_receipt_verifies_offline_and_not_after_a_rewrite(client, settings, alice, bob, model_files,
                                                                           cli_env, tmp_path, monkeypatch):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    assert_json_error(client.get(f"/v1/tickets/{ticket['id']}/receipt", headers=bob.headers), 404)
    found = client.get(f"/v1/tickets/{ticket['id']}/receipt", headers=alice.headers)
    assert found.status_code == 200, found.text
    receipt = found.json()
    assert receipt["event"]["action"] == "ticket.registered" and receipt["event"]["ticket_id"] == ticket["id"]
    pem = client.get("/v1/audit/public-key").json()["public_key_pem"]
    verify_receipt(receipt, load_public_key(pem))  # offline: nothing but the key

    saved, key_file = tmp_path / "receipt.json", tmp_path / "log.pem"
    saved.write_text(json.dumps(receipt))
    key_file.write_text(pem)
    runner = cli_env
    ok = runner.invoke(cli.app, ["receipt", "verify", str(saved), "--public-key", str(key_file)])
    assert ok.exit_code == 0 and "receipt verifies" in ok.output, ok.output

    for name, change in (("payload", lambda r: r["event"]["payload"].update(name="someone else's")),
                         ("time", lambda r: r["event"].update(ts="2025-01-01T00:00:00.000000Z")),
                         ("root", lambda r: r["tree_head"].update(root_hash="00" * 32)),
                         ("index", lambda r: r.update(leaf_index=r["leaf_index"] + 1))):
        forged = json.loads(json.dumps(receipt))
        change(forged)
        with pytest.raises(VerificationFailed):
            verify_receipt(forged, load_public_key(pem))
        altered = tmp_path / f"receipt-{name}.json"
        altered.write_text(json.dumps(forged))
        refused = runner.invoke(cli.app, ["receipt", "verify", str(altered), "--public-key", str(key_file)])
        assert refused.exit_code == 1 and "does not verify" in refused.output, (name, refused.output)

    # against the live log: fine now, refused once the log is rewritten before the receipt's event
    monkeypatch.setattr(cli, "TicketGuardClient", _remote(client, alice.key))
    live = runner.invoke(cli.app, ["receipt", "verify", str(saved), "--public-key", str(key_file),
                                   "--url", "http://test", "--api-key", alice.key])
    assert live.exit_code == 0 and "extends it" in live.output, live.output
    with _behind_the_api(settings.resolved_database_url) as session:
        session.get(AuditEvent, 2).payload = {"forged": True}
        _rechain(session)
    rewritten = runner.invoke(cli.app, ["receipt", "verify", str(saved), "--public-key", str(key_file),
                                        "--url", "http://test", "--api-key", alice.key])
    assert rewritten.exit_code == 1 and "does not extend" in rewritten.output, rewritten.output
    assert runner.invoke(cli.app, ["receipt", "verify", str(saved), "--public-key", str(key_file)]).exit_code == 0


def test_a_remote_checkpoint_check_uses_the_servers_consistency_proof(client, settings, alice, cli_env, tmp_path,
                                                                      monkeypatch):
    _add_events(settings, 4)
    monkeypatch.setattr(cli, "TicketGuardClient", _remote(client, alice.key))
    remote = ["--url", "http://test", "--api-key", alice.key]
    checkpoint = tmp_path / "checkpoint.json"
    assert cli_env.invoke(cli.app, ["audit", "checkpoint", "-o", str(checkpoint), *remote]).exit_code == 0
    _add_events(settings, 3)
    ok = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(checkpoint), *remote])
    assert ok.exit_code == 0 and "extends the checkpoint of 6" in ok.output, ok.output
    with _behind_the_api(settings.resolved_database_url) as session:
        _edit_middle(session)  # event 8 is after the checkpoint: still consistent with it ...
        session.get(AuditEvent, 4).payload = {"forged": True}  # ... but event 4 is not
        _rechain(session)
    caught = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(checkpoint), *remote])
    assert caught.exit_code == 1 and "does not extend" in caught.output, caught.output


def test_a_checkpoint_from_another_log_or_malformed_is_refused(settings, alice, cli_env, tmp_path):
    _add_events(settings, 2)
    checkpoint = tmp_path / "checkpoint.json"
    assert cli_env.invoke(cli.app, ["audit", "checkpoint", "-o", str(checkpoint)]).exit_code == 0
    head = json.loads(checkpoint.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps(head | {"key_id": "ab" * 32}))
    refused = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(other)])
    assert refused.exit_code == 1 and "not this log's key" in refused.output, refused.output
    resigned = tmp_path / "resigned.json"
    resigned.write_text(json.dumps(head | {"tree_size": head["tree_size"] - 1}))
    refused = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(resigned)])
    assert refused.exit_code == 1 and "signature" in refused.output, refused.output
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(garbage)]).exit_code == 2


def test_the_log_key_lives_in_a_file_outside_the_database(settings, tmp_path):
    key_file = Path(settings.resolved_log_key_file)
    from service.audit.log_key import signing_key

    first = signing_key(settings)
    assert key_file.exists() and key_file.stat().st_mode & 0o077 == 0
    assert signing_key(settings).public_key().public_bytes_raw() == first.public_key().public_bytes_raw()
    elsewhere = settings.model_copy(update={"log_key_file": tmp_path / "keys" / "log.pem"})
    assert signing_key(elsewhere).public_key().public_bytes_raw() != first.public_key().public_bytes_raw()


def test_the_server_writes_checkpoints_to_a_file_witness_that_later_catch_a_rewrite(settings, alice, cli_env,
                                                                                   tmp_path):
    from tests.helpers import wait_for

    folder = tmp_path / "witness"
    witnessed = settings.model_copy(update={"audit_witness_url": f"file://{folder}", "audit_witness_interval": 0.2})
    with TestClient(create_app(witnessed)):
        first = wait_for(lambda: sorted(folder.glob("checkpoint-*.json")), "a first checkpoint", timeout=60)
        _add_events(settings, 3)
        size = _size(settings)
        wait_for(lambda: any(json.loads(p.read_text())["tree_size"] == size for p in folder.glob("*.json")),
                 "a checkpoint of the grown log", timeout=60)
    files = sorted(folder.glob("checkpoint-*.json"))
    sizes = [json.loads(p.read_text())["tree_size"] for p in files]
    assert len(sizes) == len(set(sizes)), sizes  # an unchanged log is not written again
    assert len(first) >= 1 and sizes[-1] == size
    ok = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(files[-1])])
    assert ok.exit_code == 0, ok.output
    with _behind_the_api(settings.resolved_database_url) as session:
        session.get(AuditEvent, 3).payload = {"forged": True}
        _rechain(session)
    caught = cli_env.invoke(cli.app, ["audit", "verify", "--checkpoint", str(files[-1])])
    assert caught.exit_code == 1 and "broken" in caught.output, caught.output


def test_cli_register_keeps_the_receipt_and_alerts_lists(client, alice, model_files, cli_env, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "TicketGuardClient", _remote(client, alice.key))
    remote = ["--url", "http://test", "--api-key", alice.key]
    saved = tmp_path / "receipt.json"
    registered = cli_env.invoke(cli.app, ["register", str(model_files.ticket), "--arch", "lenet300_100",
                                          "--dataset", "digits", "--name", "mine", "--signature", "none",
                                          "--receipt", str(saved), *remote])
    assert registered.exit_code == 0 and "receipt (event" in registered.output, registered.output
    key_file = tmp_path / "log.pem"
    assert cli_env.invoke(cli.app, ["audit", "public-key", "-o", str(key_file), "--url", "http://test"]).exit_code == 0
    checked = cli_env.invoke(cli.app, ["receipt", "verify", str(saved), "--public-key", str(key_file)])
    assert checked.exit_code == 0 and "ticket.registered" in checked.output, checked.output
    listed = cli_env.invoke(cli.app, ["alerts", "--json", *remote])
    assert listed.exit_code == 0 and [e["action"] for e in json.loads(listed.output)["events"]] == ["api_key.created"]


def test_a_lost_log_key_is_an_error_not_a_new_key(client, settings, alice, cli_env, tmp_path):
    """Once the log has signed a head, a missing key file is reported (restore it); a fresh key would make
    every earlier head and receipt look forged. The log still verifies with the public key alone."""
    pem = tmp_path / "log.pem"
    pem.write_text(client.get("/v1/audit/public-key").json()["public_key_pem"])
    assert client.get("/v1/audit/tree-head", headers=alice.headers).status_code == 200
    settings.resolved_log_key_file.unlink()
    assert_json_error(client.get("/v1/audit/tree-head", headers=alice.headers), 503, "log_key_missing")
    assert not settings.resolved_log_key_file.exists()
    refused = cli_env.invoke(cli.app, ["audit", "verify"])
    assert refused.exit_code == 2 and "restore" in refused.output, refused.output
    ok = cli_env.invoke(cli.app, ["audit", "verify", "--public-key", str(pem)])
    assert ok.exit_code == 0 and "intact" in ok.output, ok.output
