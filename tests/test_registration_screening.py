"""First to register wins (issue 15): a ticket that derives from another owner's earlier ticket is refused
at registration and that owner alerted; the same owner's derived ticket is linked; a 1:N search names
the earlier ticket; two racing registrations cannot both win."""

from __future__ import annotations

from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from service.app import create_app
from service.db import session_factory
from service.jobs import runner
from service.jobs.handlers import HANDLERS, Handler
from service.jobs.service import claim, new_lease_owner
from service.models import AuditEvent, Ticket
from service.tickets.service import REGISTER_KIND
from tests.helpers import register, register_ok, verify_ok
from verifier.attacks import fine_tune
from verifier.data import load_dataset
from verifier.models import build_model


def _fine_tuned(published: bytes, *, epochs: int = 1) -> bytes:
    """What a thief does with a published ticket: a little fine-tuning with its mask kept."""
    state = load_safetensors(published)
    data = load_dataset("digits")
    model = build_model("lenet300_100", data.input_shape, data.num_classes)
    model.load_state_dict(state)
    mask = {name: state[name] != 0 for name in ("fc1.weight", "fc2.weight", "fc3.weight")}
    fine_tune(model, mask, data.x_train, data.y_train, epochs=epochs, lr=0.01, seed=3)
    return save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()})


def _alerts(client: TestClient, account) -> list[dict]:
    response = client.get("/v1/alerts", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["events"]


def test_a_thief_who_registers_second_is_refused_and_the_owner_alerted(client, alice, bob, model_files):
    original = register_ok(client, alice.headers, model_files.ticket, signature="qr")
    published = client.get(f"/v1/tickets/{original['id']}/model", headers=alice.headers).content
    copy = _fine_tuned(published)

    accepted = register(client, bob.headers, copy, signature="none", name="definitely mine")
    assert accepted.status_code == 202, accepted.text
    refused = client.get(f"/v1/tickets/{accepted.json()['id']}", headers=bob.headers).json()
    assert refused["status"] == "refused" and refused["error_code"] == "derives_from_registered_ticket", refused
    assert original["id"] not in str(refused) and alice.name not in str(refused) and alice.id not in str(refused)
    job = client.get(f"/v1/jobs/{refused['job_id']}", headers=bob.headers).json()
    assert job["result"]["screening"]["refused"] is True and original["id"] not in str(job["result"])
    assert client.get("/v1/tickets", headers=bob.headers).json()["tickets"][0]["status"] == "refused"

    alerts = _alerts(client, alice)
    refusal = [a for a in alerts if a["action"] == "alert.derived_registration_refused"]
    assert len(refusal) == 1 and refusal[0]["ticket_id"] == original["id"], alerts
    registrant = refusal[0]["payload"]["registrant"]
    assert registrant.startswith("owner-") and bob.id not in str(refusal) and bob.name not in str(refusal)
    assert not [a for a in _alerts(client, bob) if a["action"].startswith("alert.")]

    # a 1:N search of the copy, by the thief too, names the first registrant's ticket
    search = verify_ok(client, bob.headers, _write(copy, model_files.ticket.parent / "copy.safetensors"))
    assert search["verdict"] == "match" and search["ticket_id"] == original["id"], search
    matched = [a for a in _alerts(client, alice) if a["action"] == "alert.ticket_matched"]
    assert len(matched) == 1 and matched[0]["payload"]["asker"] == registrant, matched
    assert matched[0]["payload"]["p_value"] == search["p_value"]
    # the owner's own searches do not alert her
    verify_ok(client, alice.headers, model_files.ticket.parent / "copy.safetensors")
    assert len([a for a in _alerts(client, alice) if a["action"] == "alert.ticket_matched"]) == 1


def _write(content: bytes, path):
    path.write_bytes(content)
    return path


def test_the_same_owners_derived_ticket_is_registered_and_linked(client, alice, bob, model_files):
    first = register_ok(client, alice.headers, model_files.ticket)
    second = register_ok(client, alice.headers, model_files.stolen, name="pruned further")
    assert second["derived_from"] == first["id"] and first["derived_from"] is None
    events = client.get("/v1/audit", headers=alice.headers, params={"ticket_id": second["id"]}).json()["events"]
    registered = [e for e in events if e["action"] == "ticket.registered"]
    assert registered[0]["payload"]["derived_from"] == first["id"]
    # a search of the derived copy names the first registration; the later one is its lineage
    search = verify_ok(client, bob.headers, model_files.stolen)
    assert search["verdict"] == "match" and search["ticket_id"] == first["id"]
    assert [(t["ticket_id"], t["derived_from"]) for t in search["evidence"]["lineage"]] == \
        [(first["id"], None), (second["id"], first["id"])]
    # an independent ticket of another owner is registered, linked to nothing, and alerts no one
    other = register_ok(client, bob.headers, model_files.independent)
    assert other["derived_from"] is None
    # alice hears of bob's search, once for each of her tickets it matched, and of nothing else
    alerts = _alerts(client, alice)
    assert [a["action"] for a in alerts] == ["api_key.created", "alert.ticket_matched", "alert.ticket_matched"]
    assert {a["ticket_id"] for a in alerts[1:]} == {first["id"], second["id"]}


def test_two_racing_registrations_cannot_both_win(settings, alice, bob, model_files, monkeypatch):
    """Bob's copy is screened while Alice's original is still being registered (it finds nothing); Alice's
    registration commits first; Bob's final transaction sees it and runs his job again: refused."""
    external = settings.model_copy(update={"executor": "external"})
    with TestClient(create_app(external)) as client:
        alices = register(client, alice.headers, model_files.ticket).json()
        bobs = register(client, bob.headers, model_files.stolen, signature="none").json()
    leases = {}
    with session_factory(settings.resolved_database_url)() as session:
        for accepted in (alices, bobs):
            leases[accepted["job_id"]] = new_lease_owner()
            assert claim(session, accepted["job_id"], lease_owner=leases[accepted["job_id"]], lease_seconds=600)

    real, runs = HANDLERS[REGISTER_KIND], []

    def body(ctx):
        result = real.run(ctx)
        runs.append(ctx.params["ticket_id"])
        if ctx.params["ticket_id"] == bobs["id"] and runs.count(bobs["id"]) == 1:
            # Alice's registration wins the race while Bob's screen result is in flight
            assert runner.execute_job(settings, alices["job_id"], leases[alices["job_id"]]) == "succeeded"
        return result

    monkeypatch.setitem(HANDLERS, REGISTER_KIND, Handler(body, real.finish))
    assert runner.execute_job(settings, bobs["job_id"], leases[bobs["job_id"]]) == "succeeded"
    assert runs.count(bobs["id"]) == 2  # the first screen saw no registered ticket; the second saw Alice's
    with session_factory(settings.resolved_database_url)() as session:
        assert session.get(Ticket, alices["id"]).status == "registered"
        assert session.get(Ticket, bobs["id"]).status == "refused"
        actions = [e.action for e in session.query(AuditEvent).order_by(AuditEvent.seq)]
    assert actions.count("ticket.registered") == 1 and "alert.derived_registration_refused" in actions


def test_an_honest_same_initialisation_ticket_is_not_refused(client, alice, bob, tmp_path):
    """Two owners who prune one public initialisation with their own recipes: the second is registered
    (its white-box tests are withheld as `shares_initialisation`), not refused."""
    from verifier.tickets import find_imp_ticket, save_ticket

    data = load_dataset("digits")
    paths = []
    for name, lr in (("a", 0.05), ("b", 0.1)):
        ticket = find_imp_ticket("lenet300_100", data, seed=0, rounds=2, rate=0.5, epochs=3, lr=lr)
        path = tmp_path / f"{name}.safetensors"
        save_ticket(ticket, path)
        plain = tmp_path / f"{name}-plain.safetensors"
        plain.write_bytes(save_safetensors({k: v.contiguous() for k, v in ticket.state.items()}))
        paths.append(plain)
    register_ok(client, alice.headers, paths[0])
    second = register_ok(client, bob.headers, paths[1])
    assert second["status"] == "registered" and second["initialisation"].startswith("public")
    screened = client.get(f"/v1/jobs/{second['job_id']}", headers=bob.headers).json()["result"]["screening"]
    assert screened["compared"] == 1 and screened["refused"] is False  # compared, and let through
    assert not [a for a in _alerts(client, alice) if a["action"].startswith("alert.")]


def test_refusal_reveals_nothing_through_io(client, alice, bob, model_files):
    """A refused ticket is not in the registry: nothing to download, no receipt, never a search's answer."""
    register_ok(client, alice.headers, model_files.ticket)
    refused = register(client, bob.headers, model_files.stolen, signature="none").json()
    ticket = client.get(f"/v1/tickets/{refused['id']}", headers=bob.headers).json()
    assert ticket["status"] == "refused"
    assert client.get(f"/v1/tickets/{refused['id']}/model", headers=bob.headers).status_code in (404, 409)
    assert client.get(f"/v1/tickets/{refused['id']}/receipt", headers=bob.headers).status_code == 409
    search = verify_ok(client, bob.headers, model_files.stolen)  # the registry holds only Alice's ticket
    assert search["verdict"] == "match" and search["ticket_id"] != refused["id"]


def test_registry_screen_finds_and_marks_tickets_registered_before_screening(client, settings, alice, bob,
                                                                              model_files, monkeypatch):
    from typer.testing import CliRunner

    import service.cli as cli
    from service.config import get_settings
    from service.tickets import screening

    monkeypatch.setattr(screening, "screen_registration", lambda ctx, **_: screening.Screening(log_size=10**9))
    original = register_ok(client, alice.headers, model_files.ticket)
    own = register_ok(client, alice.headers, model_files.stolen, name="alice's own variant")
    thief = register_ok(client, bob.headers, model_files.stolen, name="bob's")
    independent = register_ok(client, bob.headers, model_files.independent)
    assert own["derived_from"] is None and thief["status"] == "registered"  # as before screening existed
    monkeypatch.undo()

    monkeypatch.setenv("TICKETGUARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TICKETGUARD_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TICKETGUARD_SECRET_KEY", "test-secret")
    monkeypatch.setenv("TICKETGUARD_EXECUTOR", "inline")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        report = runner.invoke(cli.app, ["registry", "screen"])
        assert report.exit_code == 1 and "1 derive from another owner" in report.output, report.output
        assert client.get(f"/v1/tickets/{thief['id']}", headers=bob.headers).json()["status"] == "registered"
        marked = runner.invoke(cli.app, ["registry", "screen", "--mark"])
        assert marked.exit_code == 0, marked.output
    finally:
        get_settings.cache_clear()
    assert client.get(f"/v1/tickets/{thief['id']}", headers=bob.headers).json()["status"] == "refused"
    assert client.get(f"/v1/tickets/{thief['id']}/receipt", headers=bob.headers).status_code == 409
    assert client.get(f"/v1/tickets/{own['id']}", headers=alice.headers).json()["derived_from"] == original["id"]
    assert client.get(f"/v1/tickets/{independent['id']}", headers=bob.headers).json()["status"] == "registered"
    alerts = _alerts(client, alice)
    refusals = [a for a in alerts if a["action"] == "alert.derived_registration_refused"]
    # one alert per earlier ticket the copy derives from (her original and her own variant)
    assert {a["payload"]["refused_ticket_id"] for a in refusals} == {thief["id"]}
    assert {a["ticket_id"] for a in refusals} == {original["id"], own["id"]}
    search = verify_ok(client, bob.headers, model_files.stolen)
    assert search["verdict"] == "match" and search["owner"] == "alice"
