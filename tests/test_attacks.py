"""Attack reports through the API: the paper preset on a QR-signed ticket (every row and column, CSV,
plots, audit), every attack on a locked ticket, resuming after the last saved row, who may attack and
read what, and bad requests."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.attacks.report import COLUMNS
from service.db import session_factory
from service.jobs.runner import execute_job
from service.jobs.service import claim, new_lease_owner
from service.models import AttackReport
from tests.helpers import assert_json_error, register_ok
from verifier.attacks.suite import preset

PNG = b"\x89PNG\r\n\x1a\n"


def _report(client, account, ticket_id: str, body: dict | None = None) -> dict:
    response = client.post(f"/v1/tickets/{ticket_id}/attacks", headers=account.headers,
                           **({"json": body} if body is not None else {}))
    assert response.status_code == 202, response.text
    accepted = response.json()
    job = client.get(f"/v1/jobs/{accepted['job_id']}", headers=account.headers).json()
    assert job["status"] == "succeeded", job
    return client.get(f"/v1/attack-reports/{accepted['id']}", headers=account.headers).json()


def test_the_paper_preset_on_a_signed_ticket(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket, signature="qr")
    report = _report(client, alice, ticket["id"])  # no body: the paper preset
    rows = report["rows"]
    assert [(r["attack"], r["strength"]) for r in rows] == [("none", 0.0)] + preset("paper")
    assert all(list(r) == list(COLUMNS) for r in rows)
    baseline, *attacked = rows
    assert baseline["verdict"] == "match" and baseline["qr_payload_valid"] and baseline["accuracy_change"] is None
    forged = next(r for r in rows if r["attack"] == "forged_key")
    assert forged["status"] == "skipped" and "no key mask" in forged["note"]
    done = [r for r in attacked if r["status"] == "done"]
    assert len(done) == len(attacked) - 1
    for row in done:
        assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["p_value"] <= 1
        assert row["accuracy_change"] == pytest.approx(row["test_accuracy"] - baseline["test_accuracy"])
        assert row["within_fidelity"] == (row["accuracy_change"] >= -0.01)
        assert row["module_p"] is not None and row["qr_decoded"] is not None and row["topology_p"] is not None
        assert row["ownership_proven"] == (row["verdict"] == "match")
    tuned = next(r for r in rows if r["attack"] == "fine_tune")
    assert tuned["verdict"] == "match"  # the mask, hence the code, survives fine-tuning
    summary = report["summary"]
    within = [r for r in done if r["within_fidelity"]]
    assert summary["within_fidelity"] == len(within) and summary["skipped"] == 1
    assert summary["proven_within_fidelity"] == sum(r["ownership_proven"] for r in within)
    assert summary["headline"].startswith("ownership proven for")

    table = list(csv.DictReader(io.StringIO(client.get(
        f"/v1/attack-reports/{report['id']}", params={"format": "csv"}, headers=alice.headers).text)))
    assert len(table) == len(rows) and list(table[0]) == list(COLUMNS)
    assert [(r["attack"], float(r["strength"])) for r in table] == [(r["attack"], r["strength"]) for r in rows]
    assert {"pruning", "add-on", "fine-tuning", "replacement"} <= set(report["plots"])
    for url in report["plots"].values():
        image = client.get(url, headers=alice.headers)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(PNG)
    assert_json_error(client.get(f"/v1/attack-reports/{report['id']}/plots/forgery.png", headers=alice.headers),
                      404)
    events = client.get("/v1/audit", headers=alice.headers, params={"ticket_id": ticket["id"]}).json()["events"]
    actions = [e["action"] for e in events]
    assert actions[-2:] == ["attack.requested", "attack.completed"]
    assert events[-1]["payload"]["within_fidelity"] == summary["within_fidelity"]
    listed = client.get("/v1/attack-reports", headers=alice.headers, params={"ticket_id": ticket["id"]}).json()
    assert [r["id"] for r in listed] == [report["id"]]


FIND = {"arch": "lenet300_100", "dataset": "digits", "seed": 3,
        "hyperparameters": {"rounds": 2, "rate": 0.5, "train": {"epochs": 2}}}
EVERY_ATTACK = [{"name": "fine_tune", "strengths": [1]}, {"name": "dense_fine_tune", "strengths": [1]},
                {"name": "transfer", "strengths": [1]}, {"name": "prune_magnitude", "strengths": [0.1]},
                {"name": "prune_random", "strengths": [0.05]}, {"name": "prune_layer", "strengths": [0.3]},
                {"name": "permutation", "strengths": [0, 0.1]}, {"name": "add_on", "strengths": [0.01]},
                {"name": "replacement", "strengths": [1]}, {"name": "forged_key", "strengths": [1]},
                {"name": "distillation", "strengths": [2]}, {"name": "block_removal", "strengths": [1]},
                {"name": "fine_tune", "strengths": [30]}]


def test_every_attack_on_a_locked_ticket(client, alice):
    job = client.post("/v1/tickets/find", headers=alice.headers, json=FIND).json()
    accepted = client.post("/v1/tickets", headers=alice.headers,
                           data={"name": "found", "from_job": job["job_id"], "signature": "qr"}).json()
    ticket = client.get(f"/v1/tickets/{accepted['id']}", headers=alice.headers).json()
    assert ticket["status"] == "registered" and ticket["signature"] == "qr", ticket
    locked = client.post(f"/v1/tickets/{ticket['id']}/lock", headers=alice.headers, json={"epochs": 1})
    assert client.get(f"/v1/jobs/{locked.json()['job_id']}", headers=alice.headers).json()["status"] == "succeeded"
    lock = client.get(f"/v1/tickets/{ticket['id']}/lock", headers=alice.headers).json()["report"]

    report = _report(client, alice, ticket["id"], {"attacks": EVERY_ATTACK, "budget": {"max_epochs": 20}})
    rows = {(r["attack"], r["strength"]): r for r in report["rows"]}
    assert len(rows) == 15
    skipped = {key: r["note"] for key, r in rows.items() if r["status"] != "done"}
    assert set(skipped) == {("block_removal", 1.0), ("fine_tune", 30.0)}, skipped
    assert "no residual block" in skipped[("block_removal", 1.0)]
    assert "max_epochs" in skipped[("fine_tune", 30.0)]
    transfer = rows[("transfer", 1.0)]
    assert transfer["within_fidelity"] is None and "parity" in transfer["note"]
    assert transfer["trigger_p"] is None and transfer["module_p"] is not None
    forged = rows[("forged_key", 1.0)]
    assert forged["verdict"] is None and forged["accuracy_change"] == pytest.approx(
        forged["test_accuracy"] - lock["accuracy_with_key"])
    assert forged["ownership_proven"] == (not forged["within_fidelity"])
    assert "outputs checked unchanged" in rows[("permutation", 0.0)]["note"]
    assert rows[("permutation", 0.0)]["accuracy_change"] == pytest.approx(0.0)
    assert rows[("permutation", 0.0)]["verdict"] == "match"  # the QR test aligns channels first
    assert report["summary"]["outside_the_bound"] == ["transfer@1"]


def test_a_resumed_attack_job_keeps_the_rows_an_earlier_attempt_saved(settings, alice, model_files):
    external = settings.model_copy(update={"executor": "external"})
    body = {"attacks": [{"name": "prune_magnitude", "strengths": [0.05, 0.1]}]}
    inline = settings.model_copy(update={"executor": "inline"})
    with TestClient(create_app(inline)) as client:
        ticket = register_ok(client, alice.headers, model_files.ticket)
    with TestClient(create_app(external)) as client:
        accepted = client.post(f"/v1/tickets/{ticket['id']}/attacks", headers=alice.headers, json=body).json()
    saved = {"attack": "prune_magnitude", "family": "pruning", "strength": 0.05, "unit": "share of kept weights",
             "status": "done", "note": "from the first attempt"}
    with session_factory(settings.resolved_database_url)() as session:
        report = session.get(AttackReport, accepted["id"])
        report.rows = [dict.fromkeys(COLUMNS) | saved]
        session.commit()
        lease = new_lease_owner()
        assert claim(session, accepted["job_id"], lease_owner=lease, lease_seconds=60)
    assert execute_job(inline, accepted["job_id"], lease) == "succeeded"
    with TestClient(create_app(external)) as client:
        rows = client.get(f"/v1/attack-reports/{accepted['id']}", headers=alice.headers).json()["rows"]
    assert [(r["attack"], r["strength"]) for r in rows] == [("none", 0.0), ("prune_magnitude", 0.05),
                                                            ("prune_magnitude", 0.1)]
    assert rows[1]["note"] == "from the first attempt"  # not run again
    assert rows[2]["status"] == "done" and rows[2]["p_value"] is not None


def test_only_the_owner_attacks_and_reads_reports(client, alice, bob, admin, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    body = {"attacks": [{"name": "prune_magnitude", "strengths": [0.1]}]}
    assert_json_error(client.post(f"/v1/tickets/{ticket['id']}/attacks", headers=bob.headers, json=body), 404)
    assert_json_error(client.post(f"/v1/tickets/{ticket['id']}/attacks", headers=admin.headers, json=body),
                      403, "forbidden")
    report = _report(client, alice, ticket["id"], body)
    url = f"/v1/attack-reports/{report['id']}"
    for path, params in ((url, {}), (url, {"format": "csv"}), (f"{url}/plots/pruning.png", {})):
        assert client.get(path, headers=alice.headers, params=params).status_code == 200
        assert_json_error(client.get(path, headers=bob.headers, params=params), 404)
    assert client.get("/v1/attack-reports", headers=bob.headers).json() == []
    assert client.get(url, headers=admin.headers).status_code == 200  # admins see all


@pytest.mark.parametrize(("body", "field"), [
    ({"attacks": [{"name": "melt"}]}, "name"),
    ({"attacks": [{"name": "prune_magnitude", "strengths": [1.5]}]}, "attacks"),
    ({"attacks": [{"name": "fine_tune", "strengths": [2.5]}]}, "attacks"),
    ({"preset": "paper", "attacks": [{"name": "fine_tune"}]}, "preset"),
    ({"preset": "everything"}, "preset"),
    ({"fidelity_bound": 0}, "fidelity_bound"),
    ({"data_fraction": 2}, "data_fraction"),
    ({"budget": {"max_epochs": 0}}, "max_epochs"),
    ({"data": "cifar10"}, "data"),
    ({"data": "nothing-like-it"}, "nothing-like-it"),
])
def test_bad_attack_requests_are_422_naming_the_problem(client, alice, model_files, body, field):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    error = assert_json_error(client.post(f"/v1/tickets/{ticket['id']}/attacks", headers=alice.headers, json=body),
                              422)
    assert field in error["message"]


def test_the_attack_list_describes_every_attack(client, alice):
    attacks = client.get("/v1/attacks", headers=alice.headers).json()
    assert {a["name"] for a in attacks} == {a for a, _ in preset("full")}
    assert all(a["min_strength"] <= min(a["full"]) and max(a["full"]) <= a["max_strength"] for a in attacks)


def test_transfer_to_an_uploaded_task_with_as_many_classes(client, alice, model_files):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.random((200, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 10, 200),
             x_test=rng.random((50, 1, 8, 8), dtype=np.float32), y_test=rng.integers(0, 10, 50))
    dataset = client.post("/v1/datasets", headers=alice.headers, data={"name": "noise"},
                          files={"file": ("noise.npz", buffer.getvalue(), "application/octet-stream")}).json()
    ticket = register_ok(client, alice.headers, model_files.ticket)
    report = _report(client, alice, ticket["id"], {"attacks": [{"name": "transfer", "strengths": [1]}],
                                                    "transfer_dataset": dataset["id"]})
    row = report["rows"][1]
    assert row["status"] == "done" and row["within_fidelity"] is None and "accuracy on" in row["note"]
    assert row["accuracy_change"] is None and row["topology_p"] is not None
