"""Black-box verification through the API: trigger sets embedded at registration, and suspects as an
uploaded model, as answers the owner gathered, and behind a real HTTP endpoint."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from service.app import create_app
from tests.helpers import assert_json_error, http_server, register_ok, upload
from verifier.models import build_model

TRIGGERS = {"trigger_set": "true", "trigger_epochs": "10"}


def _verify(client, headers, *, files=None, **data) -> dict:
    response = client.post("/v1/verifications", headers=headers, data={k: v for k, v in data.items() if v},
                           files=files)
    assert response.status_code == 202, response.text
    result = client.get(f"/v1/verifications/{response.json()['id']}", headers=headers).json()
    assert result["status"] == "completed", result
    return result


def _model(client, headers, ticket_id: str) -> torch.nn.Module:
    model = build_model("lenet300_100", (1, 8, 8), 10)
    model.load_state_dict(load_safetensors(client.get(f"/v1/tickets/{ticket_id}/model", headers=headers).content))
    return model.eval()


def _trigger_set(client, headers, ticket_id: str) -> dict[str, np.ndarray]:
    response = client.get(f"/v1/tickets/{ticket_id}/trigger-set", headers=headers)
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
        return {"x": archive["x"], "y": archive["y"]}


def test_registration_embeds_a_trigger_set_only_its_owner_can_download(client, alice, bob, admin, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket, **TRIGGERS)
    report = ticket["trigger_set_report"]
    assert report["size"] == 100 and report["trigger_accuracy_after"] >= 0.6 > report["trigger_accuracy_before"]
    assert report["test_accuracy_after"] > report["test_accuracy_before"] - 0.03  # the fidelity cost, recorded
    triggers = _trigger_set(client, alice.headers, ticket["id"])
    assert triggers["x"].shape == (100, 1, 8, 8) and triggers["y"].shape == (100,)
    with torch.no_grad():
        answers = _model(client, alice.headers, ticket["id"])(torch.from_numpy(triggers["x"])).argmax(1).numpy()
    assert (answers == triggers["y"]).mean() == pytest.approx(report["trigger_accuracy_after"])
    for other in (bob, admin):
        assert_json_error(client.get(f"/v1/tickets/{ticket['id']}/trigger-set", headers=other.headers), 404)
    registered = client.get("/v1/audit", headers=alice.headers, params={"ticket_id": ticket["id"]}).json()["events"]
    payload = next(e["payload"] for e in registered if e["action"] == "ticket.registered")
    assert payload["trigger_set"] == "generated" and len(payload["trigger_set_sha256"]) == 64  # contents committed
    plain = register_ok(client, alice.headers, model_files.independent)
    assert plain["trigger_set_report"] is None
    assert_json_error(client.get(f"/v1/tickets/{plain['id']}/trigger-set", headers=alice.headers), 404)


def test_an_uploaded_model_is_checked_by_its_answers_alone(client, alice, bob, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket, **TRIGGERS)
    registered = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers).content
    named = _verify(client, alice.headers, ticket_id=ticket["id"], mode="black_box", files={"model": ("m", registered)})
    assert named["verdict"] == "match" and named["mode"] == "black_box" and named["source"] == "model"
    evidence = named["evidence"]
    assert evidence["schemes"] == ["trigger_set"] and evidence["trigger_set"]["matches"] >= 60
    assert evidence["trigger_set"]["p_chance"] < 1e-20
    searched = _verify(client, bob.headers, mode="black_box", files={"model": ("m", registered)})
    assert searched["verdict"] == "match" and searched["ticket_id"] == ticket["id"]
    independent = _verify(client, alice.headers, ticket_id=ticket["id"], mode="black_box",
                          files={"model": ("m", model_files.independent.read_bytes())})
    assert independent["verdict"] == "no_match" and independent["evidence"]["trigger_set"]["matches"] < 25
    both = _verify(client, alice.headers, ticket_id=ticket["id"], mode="both", files={"model": ("m", registered)})
    assert both["verdict"] == "match" and both["evidence"]["schemes"] == ["topology", "trigger_set"]


def test_answers_the_owner_gathered(client, alice, bob, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket, **TRIGGERS)
    triggers = _trigger_set(client, alice.headers, ticket["id"])
    with torch.no_grad():
        logits = _model(client, alice.headers, ticket["id"])(torch.from_numpy(triggers["x"])).tolist()
    result = _verify(client, alice.headers, ticket_id=ticket["id"],
                     files={"answers": ("a.json", json.dumps({"logits": logits}).encode())})
    assert result["verdict"] == "match" and result["source"] == "answers"
    guessed = np.random.default_rng(0).integers(10, size=100).tolist()
    result = _verify(client, alice.headers, ticket_id=ticket["id"],
                     files={"answers": ("a.json", json.dumps({"labels": guessed}).encode())})
    assert result["verdict"] == "no_match"
    for body, status in ((b"nope", 422), (json.dumps({"labels": [1] * 99}).encode(), 422)):
        response = upload(client, "/v1/verifications", body, alice.headers, ticket_id=ticket["id"])
        assert response.status_code == 422  # a model file that is not one
        response = client.post("/v1/verifications", headers=alice.headers, data={"ticket_id": ticket["id"]},
                               files={"answers": ("a.json", body)})
        assert_json_error(response, status, "invalid_answers")
    other = client.post("/v1/verifications", headers=bob.headers, data={"ticket_id": ticket["id"]},
                        files={"answers": ("a.json", json.dumps({"labels": guessed}).encode())})
    assert_json_error(other, 404)  # only the owner has the trigger inputs


def test_a_real_endpoint_is_queried_with_triggers_hidden_among_test_inputs(settings, alice, model_files):
    local = settings.model_copy(update={"endpoint_allow_http_hosts": "127.0.0.1",
                                        "endpoint_allow_networks": "127.0.0.0/8"})
    with TestClient(create_app(local), raise_server_exceptions=False) as client:
        ticket = register_ok(client, alice.headers, model_files.ticket, **TRIGGERS)
        model = _model(client, alice.headers, ticket["id"])
        triggers = torch.from_numpy(_trigger_set(client, alice.headers, ticket["id"])["x"]).flatten(1)
        batches, received = [], []

        def predict(request, body):
            inputs = torch.tensor(json.loads(body)["inputs"])
            batches.append(len(inputs))
            received.append(inputs)
            with torch.no_grad():
                labels = model(inputs).argmax(1).tolist()
            return 200, {"content-type": "application/json"}, json.dumps({"labels": labels}).encode()

        with http_server(predict) as url:
            result = _verify(client, alice.headers, ticket_id=ticket["id"], endpoint=f"{url}/predict")
    assert result["verdict"] == "match" and result["source"] == "endpoint", result
    evidence = result["evidence"]["trigger_set"]
    assert evidence["queries"] == 200 and evidence["ordinary_accuracy"] > 0.9
    assert sum(batches) == 200 and max(batches) <= local.endpoint_batch_size
    # Inputs are named by the first stored trigger equal to them (-1: none). A generated set can hold identical
    # inputs (flat shapes over the same pixels are all 0/1 once scaled; about 1 set in 50), which the endpoint
    # cannot tell apart either, so the stored set is compared as a sequence of such names, copies counted.
    def first_equal(inputs: torch.Tensor) -> torch.Tensor:
        same = (inputs.flatten(1)[:, None] == triggers[None]).all(-1)
        return torch.where(same.any(1), same.int().argmax(1), -1)

    stored, which = first_equal(triggers), first_equal(torch.cat(received))  # which: in arrival order
    positions = torch.nonzero(which >= 0).flatten()
    assert sorted(which[positions].tolist()) == sorted(stored.tolist())  # every trigger once, exactly as stored
    assert positions[-1] - positions[0] > 100  # not one contiguous block ...
    assert 30 <= int((positions < 100).sum()) <= 70  # ... but spread over both halves of the queries
    assert which[positions].tolist() != stored.tolist()  # and not in their stored order


def test_a_stolen_copy_pruned_and_fine_tuned_is_recognised_by_endpoint_and_as_a_black_box(settings, alice, bob,
                                                                                           model_files):
    from safetensors.torch import save as save_safetensors

    from verifier.attacks import fine_tune, prune_further
    from verifier.data import load_dataset
    from verifier.masks import mask_from_weights

    local = settings.model_copy(update={"endpoint_allow_http_hosts": "127.0.0.1",
                                        "endpoint_allow_networks": "127.0.0.0/8"})
    with TestClient(create_app(local), raise_server_exceptions=False) as client:
        ticket = register_ok(client, alice.headers, model_files.ticket, **TRIGGERS)
        thief = _model(client, alice.headers, ticket["id"])
        data = load_dataset("digits")
        mask = prune_further(thief, mask_from_weights(thief.state_dict(), [n for n, _ in thief.named_parameters()
                                                                          if n.endswith("weight")]), 0.10)
        fine_tune(thief, mask, data.x_train, data.y_train, epochs=5, lr=0.01, seed=3)
        thief.eval()

        def predict(request, body):
            with torch.no_grad():
                labels = thief(torch.tensor(json.loads(body)["inputs"])).argmax(1).tolist()
            return 200, {"content-type": "application/json"}, json.dumps({"labels": labels}).encode()

        with http_server(predict) as url:
            remote = _verify(client, alice.headers, ticket_id=ticket["id"], endpoint=f"{url}/predict")
        stolen = save_safetensors({k: v.contiguous() for k, v in thief.state_dict().items()})
        uploaded = _verify(client, bob.headers, mode="black_box", files={"model": ("m", stolen)})
    for result in (remote, uploaded):
        assert result["verdict"] == "match" and result["ticket_id"] == ticket["id"], result
        assert result["p_value"] < 1e-10


def test_black_box_requests_that_cannot_work_are_refused(client, alice, model_files):
    plain = register_ok(client, alice.headers, model_files.ticket)
    response = client.post("/v1/verifications", headers=alice.headers,
                           data={"ticket_id": plain["id"], "mode": "black_box"},
                           files={"model": ("m", model_files.ticket.read_bytes())})
    assert_json_error(response, 409, "no_trigger_set")
    for data in ({"endpoint": "https://8.8.8.8/p"},  # no ticket_id
                 {"endpoint": "https://8.8.8.8/p", "ticket_id": plain["id"], "mode": "white_box"}):
        assert_json_error(client.post("/v1/verifications", headers=alice.headers, data=data), 422, "invalid_request")
    assert_json_error(client.post("/v1/verifications", headers=alice.headers, data={}), 422, "invalid_request")
    ticket = register_ok(client, alice.headers, model_files.independent, **TRIGGERS)
    for url in ("https://127.0.0.1/p", "https://169.254.169.254/latest", "http://8.8.8.8/p"):
        response = client.post("/v1/verifications", headers=alice.headers,
                               data={"ticket_id": ticket["id"], "endpoint": url})
        assert_json_error(response, 422, "endpoint_refused")


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_an_uploaded_trigger_set_decides_only_against_independent_models(client, alice, bob, model_files):
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 1, 8, 8)).astype(np.float32), rng.integers(10, size=40)
    own = {"trigger_file": ("t.npz", _npz(x=x, y=y))}
    response = client.post("/v1/tickets", headers=alice.headers, files={"model": ("m", model_files.ticket.read_bytes()),
                                                                        **own},
                           data={"arch": "lenet300_100", "dataset": "digits", "name": "own set",
                                 "signature": "fingerprint", "trigger_epochs": "10"})
    assert response.status_code == 202, response.text
    ticket = client.get(f"/v1/tickets/{response.json()['id']}", headers=alice.headers).json()
    assert ticket["trigger_set_report"]["source"] == "uploaded" and ticket["trigger_set_report"]["size"] == 40
    registered = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers).content
    result = _verify(client, alice.headers, ticket_id=ticket["id"], mode="black_box",
                     files={"model": ("m", registered)})
    evidence = result["evidence"]["trigger_set"]
    assert evidence["p_chance"] < 1e-10  # it answers the owner's labels ...
    assert not evidence["calibrated"] and result["verdict"] == "no_match"  # ... which prove nothing alone
    registered_at = datetime.fromisoformat(evidence["registered_at"])  # models published before it: no evidence
    assert datetime.fromisoformat(ticket["created_at"]) <= registered_at <= datetime.fromisoformat(result["created_at"])
    assert "published after" in evidence["caveat"]
    for bad, message in ((_npz(x=x[:5], y=y[:5]), "10 to 1000"), (_npz(x=x * 3, y=y), r"\[0, 1\]"),
                         (_npz(x=x[:, :, :4], y=y), "shape"), (_npz(x=x, y=y + 10), r"\[0, 10\)"),
                         (_npz(x=x), "missing"), (b"not an archive", "not an .npz")):
        response = client.post("/v1/tickets", headers=alice.headers,
                               files={"model": ("m", model_files.ticket.read_bytes()), "trigger_file": ("t", bad)},
                               data={"arch": "lenet300_100", "dataset": "digits", "name": "bad"})
        error = assert_json_error(response, 422, "invalid_trigger_set")
        assert re.search(message, error["message"]), error


def test_a_signed_ticket_with_a_trigger_set_is_judged_by_all_its_tests(client, alice, bob, model_files, tmp_path):
    from tests.test_aligned_topology import _pruned
    from verifier.checkpoint import save_state_dict

    for index in range(10):  # independent models registered before it, at the ticket's density (25 %): the
        path = tmp_path / f"independent{index}.safetensors"  # trigger set's empirical null, the aligned test's
        save_state_dict(_pruned(200 + index, 0.25), path)
        register_ok(client, bob.headers, path, name=f"independent {index}")
    ticket = register_ok(client, alice.headers, model_files.ticket, signature="qr", recovery_epochs="1", **TRIGGERS)
    assert ticket["signature"] == "qr" and ticket["signature_report"] and ticket["trigger_set_report"]
    job = client.get(f"/v1/jobs/{ticket['job_id']}", headers=alice.headers).json()
    assert job["result"]["trigger_set"]["references"] == 10
    registered = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers).content
    result = _verify(client, alice.headers, ticket_id=ticket["id"], mode="both", files={"model": ("m", registered)})
    evidence = result["evidence"]
    assert result["verdict"] == "match"
    assert evidence["schemes"] == ["topology", "qr", "aligned_topology", "trigger_set"]  # signed, aligned too
    assert evidence["qr"]["payload_valid"]  # the trigger fine-tune kept the signed mask
    trigger = evidence["trigger_set"]
    assert trigger["calibrated"] and trigger["references"] == 10
    assert trigger["p_chance"] <= trigger["p_empirical"] == trigger["p_value"] < 1e-10
    assert trigger["null_rate"] >= 0.1


def test_the_python_client_registers_downloads_and_verifies_black_box(client, alice, model_files, tmp_path):
    from service.client import TicketGuardClient

    api = TicketGuardClient("http://testserver", None)
    api.http = client  # the app in-process, with alice's key
    client.headers.update(alice.headers)
    accepted = api.register(model_files.ticket, arch="lenet300_100", dataset="digits", name="via client",
                            signature="fingerprint", trigger_set=True)
    assert api.wait(accepted["job_id"])["status"] == "succeeded"
    api.download_trigger_set(accepted["id"], tmp_path / "triggers.npz")
    with np.load(tmp_path / "triggers.npz", allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
    (tmp_path / "answers.json").write_text(json.dumps({"labels": y.tolist()}))  # a suspect that answers all
    by_answers = api.verify(answers=tmp_path / "answers.json", ticket_id=accepted["id"])
    by_model = api.verify(model_files.independent, ticket_id=accepted["id"], mode="black_box")
    verdicts = [api.verification(v["id"])["verdict"] for v in (by_answers, by_model)]
    assert verdicts == ["match", "no_match"] and x.shape == (100, 1, 8, 8)
