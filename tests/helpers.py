"""Small helpers for API tests."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.db import get_engine
from service.migrate import upgrade

POSTGRES_URL = os.environ.get("TICKETGUARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def upload(client: TestClient, url: str, path: Path | bytes, headers: dict, **fields) -> object:
    content = path if isinstance(path, bytes) else path.read_bytes()
    data = {k: v for k, v in fields.items() if v is not None}
    return client.post(url, headers=headers, data=data,
                       files={"model": ("model.bin", content, "application/octet-stream")})


def register(client: TestClient, headers: dict, path: Path | bytes, *, arch: str = "lenet300_100",
             dataset: str = "digits", name: str = "my ticket", signature: str = "fingerprint", **fields):
    """Register a ticket; without a QR signature unless asked (`signature="qr"`), so the registered
    weights are the uploaded ones."""
    return upload(client, "/v1/tickets", path, headers, arch=arch, dataset=dataset, name=name,
                  signature=signature, **fields)


def register_ok(client: TestClient, headers: dict, path: Path, **kwargs) -> dict:
    response = register(client, headers, path, **kwargs)
    assert response.status_code == 202, response.text
    ticket = client.get(f"/v1/tickets/{response.json()['id']}", headers=headers).json()
    assert ticket["status"] == "registered", ticket
    return ticket


def verify_ok(client: TestClient, headers: dict, path: Path, ticket_id: str | None = None) -> dict:
    response = upload(client, "/v1/verifications", path, headers, ticket_id=ticket_id)
    assert response.status_code == 202, response.text
    result = client.get(f"/v1/verifications/{response.json()['id']}", headers=headers).json()
    assert result["status"] == "completed", result
    return result


def assert_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@contextmanager
def http_server(handle: Callable[[BaseHTTPRequestHandler, bytes], tuple[int, dict, bytes]]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread; `handle(request, body)` returns (status, headers,
    body). Yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            status, headers, body = handle(self, self.rfile.read(int(self.headers.get("content-length") or 0)))
            self.send_response(status)
            for name, value in {"content-length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def wait_for(predicate: Callable[[], object], what: str, *, timeout: float = 300.0, interval: float = 0.02):
    """Poll until `predicate()` is truthy and return its value; fail naming `what` after `timeout`
    (generous: a loaded 2-core machine is slow, and a passing test never waits it out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def job_row(settings, job_id: str):
    """The job as the database has it now."""
    from service.db import session_factory
    from service.models import Job

    with session_factory(settings.resolved_database_url)() as session:
        return session.get(Job, job_id)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def fresh_database(admin_url: str = POSTGRES_URL, prefix: str = "tg_served") -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of `admin_url`; dropped (connections and all) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        get_engine(url).dispose()  # this process's pooled connections
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_database(kind: str, folder: Path, *, prefix: str = "tg_test") -> Iterator[str]:
    """An empty database brought to head with Alembic: a SQLite file in `folder` (`kind` "sqlite"), or
    a fresh PostgreSQL database (`kind` "postgresql") dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / 'ticketguard.db'}"
        upgrade(url)
        try:
            yield url
        finally:
            get_engine(url).dispose()
        return
    with fresh_database(prefix=prefix) as url:
        upgrade(url)
        yield url
