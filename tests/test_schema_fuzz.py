"""Schema fuzzing: schemathesis against the live OpenAPI schema of a real server, every operation, with auth.

The app runs under uvicorn on a free 127.0.0.1 port; the schema is the one it serves at /openapi.json.
Every operation is fuzzed twice, with an owner's key and with an admin's: no 5xx, and every response
(status code, content type, headers, JSON body) is one the schema documents.

The executor is "external": a fuzzed POST leaves its job queued instead of training a network, which
keeps the run to seconds. So that operations on existing objects answer something other than 404, a
small world is built first through the same API, its jobs run here one by one (a found ticket, that
ticket registered with a QR signature and a trigger set, its lock, a verification, an attack report and an
uploaded dataset), and generated ids are swapped for those ids half of the time.

It runs on SQLite and on PostgreSQL (which refuses some of what SQLite stores: NUL characters, NaN in
JSON), each a module-wide database: 20-45 s each on 2 cores, most of it the fuzz itself.

More examples: TICKETGUARD_FUZZ_EXAMPLES=200 python -m pytest tests/test_schema_fuzz.py (CI: 15).
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from service.app import create_app
from service.config import Settings
from service.jobs.executors import InlineExecutor
from tests.conftest import Account, make_account
from tests.helpers import migrated_database

EXAMPLES = int(os.environ.get("TICKETGUARD_FUZZ_EXAMPLES", "15"))
SEED = int(os.environ.get("TICKETGUARD_FUZZ_SEED", "20240601"))

# What this test is about: no server errors, responses as the schema promises them, and 405s that name the
# path's methods. schemathesis' other checks judge input leniency rather than responses: positive_data_acceptance
# fails every rule the schema cannot state (an `arch` that is a string but no architecture), and
# negative_data_rejection fails pydantic's lax `"admin": 0` -> false and multipart forms, where every field is a
# string on the wire; use_after_free and the like need a stateful run.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, unsupported_method, allow_header_conformance]


@dataclass
class World:
    base_url: str
    owner: Account
    admin: Account
    # parameter or body field -> existing values; keyed by (operation path, name) where one operation needs
    # particular ones (the found-ticket download: the find job), else by name alone
    pools: dict[str | tuple[str, str], list[str]] = field(default_factory=dict)

    def pool(self, path: str, name: str) -> list[str]:
        return self.pools.get((path, name), self.pools.get(name, []))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dataset_npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.random((20, 1, 4, 4), dtype=np.float32), y_train=np.arange(20) % 2,
             x_test=rng.random((10, 1, 4, 4), dtype=np.float32), y_test=np.arange(10) % 2)
    return buffer.getvalue()


def _seed(client: httpx.Client, executor: InlineExecutor, owner: Account) -> dict:
    """The objects fuzzed ids are swapped for, each built through the API and its job run to the end."""
    headers = owner.headers

    def done(response: httpx.Response) -> dict:
        assert response.status_code in (201, 202), response.text
        body = response.json()
        if "job_id" in body:
            executor.submit(body["job_id"])
            job = client.get(f"/v1/jobs/{body['job_id']}", headers=headers).json()
            assert job["status"] == "succeeded", job
        return body

    find = done(client.post("/v1/tickets/find", headers=headers, json={
        "arch": "lenet300_100", "dataset": "digits", "method": "oneshot",
        "hyperparameters": {"target_density": 0.3, "train": {"epochs": 1}}}))
    ticket = done(client.post("/v1/tickets", headers=headers, data={
        "name": "fuzzed", "from_job": find["job_id"], "signature": "qr", "recovery_epochs": "0",
        "trigger_set": "true", "trigger_size": "10", "trigger_epochs": "1"}))
    lock = done(client.post(f"/v1/tickets/{ticket['id']}/lock", headers=headers, json={"epochs": 1}))
    model = client.get(f"/v1/tickets/{ticket['id']}/model", headers=headers)
    assert model.status_code == 200, model.text
    verification = done(client.post("/v1/verifications", headers=headers, data={"ticket_id": ticket["id"]},
                                    files={"model": ("suspect.safetensors", model.content)}))
    report = done(client.post(f"/v1/tickets/{ticket['id']}/attacks", headers=headers, json={
        "attacks": [{"name": "prune_magnitude", "strengths": [0.05]}]}))
    dataset = done(client.post("/v1/datasets", headers=headers, data={"name": "tiny"},
                               files={"file": ("tiny.npz", _dataset_npz())}))
    evidence = client.get(f"/v1/verifications/{verification['id']}", headers=headers).json()["evidence"]
    assert "window" in (evidence.get("qr") or {}), evidence
    plots = client.get(f"/v1/attack-reports/{report['id']}", headers=headers).json()["plots"]
    assert plots, "the attack report has no plot"
    jobs = [find["job_id"], ticket["job_id"], lock["job_id"], verification["job_id"], report["job_id"]]
    return {
        "ticket_id": [ticket["id"]], "verification_id": [verification["id"]], "report_id": [report["id"]],
        "dataset_id": [dataset["id"]], "job_id": jobs, "from_job": [find["job_id"]],
        "arch": ["lenet300_100"], "dataset": ["digits", dataset["id"]], "data": ["digits"],
        ("/v1/jobs/{job_id}/ticket", "job_id"): [find["job_id"]],
        ("/v1/verifications/{verification_id}/evidence/{name}", "name"): ["expected.png", "window.png",
                                                                          "difference.png"],
        ("/v1/attack-reports/{report_id}/plots/{name}", "name"): [url.rsplit("/", 1)[1] for url in plots.values()],
    }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the whole module: a SQLite file, or a fresh PostgreSQL database."""
    with migrated_database(request.param, tmp_path_factory.mktemp("fuzzdb"), prefix="tg_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(data_dir=root / "data", database_url=database_url, executor="external",
                            secret_key="fuzz-secret", max_upload_bytes=4 * 1024 * 1024, verify_permutations=99)
    app = create_app(app_settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fuzzed-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        found = World(f"http://127.0.0.1:{port}", make_account(app_settings, "alice"),
                      make_account(app_settings, "root", admin=True))
        with httpx.Client(base_url=found.base_url, timeout=120) as client:
            found.pools = _seed(client, InlineExecutor(app_settings), found.owner)
        yield found
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(params=["owner", "admin"])
def key(request: pytest.FixtureRequest, world: World) -> Account:
    return getattr(world, request.param)


@pytest.fixture
def api_schema(world: World, key: Account):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "deterministic": True},
    })
    schema = schemathesis.openapi.from_url(f"{world.base_url}/openapi.json", config=config)

    def swapped(values, path: str) -> st.SearchStrategy:
        """Half of the time, each value that has existing counterparts becomes one of them."""
        if not isinstance(values, dict):
            return st.just(values)
        return st.fixed_dictionaries({
            name: st.one_of(st.just(value), st.sampled_from(world.pool(path, name))) if world.pool(path, name)
            else st.just(value) for name, value in values.items()})

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        return swapped(path_parameters, context.operation.path)

    @schema.hook
    def flatmap_query(context, query):
        return swapped(query, context.operation.path)

    @schema.hook
    def flatmap_body(context, body):
        return swapped(body, context.operation.path)

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, key: Account) -> None:
    case.call_and_validate(headers=key.headers, checks=CHECKS)


FILES = {"/v1/tickets/{ticket_id}/model": "application/octet-stream",
         "/v1/tickets/{ticket_id}/locked-model": "application/octet-stream",
         "/v1/tickets/{ticket_id}/trigger-set": "application/octet-stream",
         "/v1/jobs/{job_id}/ticket": "application/octet-stream",
         "/v1/verifications/{verification_id}/evidence/{name}": "image/png",
         "/v1/attack-reports/{report_id}/plots/{name}": "image/png",
         "/v1/attack-reports/{report_id}": "text/csv"}


def test_schema_documents_error_bodies_and_file_types(world: World) -> None:
    """What the fuzz holds the API to, stated once: every /v1 error is an ErrorBody (FastAPI's own 422 shape,
    `{"detail": [...]}`, is never sent), and downloads name their media types."""
    spec = httpx.get(f"{world.base_url}/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path.startswith("/v1/"):
                for status in ("400", "401", "403", "404", "409", "413", "422", "503"):
                    assert operation["responses"][status]["content"]["application/json"]["schema"] == error, (
                        method, path, status)
    for path, media_type in FILES.items():
        assert media_type in spec["paths"][path]["get"]["responses"]["200"]["content"], path
