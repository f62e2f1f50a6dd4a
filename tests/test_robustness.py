"""Odd but possible client input never yields a 500; concurrent appends keep the audit chain whole."""

from __future__ import annotations

import threading

import pytest

from service.audit.chain import verify_chain
from service.db import session_factory
from tests.conftest import make_account
from tests.helpers import assert_json_error, register

ODD_REQUESTS = [
    ("GET", "/v1/audit", {"params": {"since": "2026-01-01T00:00:00"}}, 200),
    ("GET", "/v1/audit", {"params": {"until": "2026-01-01T00:00:00+05:00"}}, 200),
    ("GET", "/v1/audit", {"params": {"limit": "9" * 30}}, 422),
    ("GET", "/v1/audit", {"params": {"cursor": "9" * 40}}, 422),
    ("GET", "/v1/audit", {"params": {"cursor": "\u00b2"}}, 422),
    ("GET", "/v1/audit", {"params": {"cursor": "\u0661\u0662"}}, 422),
    ("GET", "/v1/audit", {"params": {"since": "0001-01-01T00:00:00+14:00"}}, 422),
    ("GET", "/v1/audit", {"params": {"until": "9999-12-31T23:59:59-14:00"}}, 422),
    ("GET", "/v1/audit", {"params": {"ticket_id": "'; DROP TABLE tickets; --"}}, 422),
    ("GET", "/v1/audit", {"params": {"ticket_id": "a\x00b"}}, 422),
    ("GET", "/v1/tickets/%00%ff", {}, 404),
    ("GET", "/v1/verifications/" + "x" * 5000, {}, 404),
    ("POST", "/v1/jobs/%2e%2e/cancel", {}, 404),
    ("POST", "/v1/owners", {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 422),
    ("POST", "/v1/tickets", {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}},
     None),
    ("POST", "/v1/tickets", {"json": {"arch": "resnet20"}}, 422),
    ("POST", "/v1/verifications", {"data": {"ticket_id": "x" * 10000}}, 422),
]


@pytest.mark.parametrize("method,path,kwargs,status", ODD_REQUESTS)
def test_odd_requests_get_json_errors_not_500(client, alice, method, path, kwargs, status):
    kwargs = dict(kwargs)
    headers = dict(kwargs.pop("headers", {}), **alice.headers)
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    if response.status_code >= 400:
        assert_json_error(response, response.status_code)


@pytest.mark.parametrize("method,path,allowed", [
    ("DELETE", "/v1/tickets", "GET, POST"),
    ("OPTIONS", "/v1/tickets/x/lock", "GET, POST"),
    ("PUT", "/v1/datasets", "GET, POST"),
    ("PATCH", "/v1/me", "GET"),
    ("OPTIONS", "/v1/tickets/find", "POST"),  # not GET /v1/tickets/{ticket_id}'s
])
def test_method_not_allowed_names_every_method_of_the_path(client, alice, method, path, allowed):
    """The schema fuzz found `Allow: POST` on /v1/tickets, which also serves GET (Starlette names the
    first route it tried); `Allow` lists the methods the schema documents for the path."""
    response = client.request(method, path, headers=alice.headers)
    assert_json_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed


def test_odd_form_values(client, alice, model_files):
    assert_json_error(register(client, alice.headers, model_files.ticket, name="x" * 500), 422)
    assert_json_error(register(client, alice.headers, model_files.ticket, name=""), 422)
    assert_json_error(register(client, alice.headers, model_files.ticket, name="nul\x00byte"), 422)
    assert_json_error(register(client, alice.headers, model_files.ticket, arch="../../etc/passwd"), 422,
                      "unknown_arch")


def test_concurrent_appends_keep_one_chain(settings):
    errors: list[Exception] = []

    def create(index: int) -> None:
        try:
            make_account(settings, f"owner{index}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_factory(settings.resolved_database_url)() as session:
        report = verify_chain(session)
    assert report.ok and report.events_checked == 24
