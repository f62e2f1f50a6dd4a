"""API keys, the admin role, and tenant isolation over every resource (404, never 403, for others)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.db import session_factory
from service.models import ApiKey
from service.security import hash_api_key
from tests.helpers import assert_json_error, register_ok, upload, verify_ok

PROTECTED = [("GET", "/v1/tickets"), ("POST", "/v1/tickets"), ("GET", "/v1/tickets/x"),
             ("GET", "/v1/tickets/x/model"), ("POST", "/v1/verifications"), ("GET", "/v1/verifications/x"),
             ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/audit"),
             ("GET", "/v1/audit/verify"), ("POST", "/v1/owners"), ("GET", "/v1/me")]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_v1_endpoint_needs_a_valid_key(client, alice, method, path):
    assert_json_error(client.request(method, path), 401, "unauthorized")
    assert_json_error(client.request(method, path, headers={"Authorization": "Bearer tg_wrong"}), 401)
    assert_json_error(client.request(method, path, headers={"Authorization": alice.key}), 401)


def test_keys_are_stored_only_as_hmac(settings, alice):
    with session_factory(settings.resolved_database_url)() as session:
        stored = session.execute(select(ApiKey)).scalars().all()
    assert alice.key.startswith("tg_") and len(alice.key) > 40
    assert [k.key_hash for k in stored] == [hash_api_key(b"test-secret", alice.key)]
    assert all(alice.key not in (k.key_hash, k.prefix) for k in stored)


def test_admin_creates_owners_over_http(client, admin, alice):
    assert_json_error(client.post("/v1/owners", headers=alice.headers, json={"name": "eve"}), 403)
    created = client.post("/v1/owners", headers=admin.headers, json={"name": "carol"})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
    assert me["name"] == "carol" and me["is_admin"] is False
    assert_json_error(client.post("/v1/owners", headers=admin.headers, json={"name": "carol"}), 409,
                      "owner_exists")
    assert_json_error(client.post("/v1/owners", headers=admin.headers, json={"name": ""}), 422)
    assert_json_error(client.post("/v1/owners", headers=admin.headers, json={"name": "a b/../c"}), 422)


def test_isolation_matrix(client, alice, bob, admin, model_files):
    ticket = register_ok(client, alice.headers, model_files.ticket)
    verification = verify_ok(client, alice.headers, model_files.stolen, ticket_id=ticket["id"])
    own = {"ticket": f"/v1/tickets/{ticket['id']}", "model": f"/v1/tickets/{ticket['id']}/model",
           "verification": f"/v1/verifications/{verification['id']}",
           "job": f"/v1/jobs/{verification['job_id']}"}
    for name, path in own.items():
        assert client.get(path, headers=alice.headers).status_code == 200, name
        assert_json_error(client.get(path, headers=bob.headers), 404, "not_found")
        assert client.get(path, headers=admin.headers).status_code == 200, name
    assert_json_error(client.post(f"/v1/jobs/{verification['job_id']}/cancel", headers=bob.headers), 404)
    assert client.get("/v1/tickets", headers=bob.headers).json() == {"tickets": []}
    everything = client.get("/v1/tickets", headers=admin.headers).json()["tickets"]
    assert [t["id"] for t in everything] == [ticket["id"]]
    bob_events = client.get("/v1/audit", headers=bob.headers).json()["events"]
    assert {e["action"] for e in bob_events} == {"owner.created", "api_key.created"}
    assert all(ticket["id"] not in str(e) for e in bob_events)
    filtered = client.get("/v1/audit", headers=bob.headers, params={"ticket_id": ticket["id"]}).json()
    assert filtered["events"] == []
    all_events = client.get("/v1/audit", headers=admin.headers).json()["events"]
    assert {"ticket.registered", "verification.completed"} <= {e["action"] for e in all_events}
    # bob may not name alice's ticket in a verification
    response = upload(client, "/v1/verifications", model_files.stolen, bob.headers, ticket_id=ticket["id"])
    assert_json_error(response, 404, "not_found")


def test_no_match_search_does_not_reveal_other_owners_tickets(client, alice, bob, model_files):
    register_ok(client, alice.headers, model_files.ticket)
    result = verify_ok(client, bob.headers, model_files.independent)
    assert result["verdict"] == "no_match"
    assert result["ticket_id"] is None and result["owner"] is None
    assert "layers" not in result["evidence"]["topology"]
