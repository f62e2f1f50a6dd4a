"""The remote-endpoint client's guard against server-side request forgery, and its contract checks,
against real sockets on 127.0.0.1 (allow-listed here, as an operator would)."""

from __future__ import annotations

import ipaddress
import json
import time

import numpy as np
import pytest

from service.triggers.endpoint import EndpointPolicy, EndpointRefused, query_endpoint, refused_reason, resolve_target
from tests.helpers import http_server

LOCAL = EndpointPolicy(allow_http_hosts=frozenset({"127.0.0.1"}),
                       allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), retries=1, retry_backoff=0.01)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "169.254.169.254", "10.1.2.3", "172.16.5.4", "172.31.255.1", "192.168.1.1", "0.0.0.0",
    "224.0.0.1", "100.64.0.1", "240.0.0.1", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1",
    "::ffff:169.254.169.254", "::ffff:10.0.0.1", "2002:7f00:1::1", "ff02::1", "::",
])
def test_non_public_addresses_are_refused(address):
    assert refused_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert refused_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url, message", [
    ("http://8.8.8.8/predict", "http is not allowed"),
    ("ftp://example.com/x", "https:// URL"),
    ("https:///nohost", "https:// URL"),
    ("https://user:pw@8.8.8.8/x", "credentials"),
    ("https://127.0.0.1/x", "loopback"),
    ("https://localhost/x", "loopback"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://10.0.0.5/x", "private"),
    ("https://[::1]/x", "loopback"),
    ("https://[::ffff:127.0.0.1]/x", "loopback"),
    ("https://[fe80::1]/x", "link-local"),
    ("https://host.invalid/x", "cannot resolve"),
    ("https://8.8.8.8:99999/x", "not a valid URL"),
])
def test_urls_the_guard_refuses_before_any_connection(url, message):
    with pytest.raises(EndpointRefused, match=message):
        resolve_target(url, EndpointPolicy())


def test_an_allow_listed_network_and_http_host_pass_and_pin_the_address():
    target = resolve_target("http://127.0.0.1:8080/predict", LOCAL)
    assert (target.host, target.port, target.address) == ("127.0.0.1", 8080, "127.0.0.1")
    with pytest.raises(EndpointRefused, match="http is not allowed"):  # the network alone does not allow http
        resolve_target("http://127.0.0.2/x", LOCAL)


def _labels(body: bytes, label: int = 3) -> tuple[int, dict, bytes]:
    inputs = json.loads(body)["inputs"]
    return 200, {"content-type": "application/json"}, json.dumps({"labels": [label] * len(inputs)}).encode()


def test_a_real_server_answers_in_bounded_batches():
    sizes = []

    def handle(request, body):
        sizes.append(len(json.loads(body)["inputs"]))
        return _labels(body)

    policy = EndpointPolicy(**{**LOCAL.__dict__, "batch_size": 16})
    with http_server(handle) as url:
        labels = query_endpoint(f"{url}/predict", np.zeros((40, 1, 8, 8), np.float32), 10, policy)
    assert labels.tolist() == [3] * 40 and sizes == [16, 16, 8]


def test_redirects_are_refused_not_followed():
    calls = []

    def handle(request, body):
        calls.append(request.path)
        return 302, {"location": "http://169.254.169.254/latest/meta-data"}, b""

    with http_server(handle) as url, pytest.raises(EndpointRefused, match="redirect"):
        query_endpoint(f"{url}/predict", np.zeros((2, 4), np.float32), 10, LOCAL)
    assert calls == ["/predict"]


def test_an_oversize_answer_is_refused():
    def handle(request, body):
        return 200, {"content-type": "application/json"}, b'{"labels": [' + b"1," * 200_000 + b"1]}"

    policy = EndpointPolicy(**{**LOCAL.__dict__, "max_response_bytes": 10_000})
    with http_server(handle) as url, pytest.raises(EndpointRefused, match="exceeds 10000 bytes"):
        query_endpoint(f"{url}/predict", np.zeros((2, 4), np.float32), 10, policy)


def test_server_errors_are_retried_a_bounded_number_of_times():
    calls = []

    def flaky(request, body):
        calls.append(1)
        return (503, {}, b"busy") if len(calls) == 1 else _labels(body)

    with http_server(flaky) as url:
        assert query_endpoint(f"{url}/p", np.zeros((2, 4), np.float32), 10, LOCAL).tolist() == [3, 3]
    calls.clear()
    with http_server(lambda request, body: (500, {}, b"down")) as url, \
            pytest.raises(EndpointRefused, match="failed 2 times"):
        query_endpoint(f"{url}/p", np.zeros((2, 4), np.float32), 10, LOCAL)


def test_a_slow_endpoint_times_out():
    def slow(request, body):
        time.sleep(1.0)
        return _labels(body)

    policy = EndpointPolicy(**{**LOCAL.__dict__, "read_timeout": 0.2, "retries": 0})
    with http_server(slow) as url, pytest.raises(EndpointRefused, match="timed out"):
        query_endpoint(f"{url}/p", np.zeros((2, 4), np.float32), 10, policy)


@pytest.mark.parametrize("answer, message", [
    (b"not json", "not JSON"),
    (b'{"labels": [1]}', "2 integers"),
    (b'{"labels": [1, 12]}', r"\[0, 10\)"),
    (b'{"logits": [[0.1], [0.2]]}', "rows of 10"),
    (b'{"labels": [1, 2], "logits": []}', "exactly one"),
])
def test_answers_that_break_the_contract_are_refused(answer, message):
    with http_server(lambda request, body: (200, {}, answer)) as url, pytest.raises(EndpointRefused, match=message):
        query_endpoint(f"{url}/p", np.zeros((2, 4), np.float32), 10, LOCAL)


def test_the_host_is_resolved_once_and_the_connection_goes_to_that_address(monkeypatch):
    import socket

    lookups, real_getaddrinfo = [], socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):  # a DNS server that would rebind on a second lookup
        if host != "pinned.test":
            return real_getaddrinfo(host, port, *args, **kwargs)  # the pinned IP literal itself
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr("service.triggers.endpoint.socket.getaddrinfo", fake_getaddrinfo)
    policy = EndpointPolicy(**{**LOCAL.__dict__, "allow_http_hosts": frozenset({"pinned.test"})})
    seen_hosts = []

    def handle(request, body):
        seen_hosts.append(request.headers["host"])
        return _labels(body)

    with http_server(handle) as url:
        port = url.rsplit(":", 1)[1]
        labels = query_endpoint(f"http://pinned.test:{port}/p", np.zeros((70, 4), np.float32), 10, policy)
    assert labels.tolist() == [3] * 70
    assert lookups == ["pinned.test"] and seen_hosts == [f"pinned.test:{port}"] * 2  # two batches, one lookup
