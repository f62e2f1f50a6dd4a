"""The API key is checked before a body is read, and non-upload bodies have a small cap."""

from __future__ import annotations

from tests.helpers import assert_json_error


def _chunks(total: int, size: int = 64 * 1024):
    for _ in range(total // size):
        yield b"x" * size


def test_anonymous_or_bad_key_is_refused_before_the_body_is_read(client):
    # 6 MB, past the 4 MiB test cap: without a key the answer is 401, not the 413 of reading it
    for headers in ({}, {"Authorization": "Bearer tg_not-a-key"}, {"Authorization": "Basic abc"}):
        response = client.post("/v1/tickets", content=_chunks(6 * 1024 * 1024),
                               headers={"content-type": "multipart/form-data; boundary=x", **headers})
        assert_json_error(response, 401)
    assert_json_error(client.post("/v1/owners", json={"name": "x"}), 401)


def test_json_bodies_are_capped_at_one_mebibyte(client, alice):
    big = b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    declared = client.post("/v1/tickets/find", content=big,
                           headers={"content-type": "application/json", **alice.headers})
    assert_json_error(declared, 413)
    streamed = client.post("/v1/tickets/find", content=_chunks(2 * 1024 * 1024),
                           headers={"content-type": "application/json", **alice.headers})
    assert_json_error(streamed, 413)
    small = client.post("/v1/tickets/find", json={"arch": "lenet300_100", "dataset": "digits",
                                                  "method": "nope"}, headers=alice.headers)
    assert small.status_code == 422


def test_health_and_reads_pass_the_gate(client, alice):
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/me", headers=alice.headers).status_code == 200
