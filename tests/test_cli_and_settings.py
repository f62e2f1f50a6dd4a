"""Settings, the secret, schema checks at start-up, and the admin CLI."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from service.app import prepare_database
from service.cli import app as cli_app
from service.config import Settings, get_settings
from service.db import get_engine
from service.migrate import upgrade
from service.security import hash_api_key
from tests.helpers import POSTGRES_URL

UNREACHABLE_URL = "postgresql+psycopg://u:secretpw@127.0.0.1:1/x"


@pytest.fixture
def embedded_env(tmp_path, monkeypatch):
    monkeypatch.delenv("TICKETGUARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("TICKETGUARD_SECRET_KEY", raising=False)
    monkeypatch.setenv("TICKETGUARD_DATA_DIR", str(tmp_path / "tg"))
    get_settings.cache_clear()
    yield tmp_path / "tg"
    get_settings.cache_clear()


def test_secret_is_generated_once_with_owner_only_permissions(tmp_path):
    settings = Settings(data_dir=tmp_path / "d")
    first = settings.secret()
    path = tmp_path / "d" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64 and Settings(data_dir=tmp_path / "d").secret() == first
    assert Settings(data_dir=tmp_path / "other").secret() != first


def test_concurrent_first_starts_agree_on_one_complete_secret(tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    start = threading.Barrier(8)

    def first_start() -> bytes:
        start.wait()
        return Settings(data_dir=data_dir).secret()

    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: first_start(), range(8)))
    assert len(set(values)) == 1 and len(values[0]) == 64
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    assert [path.name for path in data_dir.iterdir()] == ["secret.key"]


@pytest.mark.parametrize("content", ["", " \n"])
def test_an_empty_secret_file_is_refused(tmp_path, content):
    tmp_path.joinpath("secret.key").write_text(content)
    with pytest.raises(RuntimeError, match="secret.key is empty"):
        Settings(data_dir=tmp_path).secret()


def test_owners_create_prints_the_key_last_and_it_works(embedded_env):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["owners", "create", "dana", "--admin"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("tg_")
    settings = get_settings()
    from sqlalchemy import select

    from service.db import session_factory
    from service.models import ApiKey, Owner
    with session_factory(settings.resolved_database_url)() as session:
        owner = session.execute(select(Owner)).scalar_one()
        stored = session.execute(select(ApiKey.key_hash)).scalar_one()
    assert owner.name == "dana" and owner.is_admin
    assert stored == hash_api_key(settings.secret(), key)
    again = runner.invoke(cli_app, ["owners", "create", "dana"])
    assert again.exit_code == 1 and "already exists" in again.output
    odd = runner.invoke(cli_app, ["owners", "create", "bad name\x00"])
    assert odd.exit_code == 1 and "owner names are" in odd.output


def test_migrate_command(embedded_env):
    result = CliRunner().invoke(cli_app, ["migrate"])
    assert result.exit_code == 0 and "revision" in result.output
    assert (embedded_env / "ticketguard.db").exists()


def test_external_database_behind_the_code_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SystemExit, match="ticketguard migrate"):
        prepare_database(settings)


def test_refusal_of_a_database_behind_the_code_hides_the_password(tmp_path):
    name = f"tg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name, password="secretpw")
    try:
        with pytest.raises(SystemExit, match="ticketguard migrate") as refused:
            prepare_database(Settings(data_dir=tmp_path, database_url=url.render_as_string(hide_password=False)))
        assert "secretpw" not in str(refused.value.code) and "***" in str(refused.value.code)
    finally:
        get_engine(url.render_as_string(hide_password=False)).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["supervise"], ["owners", "create", "dana"],
                                     ["audit", "verify"]])
def test_unreachable_database_is_one_line_without_the_password(embedded_env, monkeypatch, command):
    monkeypatch.setenv("TICKETGUARD_DATABASE_URL", UNREACHABLE_URL)
    result = CliRunner().invoke(cli_app, command)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "secretpw" not in result.output
    assert "cannot use the database at postgresql+psycopg://u:***@127.0.0.1:1/x: " in result.output


@pytest.mark.parametrize("url", [UNREACHABLE_URL, "postgresql+nodriver://u:secretpw@h/x", "mysql://u:secretpw@h/x",
                                 "not a url secretpw"])
def test_bad_database_url_exits_with_one_line_on_stderr(tmp_path, url):
    env = dict(os.environ, TICKETGUARD_DATA_DIR=str(tmp_path), TICKETGUARD_DATABASE_URL=url)
    done = subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "secretpw" not in done.stderr
    assert done.stderr.startswith("cannot use the database at ")


def _stamp_unknown_revision(path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")


def test_database_newer_than_the_code_says_so(embedded_env, tmp_path):
    external = tmp_path / "external.db"
    upgrade(f"sqlite:///{external}")
    _stamp_unknown_revision(external)
    with pytest.raises(SystemExit, match="newer than this TicketGuard; upgrade TicketGuard"):
        prepare_database(Settings(data_dir=tmp_path, database_url=f"sqlite:///{external}"))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["migrate"]).exit_code == 0
    _stamp_unknown_revision(embedded_env / "ticketguard.db")
    for command in (["migrate"], ["audit", "verify"]):
        result = runner.invoke(cli_app, command)
        assert result.exit_code == 1, result.output
        assert "the database schema is newer than this TicketGuard; upgrade TicketGuard" in result.output
        assert "ticketguard migrate" not in result.output


def test_client_commands_need_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("TICKETGUARD_API_KEY", raising=False)
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    result = CliRunner().invoke(cli_app, ["verify", str(model)])
    assert result.exit_code == 2 and "API key" in result.output


def test_client_reports_an_unreachable_server(monkeypatch, tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    result = CliRunner().invoke(cli_app, ["verify", str(model), "--url", "http://127.0.0.1:9",
                                          "--api-key", "tg_x"])
    assert result.exit_code == 1 and "unreachable" in result.output


def test_worker_processes_share_the_cores_unless_the_operator_chose(monkeypatch, tmp_path):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    env = Settings(data_dir=tmp_path, workers=2, secret_key="s").child_environment()
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == share
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert Settings(data_dir=tmp_path, workers=2, secret_key="s").child_environment()["OMP_NUM_THREADS"] == "7"


def test_several_api_processes_need_an_external_executor(embedded_env):
    result = CliRunner().invoke(cli_app, ["serve", "--workers", "2"])
    assert result.exit_code == 2 and "TICKETGUARD_EXECUTOR=external" in result.output


def test_several_api_processes_serve_one_database(tmp_path):
    """`serve --workers 2` runs two uvicorn worker processes from the app factory (the compose file's api)."""
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"TICKETGUARD_DATA_DIR": str(tmp_path), "TICKETGUARD_EXECUTOR": "external",
                        "TICKETGUARD_SECRET_KEY": "s"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        response = httpx.get(f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": "Bearer tg_nope"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        pids = {int(p) for p in subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True,
                                                text=True).stdout.split()}
        assert len(pids) >= 3  # the uvicorn supervisor and its two worker processes
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
