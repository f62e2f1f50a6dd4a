"""Webhooks for alerts (issue 15): signed deliveries, retries with backoff, the SSRF guard, ownership."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.audit import webhooks
from service.audit.webhooks import append_alert, deliver_due
from service.db import session_factory
from service.models import WebhookDelivery
from tests.helpers import assert_json_error, http_server, wait_for


@pytest.fixture
def local(settings):
    """Settings that let webhooks reach a server on loopback (as an operator would allow a network)."""
    return settings.model_copy(update={"endpoint_allow_http_hosts": "127.0.0.1",
                                       "endpoint_allow_networks": "127.0.0.0/8", "webhook_poll_interval": 0.1})


def _alert(settings, owner_id: str, p_value: float = 1e-5) -> int:
    with session_factory(settings.resolved_database_url)() as session:
        event = append_alert(session, actor="test", action="alert.ticket_matched", subject="ticket:" + "a" * 32,
                             owner_id=owner_id, ticket_id=None, payload={"p_value": p_value})
        session.commit()
        return event.seq


def test_an_alert_reaches_the_owners_webhook_signed(local, alice, bob):
    received = []

    def handle(request, body):
        received.append((dict(request.headers), body))
        return 200, {}, b"ok"

    with http_server(handle) as url, TestClient(create_app(local)) as client:
        created = client.post("/v1/webhooks", headers=alice.headers, json={"url": f"{url}/hook"})
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        seq = _alert(local, alice.id)
        _alert(local, bob.id)  # bob's alert is not sent to alice's webhook
        wait_for(lambda: received, "the delivery", timeout=60)
        deliveries = client.get(f"/v1/webhooks/{created.json()['id']}/deliveries", headers=alice.headers).json()
        wait_for(lambda: client.get(f"/v1/webhooks/{created.json()['id']}/deliveries", headers=alice.headers)
                 .json()["deliveries"][0]["status"] == "delivered", "the delivery recorded", timeout=60)
        assert client.get("/v1/webhooks", headers=bob.headers).json()["webhooks"] == []
        assert "secret" not in str(client.get("/v1/webhooks", headers=alice.headers).json())
    assert len(received) == 1 and len(deliveries["deliveries"]) == 1
    headers, body = received[0]
    stamp = headers["x-ticketguard-timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-ticketguard-signature"] == expected
    sent = json.loads(body)
    assert sent["event"]["seq"] == seq and sent["event"]["owner_id"] == alice.id
    assert sent["event"]["action"] == "alert.ticket_matched"


def test_a_failing_webhook_is_retried_with_backoff_then_marked_failed(local, alice, monkeypatch):
    answers = [500, 200]

    def handle(request, body):
        return answers.pop(0) if answers else 503, {}, b""

    monkeypatch.setattr(webhooks, "BACKOFF", (0.0, 0.0))
    with http_server(handle) as url:
        with TestClient(create_app(local, start_executor=False)) as client:
            hook = client.post("/v1/webhooks", headers=alice.headers, json={"url": url}).json()
        _alert(local, alice.id)
        assert deliver_due(local) == 1  # 500: to be retried
        with session_factory(local.resolved_database_url)() as session:
            delivery = session.query(WebhookDelivery).one()
            assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1,
                                                                                 "the webhook answered 500")
        assert deliver_due(local) == 1  # 200
        _alert(local, alice.id)
        for _ in range(3):  # 503 every time: after the backoff is used up, failed
            deliver_due(local)
        with session_factory(local.resolved_database_url)() as session:
            statuses = sorted((d.status, d.attempts) for d in session.query(WebhookDelivery))
        assert statuses == [("delivered", 2), ("failed", 3)], statuses
        assert deliver_due(local) == 0
    assert hook["url"] == url


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "https://10.0.0.1/hook",
                                 "https://127.0.0.1/hook", "ftp://example.com/", "https://user:pw@example.com/",
                                 "not a url"])
def test_webhooks_to_private_or_odd_addresses_are_refused(client, alice, url):
    assert_json_error(client.post("/v1/webhooks", headers=alice.headers, json={"url": url}), 422, "webhook_refused")


def test_a_webhook_is_its_owners_alone(local, alice, bob):
    with http_server(lambda request, body: (200, {}, b"")) as url, \
            TestClient(create_app(local, start_executor=False)) as client:
        hook = client.post("/v1/webhooks", headers=alice.headers, json={"url": url}).json()
        assert_json_error(client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=bob.headers), 404)
        assert_json_error(client.delete(f"/v1/webhooks/{hook['id']}", headers=bob.headers), 404)
        assert_json_error(client.delete("/v1/webhooks/not-an-id", headers=alice.headers), 404)
        assert client.delete(f"/v1/webhooks/{hook['id']}", headers=alice.headers).status_code == 204
        assert client.get("/v1/webhooks", headers=alice.headers).json()["webhooks"] == []
        _alert(local, alice.id)  # no webhook left: nothing to deliver
        assert deliver_due(local) == 0
        for _ in range(webhooks.MAX_WEBHOOKS):
            assert client.post("/v1/webhooks", headers=alice.headers, json={"url": url}).status_code == 201
        assert_json_error(client.post("/v1/webhooks", headers=alice.headers, json={"url": url}), 409)


def test_one_broken_delivery_does_not_stall_the_others(local, alice, monkeypatch):
    with TestClient(create_app(local, start_executor=False)) as client:
        for port in (1, 2):
            client.post("/v1/webhooks", headers=alice.headers, json={"url": f"http://127.0.0.1:{port}/"})
    _alert(local, alice.id)
    calls = []

    def flaky(url, body, policy, headers):
        calls.append(url)
        if url.endswith(":1/"):
            raise RuntimeError("a bug in a delivery")
        return 204

    monkeypatch.setattr(webhooks, "post_once", flaky)
    assert deliver_due(local) == 2 and len(calls) == 2
    with session_factory(local.resolved_database_url)() as session:
        outcome = sorted((d.status, d.attempts, d.last_error) for d in session.query(WebhookDelivery))
    assert outcome == [("delivered", 1, None), ("pending", 1, "internal error: RuntimeError")], outcome
