"""The `find` CLI against a real server (embedded SQLite, local subprocess workers)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli_app
from service.cli import parse_params
from service.embedded import EmbeddedServer, free_port


def test_parse_params_nests_dotted_keys_and_reads_json():
    assert parse_params(["rounds=2", "train.epochs=3", "scope=layerwise", "backoff_rates=[0.5,0.2]"]) == {
        "rounds": 2, "train": {"epochs": 3}, "scope": "layerwise", "backoff_rates": [0.5, 0.2]}
    with pytest.raises(Exception, match="key=value"):
        parse_params(["rounds"])


def test_find_saves_and_registers(settings, alice, tmp_path):
    local = settings.model_copy(update={"executor": "local"})
    port = free_port()
    with EmbeddedServer(create_app(local), port):
        out = tmp_path / "found.safetensors"
        result = CliRunner().invoke(cli_app, [
            "find", "--arch", "lenet300_100", "--dataset", "digits", "-p", "rounds=1", "-p", "rate=0.5",
            "-p", "train.epochs=2", "--out", str(out), "--register-as", "cli ticket",
            "--url", f"http://127.0.0.1:{port}", "--api-key", alice.key])
        assert result.exit_code == 0, result.output
        assert "50.00%" in result.output and "registered as ticket" in result.output
        weights = load_file(str(out))
        assert set(weights) >= {"fc1.weight", "fc3.bias"}
        bad = CliRunner().invoke(cli_app, ["find", "--arch", "lenet300_100", "-p", "rounds=many",
                                           "--url", f"http://127.0.0.1:{port}", "--api-key", alice.key])
        assert bad.exit_code == 1 and "rounds" in bad.output
