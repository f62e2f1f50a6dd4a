"""Querying a suspect's remote prediction endpoint from a worker, guarded against server-side request
forgery.

The contract (README, "the endpoint contract"): `POST <endpoint>` with `{"inputs": [...]}` (a batch of inputs at the
dataset's input shape, raw values in [0, 1]) answers 200 with `{"labels": [...]}` or
`{"logits": [[...], ...]}`, one row per input.

The guard: https only, unless the operator allows http for a named host; no user:password in the
URL; the host resolved once, and every address it resolves to must be public (not private,
loopback, link-local (cloud metadata at 169.254.169.254 included), multicast, reserved, unspecified,
shared or otherwise non-global; IPv4-mapped, 6to4 and Teredo IPv6 addresses are judged by the IPv4
address inside) unless the operator allow-lists its network; the connection goes to that resolved
address (no second lookup for a rebinding DNS server to answer differently), with TLS still
verified against the host name; redirects are refused, not followed; connect and read timeouts, a
response size cap, bounded batches and a bounded number of retries.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import numpy as np

from service.jobs.context import JobFailed
from service.triggers.answers import parse_answers

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EndpointRefused(JobFailed):
    """The URL may not be called, or the endpoint broke the contract; the message says why."""


@dataclass(frozen=True)
class EndpointPolicy:
    """What the operator allows (`TICKETGUARD_ENDPOINT_*`) and the limits on every call."""

    allow_http_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[Network, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_response_bytes: int = 1 << 20
    batch_size: int = 64
    retries: int = 2
    retry_backoff: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    address: str  # the one resolved address every connection goes to


def refused_reason(address: Address) -> str | None:
    """Why an address may not be called (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if inner is not None:
            reason = refused_reason(inner)
            return f"{reason} (inside {address})" if reason else None
    for check, reason in (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
                          ("is_multicast", "a multicast address"), ("is_unspecified", "the unspecified address"),
                          ("is_reserved", "a reserved address"), ("is_private", "a private address")):
        if getattr(address, check):
            return reason
    if not address.is_global:
        return "not a global address"
    return None


def resolve_target(url: str, policy: EndpointPolicy) -> Target:
    """Check the URL against the policy and resolve its host once; EndpointRefused says why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"not a valid URL: {exc}") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise EndpointRefused("the endpoint must be an https:// URL with a host")
    if parts.scheme == "http" and host not in policy.allow_http_hosts:
        raise EndpointRefused(f"http is not allowed for {host}: use https (the operator can allow http per host)")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("credentials in the URL are not accepted")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointRefused(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    for address in addresses:
        reason = refused_reason(address)
        if reason and not any(address in network for network in policy.allow_networks):
            raise EndpointRefused(f"{host} resolves to {address}, {reason}; refused (the operator can allow "
                                  "a network with TICKETGUARD_ENDPOINT_ALLOW_NETWORKS)")
    if not addresses:
        raise EndpointRefused(f"{host} resolves to no address")
    return Target(url=url, host=host, port=port, address=str(addresses[0]))


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects only to the target's resolved address, whatever name the request carries."""

    def __init__(self, target: Target) -> None:
        self._target, self._backend = target, httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        if host.lower() != self._target.host or port != self._target.port:
            raise httpcore.ConnectError(f"refusing a connection to {host}:{port}")
        return self._backend.connect_tcp(self._target.address, port, timeout=timeout, local_address=local_address,
                                         socket_options=socket_options)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _post(pool: httpcore.ConnectionPool, target: Target, body: bytes, policy: EndpointPolicy) -> object:
    """One POST; the decoded JSON body. Retries connection failures and 5xx a bounded number of times."""
    timeouts = {"connect": policy.connect_timeout, "read": policy.read_timeout, "write": policy.read_timeout,
                "pool": policy.connect_timeout}
    headers = {"content-type": "application/json", "accept": "application/json", **policy.headers}
    last = "no attempt"
    for attempt in range(policy.retries + 1):
        if attempt:
            time.sleep(policy.retry_backoff * 2 ** (attempt - 1))
        try:
            with pool.stream("POST", target.url, headers=headers, content=body,
                             extensions={"timeout": timeouts}) as response:
                if 300 <= response.status < 400:
                    raise EndpointRefused(f"the endpoint answered {response.status} (a redirect); redirects are "
                                          "not followed")
                data = bytearray()
                for chunk in response.iter_stream():
                    data += chunk
                    if len(data) > policy.max_response_bytes:
                        raise EndpointRefused(f"the endpoint's response exceeds {policy.max_response_bytes} bytes")
                status = response.status
        except httpcore.TimeoutException as exc:
            last = f"timed out: {type(exc).__name__}"
            continue
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            last = f"connection failed: {type(exc).__name__}: {exc}"
            continue
        if status >= 500:
            last = f"the endpoint answered {status}"
            continue
        if status != 200:
            raise EndpointRefused(f"the endpoint answered {status}")
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EndpointRefused(f"the endpoint's answer is not JSON: {exc}") from None
    raise EndpointRefused(f"the endpoint failed {policy.retries + 1} times; last: {last}")


def query_endpoint(url: str, inputs: np.ndarray, num_classes: int, policy: EndpointPolicy) -> np.ndarray:
    """The endpoint's labels for `inputs` (float32, (n, *shape)), sent in batches of at most
    `policy.batch_size` over one pinned connection pool."""
    target = resolve_target(url, policy)
    labels = []
    with httpcore.ConnectionPool(ssl_context=ssl.create_default_context(), network_backend=_PinnedBackend(target),
                                 max_connections=1) as pool:
        for start in range(0, len(inputs), policy.batch_size):
            batch = inputs[start:start + policy.batch_size]
            body = json.dumps({"inputs": np.asarray(batch, dtype=np.float32).tolist()}).encode()
            answer = _post(pool, target, body, policy)
            try:
                labels.append(parse_answers(answer, len(batch), num_classes))
            except ValueError as exc:
                raise EndpointRefused(f"the endpoint broke the contract: {exc}") from None
    return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def post_once(url: str, body: bytes, policy: EndpointPolicy, headers: dict[str, str]) -> int:
    """One POST of `body` to `url` under the same guard (public address or allow-listed, pinned, no
    redirects, timeouts); the response's status, its body unread. EndpointRefused where the URL may not
    be called or the connection fails."""
    target = resolve_target(url, policy)
    timeouts = {"connect": policy.connect_timeout, "read": policy.read_timeout, "write": policy.read_timeout,
                "pool": policy.connect_timeout}
    with httpcore.ConnectionPool(ssl_context=ssl.create_default_context(), network_backend=_PinnedBackend(target),
                                 max_connections=1) as pool:
        try:
            with pool.stream("POST", target.url, headers={"content-type": "application/json", **headers},
                             content=body, extensions={"timeout": timeouts}) as response:
                return response.status
        except httpcore.TimeoutException as exc:
            raise EndpointRefused(f"timed out: {type(exc).__name__}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise EndpointRefused(f"connection failed: {type(exc).__name__}: {exc}") from None


def policy_from_settings(settings) -> EndpointPolicy:
    """The operator's `TICKETGUARD_ENDPOINT_*` settings as a policy."""
    hosts = frozenset(h.strip().lower() for h in settings.endpoint_allow_http_hosts.split(",") if h.strip())
    networks = tuple(ipaddress.ip_network(n.strip(), strict=False)  # validated when the settings load
                     for n in settings.endpoint_allow_networks.split(",") if n.strip())
    return EndpointPolicy(allow_http_hosts=hosts, allow_networks=networks,
                          connect_timeout=settings.endpoint_connect_timeout,
                          read_timeout=settings.endpoint_read_timeout,
                          max_response_bytes=settings.endpoint_max_response_bytes,
                          batch_size=settings.endpoint_batch_size)
