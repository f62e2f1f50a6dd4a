"""Key masks (scheme V1) through the API: lock a found ticket, read the gap report, download the locked
ticket; who may lock what, and what cannot be locked."""

from __future__ import annotations

import pytest
from safetensors.torch import load as load_safetensors

from tests.helpers import assert_json_error, register_ok, upload

# no seed: the finder draws one, so the ticket's initialisation is private and a white-box match counts
FIND = {"arch": "lenet300_100", "dataset": "digits",
        "hyperparameters": {"rounds": 2, "rate": 0.5, "train": {"epochs": 2}}}


def _found_and_registered(client, account) -> dict:
    job = client.post("/v1/tickets/find", headers=account.headers, json=FIND).json()
    response = client.post("/v1/tickets", headers=account.headers,
                           data={"name": "found", "from_job": job["job_id"], "signature": "fingerprint"})
    assert response.status_code == 202, response.text
    ticket = client.get(f"/v1/tickets/{response.json()['id']}", headers=account.headers).json()
    assert ticket["status"] == "registered", ticket
    return ticket


def test_lock_splits_off_a_key_and_reports_the_gap(client, alice, bob):
    ticket = _found_and_registered(client, alice)
    url = f"/v1/tickets/{ticket['id']}"
    assert_json_error(client.get(f"{url}/lock", headers=alice.headers), 404, "not_locked")
    accepted = client.post(f"{url}/lock", headers=alice.headers, json={"key_fraction": 0.1, "epochs": 1})
    assert accepted.status_code == 202, accepted.text
    job = client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=alice.headers).json()
    assert job["status"] == "succeeded", job
    assert "key_mask_sha256" not in str(job)  # the key stays server-side

    report = client.get(f"{url}/lock", headers=alice.headers).json()["report"]
    registered = load_safetensors(client.get(f"{url}/model", headers=alice.headers).content)
    locked = load_safetensors(client.get(f"{url}/locked-model", headers=alice.headers).content)
    layers = list(ticket["layer_sparsity"])
    kept = sum(int((registered[n] != 0).sum()) for n in layers)
    still = sum(int((locked[n] != 0).sum()) for n in layers)
    assert report["key_size"] == round(0.1 * kept) and still == kept - report["key_size"]
    assert report["locked_size"] == still
    for name in layers:  # the locked ticket only ever removes weights
        assert bool(((locked[name] != 0) <= (registered[name] != 0)).all())
        assert bool((locked[name][locked[name] != 0] == registered[name][locked[name] != 0]).all())
    for field in ("accuracy_without_key", "accuracy_with_key", "accuracy_with_forged_key"):
        assert 0.0 <= report[field] <= 1.0
    assert report["gap"] == pytest.approx(report["accuracy_with_key"] - report["accuracy_without_key"])
    assert report["train"]["epochs"] == 1

    events = client.get("/v1/audit", headers=alice.headers, params={"ticket_id": ticket["id"]}).json()["events"]
    assert events[-1]["action"] == "ticket.locked" and events[-1]["payload"]["key_size"] == report["key_size"]
    assert_json_error(client.post(f"{url}/lock", headers=alice.headers, json={}), 409, "already_locked")
    for path in ("lock", "locked-model"):  # another owner does not even learn the ticket exists
        assert_json_error(client.get(f"{url}/{path}", headers=bob.headers), 404)
    assert_json_error(client.post(f"{url}/lock", headers=bob.headers, json={}), 404)

    # the published locked ticket, checked with the key: the same retraining pair as at lock time
    response = upload(client, "/v1/verifications", locked_bytes(client, alice, url), alice.headers,
                      ticket_id=ticket["id"], key_check="true")
    assert response.status_code == 202, response.text
    result = client.get(f"/v1/verifications/{response.json()['id']}", headers=alice.headers).json()
    key = result["evidence"]["key_mask"]
    assert key["accuracy_without_key"] == report["accuracy_without_key"]
    assert key["accuracy_with_key"] == report["accuracy_with_key"] and key["gap_at_lock"] == report["gap"]
    assert result["verdict"] == "match"


def locked_bytes(client, account, url: str) -> bytes:
    return client.get(f"{url}/locked-model", headers=account.headers).content


def test_key_check_needs_a_locked_ticket_named(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    searching = upload(client, "/v1/verifications", model_files.stolen, alice.headers, key_check="true")
    assert_json_error(searching, 422, "invalid_request")
    unlocked = upload(client, "/v1/verifications", model_files.stolen, alice.headers, ticket_id=ticket["id"],
                      key_check="true")
    assert_json_error(unlocked, 404, "not_locked")


def test_an_uploaded_ticket_has_no_rewind_weights_to_lock(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    for body in ({"json": {}}, {}):  # a body of defaults, or none at all
        response = client.post(f"/v1/tickets/{ticket['id']}/lock", headers=alice.headers, **body)
        assert_json_error(response, 409, "no_rewind_weights")


@pytest.mark.parametrize("body", [{"key_fraction": 0}, {"key_fraction": 0.9}, {"score": "random"},
                                  {"epochs": 0}, {"key_fraction": "half"}])
def test_bad_lock_settings_are_422(client, alice, model_files, body):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    assert_json_error(client.post(f"/v1/tickets/{ticket['id']}/lock", headers=alice.headers, json=body), 422)
