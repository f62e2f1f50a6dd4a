"""The artifact store in an S3-compatible bucket, against a real S3 server (moto's) on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from service.app import create_app
from service.artifacts import ArtifactStore, ArtifactStoreError, make_store
from service.config import Settings
from service.db import session_factory
from service.models import Artifact
from tests.helpers import register, register_ok, verify_ok

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on 127.0.0.1, a free port; its base URL."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials from the environment; no profile or config file of the machine's user."""
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                     "TICKETGUARD_ARTIFACT_URL", "TICKETGUARD_S3_ENDPOINT_URL", "TICKETGUARD_S3_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3(s3_endpoint: str, aws_environment: None):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3) -> str:
    name = f"tg-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


def s3_store(url: str, endpoint: str, cache: Path, **kwargs):
    from service.artifacts_s3 import S3ArtifactStore

    return S3ArtifactStore(url, cache_dir=cache, endpoint_url=endpoint, region="us-east-1", **kwargs)


def keys(s3, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def cached_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts}


def test_content_addressed_and_deduplicated(s3, bucket, s3_endpoint, tmp_path, monkeypatch):
    store = s3_store(f"s3://{bucket}/models/v1", s3_endpoint, tmp_path / "cache")
    uploads = []
    real_upload = store.client.upload_file
    monkeypatch.setattr(store.client, "upload_file", lambda *a, **k: uploads.append(a[2]) or real_upload(*a, **k))
    data = b"a lottery ticket" * 1000
    sha, size = store.put_bytes(data)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    source = tmp_path / "same.bin"
    source.write_bytes(data)
    assert store.put_bytes(data) == (sha, size) and store.put_file(source) == (sha, size)
    key = f"models/v1/{sha[:2]}/{sha}"
    assert uploads == [key]  # stored once: the later writes found it in the bucket
    assert keys(s3, bucket) == {key}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert store.path(sha) == tmp_path / "cache" / sha[:2] / sha and store.path(sha).read_bytes() == data
    assert store.exists(sha) and not store.exists("0" * 64)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_round_trip_through_a_fresh_cache(bucket, s3_endpoint, tmp_path):
    writer = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "writer")
    data = os.urandom(300_000)
    sha, _ = writer.put_bytes(data)
    reader = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "reader")
    assert not (tmp_path / "reader" / sha[:2] / sha).exists()
    assert reader.path(sha).read_bytes() == data  # fetched
    with reader.open(sha) as handle:
        assert handle.read() == data  # from the cache
    assert cached_files(tmp_path / "reader") == {sha}
    assert list((tmp_path / "reader" / "tmp").iterdir()) == []


def test_a_cleared_cache_is_rebuilt_while_the_store_is_in_use(bucket, s3_endpoint, tmp_path):
    import shutil

    store = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "cache")
    first, _ = store.put_bytes(b"first")
    shutil.rmtree(tmp_path / "cache")  # an operator clears the cache of a running service
    second, _ = store.put_bytes(b"second")
    assert store.path(first).read_bytes() == b"first" and store.path(second).read_bytes() == b"second"


def test_missing_artifact_is_a_missing_file(bucket, s3_endpoint, tmp_path):
    store = s3_store(f"s3://{bucket}", s3_endpoint, tmp_path / "cache")
    missing = "ab" * 32
    assert not store.path(missing).exists()
    with pytest.raises(FileNotFoundError):
        store.open(missing)
    assert cached_files(tmp_path / "cache") == set()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_corrupt_object_is_refused_and_never_cached(s3, bucket, s3_endpoint, tmp_path):
    sha = hashlib.sha256(b"the real bytes").hexdigest()
    s3.put_object(Bucket=bucket, Key=f"p/{sha[:2]}/{sha}", Body=b"tampered bytes")
    store = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "cache")
    with pytest.raises(ArtifactStoreError, match=rf"s3://{bucket}/p.*p/{sha[:2]}/{sha} hashes to .*corrupt"):
        store.path(sha)
    assert not (tmp_path / "cache" / sha[:2] / sha).exists()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_corrupt_cache_file_is_fetched_again(bucket, s3_endpoint, tmp_path):
    data = os.urandom(50_000)
    sha, _ = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "cache").put_bytes(data)
    cached = tmp_path / "cache" / sha[:2] / sha
    cached.write_bytes(b"bit rot")
    assert s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "cache").path(sha).read_bytes() == data
    assert cached.read_bytes() == data


def test_large_files_are_uploaded_in_parts(s3, bucket, s3_endpoint, tmp_path):
    store = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "cache",
                     multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)  # S3's smallest part
    large, small = tmp_path / "large.bin", tmp_path / "small.bin"
    large.write_bytes(os.urandom(11 * MIB))
    small.write_bytes(os.urandom(MIB))
    large_sha, _ = store.put_file(large)
    small_sha, _ = store.put_file(small)
    assert s3.head_object(Bucket=bucket, Key=store.key(large_sha))["ETag"].strip('"').endswith("-3")
    assert "-" not in s3.head_object(Bucket=bucket, Key=store.key(small_sha))["ETag"]
    fresh = s3_store(f"s3://{bucket}/p", s3_endpoint, tmp_path / "fresh",
                     multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    assert fresh.path(large_sha).read_bytes() == large.read_bytes()  # fetched in ranged parts, then checked


def test_missing_bucket_and_unreachable_endpoint_are_clear_errors(s3_endpoint, tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, artifact_url="s3://no-such-bucket/p", s3_endpoint_url=s3_endpoint,
                        s3_region="us-east-1")
    with pytest.raises(ArtifactStoreError, match=r"s3://no-such-bucket/p.*does not exist"):
        make_store(settings)
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ArtifactStoreError, match=r"s3://no-such-bucket/p at http://127\.0\.0\.1:\d+.*connect"):
        make_store(settings.model_copy(update={"s3_endpoint_url": closed}))
    # the service refuses to start on it with that one line, as it does for an unreachable database
    with pytest.raises(SystemExit, match=r"s3://no-such-bucket/p.*does not exist"):
        create_app(settings.model_copy(update={"secret_key": "s"}))


def test_file_url_uses_the_local_store(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", artifact_url=f"file://{tmp_path / 'shared' / 'artifacts'}")
    store = make_store(settings)
    assert type(store) is ArtifactStore and store.root == tmp_path / "shared" / "artifacts"
    sha, _ = store.put_bytes(b"local bytes")
    assert store.path(sha) == tmp_path / "shared" / "artifacts" / sha[:2] / sha and store.path(sha).is_file()
    assert settings.child_environment()["TICKETGUARD_ARTIFACT_DIR"] == str(tmp_path / "shared" / "artifacts")
    assert make_store(Settings(data_dir=tmp_path / "data")).root == (tmp_path / "data" / "artifacts").resolve()
    for bad, message in (("http://example.com/a", "must be file:///absolute/path or s3://bucket/prefix"),
                         ("file://relative/dir", "absolute path"), ("s3:///prefix", "s3://bucket")):
        with pytest.raises(ValidationError, match=message):
            Settings(data_dir=tmp_path, artifact_url=bad)


def test_s3_settings_reach_workers_and_the_cache_is_local(tmp_path):
    settings = Settings(data_dir=tmp_path, artifact_url="s3://bucket/prefix", s3_endpoint_url="http://minio:9000",
                        s3_region="eu-west-1")
    env = settings.child_environment()
    assert env["TICKETGUARD_ARTIFACT_URL"] == "s3://bucket/prefix"
    assert env["TICKETGUARD_S3_ENDPOINT_URL"] == "http://minio:9000" and env["TICKETGUARD_S3_REGION"] == "eu-west-1"
    assert env["TICKETGUARD_ARTIFACT_DIR"] == str((tmp_path / "artifact-cache").resolve())
    local = Settings(data_dir=tmp_path).child_environment()
    assert "TICKETGUARD_ARTIFACT_URL" not in local and "TICKETGUARD_S3_ENDPOINT_URL" not in local


def test_the_embedded_default_never_imports_boto3(tmp_path):
    code = ("import sys; from service.config import Settings; from service.artifacts import make_store; "
            "import service.app, service.jobs.runner; "
            f"make_store(Settings(data_dir={str(tmp_path)!r})); "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGUARD_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).resolve().parents[1])


def test_register_and_verify_with_artifacts_in_s3(settings, alice, model_files, s3, bucket, s3_endpoint):
    s3_settings = settings.model_copy(update={"artifact_url": f"s3://{bucket}/tg", "s3_endpoint_url": s3_endpoint,
                                              "s3_region": "us-east-1"})
    cache = s3_settings.resolved_artifact_dir
    assert cache == (settings.data_dir / "artifact-cache").resolve()
    with TestClient(create_app(s3_settings), raise_server_exceptions=False) as client:
        ticket = register_ok(client, alice.headers, model_files.ticket)
        uploaded = cached_files(cache)
        assert hashlib.sha256(model_files.ticket.read_bytes()).hexdigest() in uploaded
        for stale in uploaded:  # the verification job must read what it needs from the bucket
            (cache / stale[:2] / stale).unlink()
        result = verify_ok(client, alice.headers, model_files.stolen, ticket_id=ticket["id"])
        assert result["verdict"] == "match" and result["p_value"] <= 1e-3
        download = client.get(f"/v1/tickets/{ticket['id']}/model", headers=alice.headers)
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == ticket["model_sha256"]
    with session_factory(s3_settings.resolved_database_url)() as session:
        recorded = set(session.execute(select(Artifact.sha256)).scalars())
    stored = keys(s3, bucket)
    expected = {hashlib.sha256(model_files.ticket.read_bytes()).hexdigest(),
                hashlib.sha256(model_files.stolen.read_bytes()).hexdigest(), ticket["model_sha256"]}
    assert expected <= recorded
    assert {f"tg/{sha[:2]}/{sha}" for sha in recorded} <= stored
    assert all(key.startswith("tg/") for key in stored)
    assert cached_files(cache) <= {key.rsplit("/", 1)[1] for key in stored}
    default_dir = settings.data_dir / "artifacts"  # the local store of the embedded default: unused
    assert not default_dir.exists() or cached_files(default_dir) == set()
    assert list((cache / "tmp").iterdir()) == []


def test_a_job_the_object_store_failed_is_retried_at_no_cost(settings, alice, model_files, bucket, s3_endpoint,
                                                             monkeypatch):
    """A worker that cannot reach the bucket exits with the transient code: the job goes back to the
    queue with its attempt given back (even its only one), and runs once the store is back."""
    import time

    from service.jobs.executors import LocalSupervisor
    from service.models import Job

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3_settings = settings.model_copy(update={"artifact_url": f"s3://{bucket}/tg", "s3_endpoint_url": s3_endpoint,
                                              "s3_region": "us-east-1", "executor": "external", "max_attempts": 1})
    with TestClient(create_app(s3_settings)) as client:
        job_id = register(client, alice.headers, model_files.ticket).json()["job_id"]
    with socket.socket() as probe:  # a loopback port nobody listens on: the store is down for the worker
        probe.bind(("127.0.0.1", 0))
        down = s3_settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{probe.getsockname()[1]}"})

    def job() -> Job:
        with session_factory(settings.resolved_database_url)() as session:
            return session.get(Job, job_id)

    supervisor = LocalSupervisor(down)
    try:
        supervisor.tick()  # claims and starts the worker
        deadline = time.monotonic() + 120
        while supervisor.running and time.monotonic() < deadline:
            time.sleep(0.2)
            supervisor.tick()
    finally:
        supervisor.stop()
    assert (job().status, job().attempts) == ("queued", 0)
    assert "code 75" in job().message
    back = LocalSupervisor(s3_settings, poll_interval=0.1)
    back.start()
    try:
        deadline = time.monotonic() + 120
        while job().status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        back.stop()
    assert (job().status, job().attempts) == ("succeeded", 1)


def test_requests_get_503_while_the_bucket_is_unusable(settings, alice, model_files, s3, bucket, s3_endpoint):
    s3_settings = settings.model_copy(update={"artifact_url": f"s3://{bucket}/tg", "s3_endpoint_url": s3_endpoint,
                                              "s3_region": "us-east-1"})
    with TestClient(create_app(s3_settings), raise_server_exceptions=False) as client:
        s3.delete_bucket(Bucket=bucket)  # gone after start-up: every upload fails until it is back
        response = register(client, alice.headers, model_files.ticket)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "artifact_store_unavailable"
        s3.create_bucket(Bucket=bucket)
        assert register(client, alice.headers, model_files.ticket).status_code == 202


def test_checkpoints_go_to_an_object_locked_bucket(settings, alice, s3, s3_endpoint, monkeypatch):
    """The transparency log's witness in S3: each checkpoint an object under COMPLIANCE retention, which
    verifies against the log's public key."""
    import json

    from typer.testing import CliRunner

    import service.cli as cli
    from service.audit.log_key import signing_key
    from service.audit.merkle import TreeHead
    from service.config import get_settings

    locked = f"witness-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    for name, value in {"DATA_DIR": settings.data_dir, "DATABASE_URL": settings.resolved_database_url,
                        "SECRET_KEY": "test-secret", "AUDIT_WITNESS_URL": f"s3://{locked}/log",
                        "AUDIT_WITNESS_RETENTION_DAYS": 7, "S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(f"TICKETGUARD_{name}", str(value))
    get_settings.cache_clear()
    try:
        written = CliRunner().invoke(cli.app, ["audit", "witness"])
        again = CliRunner().invoke(cli.app, ["audit", "witness"])
    finally:
        get_settings.cache_clear()
    assert written.exit_code == 0 and f"s3://{locked}/log/checkpoint-" in written.output, written.output
    assert again.exit_code == 0, again.output
    keys = [v["Key"] for v in s3.list_object_versions(Bucket=locked)["Versions"]]  # never written twice
    assert len(keys) == 1 and keys[0].startswith("log/checkpoint-000000000002-"), keys
    assert s3.head_object(Bucket=locked, Key=keys[0])["ObjectLockMode"] == "COMPLIANCE"
    head = TreeHead.from_dict(json.loads(s3.get_object(Bucket=locked, Key=keys[0])["Body"].read()))
    head.verify(signing_key(settings).public_key())
