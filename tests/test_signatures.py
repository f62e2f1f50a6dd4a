"""QR signatures through the API: registration writes the owner's code into the mask; a stolen copy,
channel-permuted, is caught by the module test and decodes to a valid MAC; credentials and evidence
stay with the ticket's owner."""

from __future__ import annotations

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from service.db import session_factory
from service.models import Signature
from tests.helpers import assert_json_error, register, register_ok, verify_ok
from verifier.attacks import permute_hidden_units


def test_signed_ticket_is_caught_through_permutation_and_only_its_owner_sees_the_evidence(
        client, alice, bob, model_files, tmp_path):
    # the unsigned ticket first: registered the other way round, its screening would find the signed one
    # (another owner's would be refused; the owner's own is linked)
    plain = register_ok(client, alice.headers, model_files.ticket, name="unsigned copy")
    ticket = register_ok(client, alice.headers, model_files.ticket, signature="qr", recovery_epochs=1)
    assert ticket["signature"] == "qr" and plain["signature"] == "fingerprint"
    assert ticket["derived_from"] == plain["id"]
    report = ticket["signature_report"]
    assert report["kernels_removed"] > 0 and report["recovery"]["epochs"] == 1
    assert abs(report["accuracy_before"] - report["accuracy_after"]) < 0.05  # the fidelity cost is small
    assert abs(ticket["sparsity"] - plain["sparsity"]) < 1e-12  # the kept-weight count is unchanged
    job = client.get(f"/v1/jobs/{ticket['job_id']}", headers=alice.headers).json()
    assert "credential" not in job["result"] and "TG1:" not in str(job)

    download = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers).content
    copied, stolen = tmp_path / "copied.safetensors", tmp_path / "stolen.safetensors"
    copied.write_bytes(download)
    signed = load_safetensors(download)
    permuted = permute_hidden_units("lenet300_100", signed, 3)
    stolen.write_bytes(save_safetensors({k: v.contiguous() for k, v in permuted.items()}))

    by_bob = verify_ok(client, bob.headers, copied)  # 1:N: the unsigned ticket is a candidate too
    # both match; the verdict names the one registered first, the signed one follows in the lineage
    assert by_bob["verdict"] == "match" and by_bob["ticket_id"] == plain["id"] and by_bob["owner"] == "alice"
    assert [(t["ticket_id"], t["derived_from"]) for t in by_bob["evidence"]["lineage"]] == \
        [(plain["id"], None), (ticket["id"], plain["id"])]
    assert "qr" not in by_bob["evidence"] and "TG1:" not in str(by_bob)
    assert by_bob["evidence"]["lineage"][1]["p_value"] <= 1e-3

    by_alice = verify_ok(client, alice.headers, stolen, ticket_id=ticket["id"])
    qr = by_alice["evidence"]["qr"]
    # the permuted copy is caught by the module test; its window need not decode (units whose only
    # connections lie inside the window cannot be aligned from the weights outside it)
    assert by_alice["verdict"] == "match" and qr["module_test"]["agreement"] > 0.7
    assert qr["p_value"] == 1 / 20_000  # the permutations' floor (finding 6): no normal tail past it
    assert not qr["alignment"]["identity"]
    for name in ("expected.png", "window.png", "difference.png"):
        image = client.get(f"/v1/verifications/{by_alice['id']}/evidence/{name}", headers=alice.headers)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert_json_error(client.get(f"/v1/verifications/{by_alice['id']}/evidence/window.png",
                                 headers=bob.headers), 404)
    assert_json_error(client.get(f"/v1/verifications/{by_bob['id']}/evidence/window.png",
                                 headers=bob.headers), 404)
    assert_json_error(client.get(f"/v1/verifications/{by_alice['id']}/evidence/secret.png",
                                 headers=alice.headers), 404)

    independent = verify_ok(client, alice.headers, model_files.independent, ticket_id=ticket["id"])
    assert independent["verdict"] == "no_match"
    assert independent["evidence"]["qr"]["decoded"] is False and independent["evidence"]["qr"]["p_value"] > 0.01


def _keys(value) -> set[str]:
    """Every key of every JSON object nested in `value`."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def test_another_owner_cannot_reach_a_signed_ticket_or_its_credential(client, settings, alice, bob, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket, signature="qr", recovery_epochs=1)
    with session_factory(settings.resolved_database_url)() as session:
        credential = session.get(Signature, ticket["id"])
    assert credential is not None and ticket["signature"] == "qr"
    paths = [f"/v1/tickets/{ticket['id']}", f"/v1/tickets/{ticket['id']}/model", f"/v1/jobs/{ticket['job_id']}"]
    for path in paths:
        assert client.get(path, headers=alice.headers).status_code == 200, path
        assert_json_error(client.get(path, headers=bob.headers), 404, "not_found")
    readable = [client.get(path, headers=bob.headers) for path in
                [*paths, "/v1/tickets", "/v1/audit", f"/v1/audit?ticket_id={ticket['id']}", "/v1/me"]]
    assert all(response.status_code in (200, 404) for response in readable)
    assert client.get("/v1/tickets", headers=bob.headers).json() == {"tickets": []}
    assert all(event["owner_id"] == bob.id and event.get("ticket_id") != ticket["id"]
               for event in client.get("/v1/audit", headers=bob.headers).json()["events"])
    for response in readable:
        assert credential.payload not in response.text and credential.layer not in response.text, response.url
        assert not _keys(response.json()) & {"layer", "row", "col", "offset", "matrix", "credential", "signature"}


def test_bad_signature_options_are_422(client, alice, model_files):
    for fields in ({"signature": "bogus"}, {"signature": "qr", "qr_version": "9"},
                   {"signature": "qr", "qr_error": "Z"}, {"signature": "qr", "recovery_epochs": "-1"},
                   {"signature": "qr", "qr_version": "1"}, {"signature": "auto", "qr_version": "2"}):
        assert_json_error(register(client, alice.headers, model_files.ticket, **fields), 422)


def test_auto_falls_back_to_fingerprint_when_the_data_set_is_not_here(client, alice, tmp_path, monkeypatch):
    from verifier.checkpoint import save_state_dict
    from verifier.masks import magnitude_mask
    from verifier.models import build_model, prunable_parameters

    monkeypatch.setenv("TICKETGUARD_DATASETS_DIR", str(tmp_path / "no-datasets-here"))
    model = build_model("lenet300_100", (1, 28, 28), 10)
    state = model.state_dict()
    names = prunable_parameters("lenet300_100", model)
    mask = magnitude_mask({n: state[n] for n in names}, dict.fromkeys(names, 0.2))
    save_state_dict({k: v * mask[k] if k in mask else v for k, v in state.items()}, tmp_path / "m.safetensors")
    auto = register_ok(client, alice.headers, tmp_path / "m.safetensors", dataset="mnist", signature="auto")
    assert auto["signature"] == "fingerprint" and auto["signature_report"] is None
    response = register(client, alice.headers, tmp_path / "m.safetensors", dataset="mnist", signature="qr")
    job = client.get(f"/v1/jobs/{response.json()['job_id']}", headers=alice.headers).json()
    assert job["status"] == "failed" and "not found" in job["error"]


def test_weights_added_back_do_not_stop_the_code_from_decoding(client, alice, model_files, tmp_path):
    """The add-on attack (the paper's fake2) on a sparse copy: the window is read from the copy's own
    nonzeros, so only the dark modules a revived weight lands on flip, and the code still decodes."""
    from verifier.attacks import add_on
    from verifier.masks import mask_from_weights
    from verifier.models import build_model

    ticket = register_ok(client, alice.headers, model_files.ticket, signature="qr", recovery_epochs=1)
    signed = load_safetensors(client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers).content)
    model = build_model("lenet300_100", (1, 8, 8), 10)
    model.load_state_dict(signed)
    grown = add_on(model, mask_from_weights(signed, list(ticket["layer_sparsity"])), 0.01, seed=5)
    assert sum(int(k.sum()) for k in grown.values()) > sum(int((signed[n] != 0).sum()) for n in grown)
    suspect = tmp_path / "grown.safetensors"
    suspect.write_bytes(save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}))
    result = verify_ok(client, alice.headers, suspect, ticket_id=ticket["id"])
    qr = result["evidence"]["qr"]
    assert result["verdict"] == "match" and qr["decoded"] and qr["payload_valid"], qr
