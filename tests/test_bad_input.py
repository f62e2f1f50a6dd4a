"""Bad input gets a 4xx with a JSON error body: never a 500, never code execution."""

from __future__ import annotations

import io
import os
import pickle

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tests.helpers import assert_json_error, register, register_ok, upload


class _CreatesFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_random_bytes(client, alice):
    assert_json_error(register(client, alice.headers, os.urandom(4096)), 422, "unreadable_model")
    assert_json_error(upload(client, "/v1/verifications", os.urandom(4096), alice.headers), 422,
                      "unreadable_model")


def test_malicious_pickle_is_refused_and_never_runs(client, alice, tmp_path):
    marker = tmp_path / "pwned"
    for payload in (pickle.dumps({"fc1.weight": _CreatesFile(str(marker))}),):
        assert_json_error(register(client, alice.headers, payload), 422, "unreadable_model")
    path = tmp_path / "evil.pt"
    torch.save({"fc1.weight": _CreatesFile(str(marker))}, path)
    assert_json_error(register(client, alice.headers, path), 422, "unreadable_model")
    assert_json_error(upload(client, "/v1/verifications", path, alice.headers), 422, "unreadable_model")
    assert not marker.exists()


def test_truncated_safetensors(client, alice, model_files):
    data = model_files.ticket.read_bytes()
    assert_json_error(register(client, alice.headers, data[: len(data) // 2]), 422, "unreadable_model")


def test_wrong_shape_missing_and_unexpected_tensors_are_named(client, alice, model_files):
    state = load_safetensors(model_files.ticket.read_bytes())
    wrong = dict(state, **{"fc2.weight": torch.zeros(7, 7)})
    error = assert_json_error(register(client, alice.headers, save_safetensors(wrong)), 422, "shape_mismatch")
    assert "fc2.weight" in error["message"]
    missing = {k: v for k, v in state.items() if k != "fc3.bias"}
    response = register(client, alice.headers, save_safetensors(missing))
    error = assert_json_error(response, 422, "missing_tensor")
    assert "fc3.bias" in error["message"]
    extra = dict(state, **{"fc9.weight": torch.zeros(2)})
    error = assert_json_error(register(client, alice.headers, save_safetensors(extra)), 422,
                              "unexpected_tensor")
    assert "fc9.weight" in error["message"]
    error = assert_json_error(register(client, alice.headers, model_files.ticket, arch="resnet20"), 422)
    assert "conv1.weight" in error["message"] or "fc1" in error["message"]


def test_mask_with_values_other_than_zero_and_one(client, alice, model_files):
    state = load_safetensors(model_files.ticket.read_bytes())
    state["fc1.weight_orig"] = state.pop("fc1.weight")
    state["fc1.weight_mask"] = torch.full_like(state["fc1.weight_orig"], 0.5)
    error = assert_json_error(register(client, alice.headers, save_safetensors(state)), 422, "invalid_mask")
    assert "fc1" in error["message"]


def test_sparse_tensors_are_refused_naming_the_tensor(client, alice, model_files):
    state = load_safetensors(model_files.ticket.read_bytes())
    sparse_weight = dict(state, **{"fc2.weight": state["fc2.weight"].to_sparse()})
    sparse_mask = dict(state)
    sparse_mask["fc1.weight_orig"] = sparse_mask.pop("fc1.weight")
    sparse_mask["fc1.weight_mask"] = (sparse_mask["fc1.weight_orig"] != 0).float().to_sparse()
    for state, name in ((sparse_weight, "fc2.weight"), (sparse_mask, "fc1.weight_mask")):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        for response in (register(client, alice.headers, buffer.getvalue()),
                         upload(client, "/v1/verifications", buffer.getvalue(), alice.headers)):
            error = assert_json_error(response, 422, "unreadable_model")
            assert name in error["message"] and "sparse" in error["message"]


def test_weights_beyond_float32_range_are_refused(client, alice, model_files):
    state = {k: v.double() for k, v in load_safetensors(model_files.ticket.read_bytes()).items()}
    state["fc2.weight"][0, 0] = 1e300
    error = assert_json_error(register(client, alice.headers, save_safetensors(state)), 422, "invalid_model")
    assert "fc2.weight" in error["message"] and "float32" in error["message"]


def test_dense_model_cannot_be_registered_as_a_ticket(client, alice, model_files):
    assert_json_error(register(client, alice.headers, model_files.dense), 422, "not_sparse")


def test_oversize_upload(client, alice, settings):
    too_big = b"\0" * (settings.max_upload_bytes + 1)
    assert_json_error(register(client, alice.headers, too_big), 413, "payload_too_large")
    assert_json_error(upload(client, "/v1/verifications", too_big, alice.headers), 413, "payload_too_large")
    leftovers = list((settings.resolved_artifact_dir / "tmp").iterdir())
    assert leftovers == []


def test_unknown_arch_and_dataset(client, alice, model_files):
    error = assert_json_error(register(client, alice.headers, model_files.ticket, arch="gpt9"), 422,
                              "unknown_arch")
    assert "resnet20" in error["message"]
    assert_json_error(register(client, alice.headers, model_files.ticket, dataset="imagenet"), 422,
                      "unknown_dataset")


def test_missing_fields_and_unknown_ids(client, alice, model_files):
    assert_json_error(client.post("/v1/tickets", headers=alice.headers, data={"arch": "resnet20"}), 422)
    assert_json_error(client.post("/v1/verifications", headers=alice.headers), 422)
    assert_json_error(client.get("/v1/tickets/nope", headers=alice.headers), 404)
    assert_json_error(client.get("/v1/verifications/nope", headers=alice.headers), 404)
    assert_json_error(client.get("/v1/jobs/nope", headers=alice.headers), 404)
    response = upload(client, "/v1/verifications", model_files.stolen, alice.headers, ticket_id="nope")
    assert_json_error(response, 404)
    assert_json_error(client.get("/v1/audit", headers=alice.headers, params={"cursor": "abc"}), 422)
    assert_json_error(client.get("/v1/audit", headers=alice.headers, params={"limit": 0}), 422)
    assert_json_error(client.get("/v1/audit", headers=alice.headers, params={"since": "yesterday"}), 422)


def test_suspect_that_does_not_fit_the_named_ticket(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    state = load_safetensors(model_files.ticket.read_bytes())
    state["fc1.weight"] = torch.zeros(300, 10)
    response = upload(client, "/v1/verifications", save_safetensors(state), alice.headers,
                      ticket_id=ticket["id"])
    assert_json_error(response, 422, "shape_mismatch")


def test_finished_job_cannot_be_cancelled(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    response = client.post(f"/v1/jobs/{ticket['job_id']}/cancel", headers=alice.headers)
    assert_json_error(response, 409, "job_finished")
