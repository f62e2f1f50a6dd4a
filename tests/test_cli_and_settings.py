"""Settings, the secret, schema checks at start-up, and the admin CLI."""

from __future__ import annotations

import stat

import pytest
from typer.testing import CliRunner

from service.app import prepare_database
from service.cli import app as cli_app
from service.config import Settings, get_settings
from service.security import hash_api_key


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
