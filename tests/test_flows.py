"""The three user flows end to end through the API (inline executor), on SQLite and PostgreSQL."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from service.app import create_app
from service.db import session_factory
from service.models import TicketSummary
from tests.helpers import register_ok, verify_ok


def test_register_then_get_list_and_download(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket, name="digits ticket")
    assert ticket["arch"] == "lenet300_100" and ticket["dataset"] == "digits"
    assert 0.5 < ticket["sparsity"] < 1.0
    assert set(ticket["layer_sparsity"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert len(ticket["model_sha256"]) == 64 and ticket["registered_at"]
    listed = client.get("/v1/tickets", headers=alice.headers).json()["tickets"]
    assert [t["id"] for t in listed] == [ticket["id"]]
    download = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers)
    assert download.status_code == 200
    tensors = load_safetensors(download.content)
    original = load_safetensors(model_files.ticket.read_bytes())
    for name, tensor in original.items():
        assert tensors[name].equal(tensor), name


def test_prune_form_pt_upload_registers_same_mask(client, alice, model_files):
    from_pt = register_ok(client, alice.headers, model_files.prune_form, name="from pt")
    from_st = register_ok(client, alice.headers, model_files.ticket, name="from safetensors")
    assert from_pt["layer_sparsity"] == from_st["layer_sparsity"]
    assert from_pt["model_sha256"] == from_st["model_sha256"]


def test_stolen_copy_matches_without_ticket_id_and_reveals_only_the_claim(client, alice, bob, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    result = verify_ok(client, bob.headers, model_files.stolen)
    assert result["verdict"] == "match"
    assert result["ticket_id"] == ticket["id"] and result["owner"] == "alice"
    assert result["registered_at"] and result["p_value"] <= 1e-3
    assert result["evidence"]["candidates_compared"] == 1
    text = str(result)
    assert alice.key not in text and "mask_sha256" not in text and "model_sha256" not in text


def test_search_over_many_tickets_still_matches_past_the_permutations_resolution(client, alice, bob, model_files):
    # 999 permutations resolve p down to 1e-3; a correction over 12 candidates needs far less
    ticket = register_ok(client, alice.headers, model_files.ticket)
    for index in range(11):
        register_ok(client, bob.headers, model_files.independent, name=f"other {index}")
    result = verify_ok(client, bob.headers, model_files.stolen)
    evidence = result["evidence"]
    assert evidence["candidates_compatible"] == 12 and evidence["candidates_compared"] == 5  # the shortlist
    assert result["verdict"] == "match" and result["ticket_id"] == ticket["id"], result
    assert result["p_value"] <= 1e-3 / 5
    innocent = verify_ok(client, bob.headers, model_files.dense)
    assert innocent["verdict"] == "no_match"


def test_search_tests_only_the_nearest_tickets_by_weight_summary(settings, alice, bob, model_files):
    narrow = settings.model_copy(update={"search_candidates": 1})
    with TestClient(create_app(narrow), raise_server_exceptions=False) as client:
        for index in range(6):
            register_ok(client, bob.headers, model_files.independent, name=f"other {index}")
        ticket = register_ok(client, alice.headers, model_files.ticket)  # registered last, found first
        first = verify_ok(client, bob.headers, model_files.stolen)
        with session_factory(settings.resolved_database_url)() as session:
            assert session.query(TicketSummary).count() == 7
            session.query(TicketSummary).delete()  # as for tickets registered before the index existed
            session.commit()
        unindexed = verify_ok(client, bob.headers, model_files.stolen)
    for result in (first, unindexed):
        evidence = result["evidence"]
        assert evidence["candidates_compatible"] == 7 and evidence["candidates_compared"] == 1
        assert result["verdict"] == "match" and result["ticket_id"] == ticket["id"], result
        assert 0 <= evidence["summary_distance"] < 0.01


def test_independent_ticket_is_no_match(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    result = verify_ok(client, alice.headers, model_files.independent, ticket_id=ticket["id"])
    assert result["verdict"] == "no_match", result
    assert result["p_value"] > 1e-2
    assert result["ticket_id"] == ticket["id"] and result["owner"] == "alice"


def test_dense_suspect_is_estimated_at_the_ticket_densities(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    result = verify_ok(client, alice.headers, model_files.dense, ticket_id=ticket["id"])
    assert result["evidence"]["topology"]["suspect_dense"] is True
    assert result["verdict"] == "no_match"


def test_search_with_no_registered_ticket_is_no_match(client, alice, model_files):
    result = verify_ok(client, alice.headers, model_files.stolen)
    assert result["verdict"] == "no_match" and result["ticket_id"] is None
    assert result["evidence"]["candidates_compared"] == 0


def test_audit_history_records_the_flows_and_verifies(client, alice, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    verify_ok(client, alice.headers, model_files.stolen, ticket_id=ticket["id"])
    events = client.get("/v1/audit", headers=alice.headers).json()["events"]
    actions = [e["action"] for e in events]
    assert actions == ["owner.created", "api_key.created", "ticket.registered",
                       "verification.requested", "verification.completed"]
    for previous, event in zip(events, events[1:], strict=False):
        assert event["prev_hash"] == previous["hash"] and event["seq"] == previous["seq"] + 1
    assert events[-1]["payload"]["verdict"] == "match"
    by_ticket = client.get("/v1/audit", headers=alice.headers, params={"ticket_id": ticket["id"]}).json()
    assert [e["action"] for e in by_ticket["events"]] == actions[2:]
    report = client.get("/v1/audit/verify", headers=alice.headers).json()
    assert report | {"root_hash": None} == {"ok": True, "events_checked": 5, "first_broken_seq": None, "reason": None,
                                            "tree_size": 5, "root_hash": None, "tree_heads_checked": 0,
                                            "checkpoint": None}
    assert len(report["root_hash"]) == 64


def test_audit_pagination_and_time_filters(client, alice, model_files):
    register_ok(client, alice.headers, model_files.ticket)
    first = client.get("/v1/audit", headers=alice.headers, params={"limit": 2}).json()
    assert len(first["events"]) == 2 and first["next_cursor"]
    rest = client.get("/v1/audit", headers=alice.headers,
                      params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [e["seq"] for e in rest["events"]] == [first["events"][-1]["seq"] + 1]
    assert rest["next_cursor"] is None
    last_ts = rest["events"][0]["ts"]
    later = client.get("/v1/audit", headers=alice.headers, params={"since": last_ts}).json()
    assert [e["action"] for e in later["events"]] == ["ticket.registered"]
    earlier = client.get("/v1/audit", headers=alice.headers, params={"until": last_ts}).json()
    assert len(earlier["events"]) == 2


def test_job_is_visible_with_its_result(client, alice, model_files):
    response = client.post("/v1/tickets", headers=alice.headers, data={"arch": "lenet300_100",
                           "dataset": "digits", "name": "t"},
                           files={"model": ("m", io.BytesIO(model_files.ticket.read_bytes()))})
    job = client.get(f"/v1/jobs/{response.json()['job_id']}", headers=alice.headers).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["attempts"] == 1
    assert job["kind"] == "register_ticket" and len(job["result"]["mask_sha256"]) == 64


def test_healthz_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/tickets", "/v1/verifications", "/v1/audit", "/v1/jobs/{job_id}/cancel", "/v1/owners"):
        assert path in paths
