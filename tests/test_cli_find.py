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


def test_attack_waits_prints_the_report_and_saves_plots_and_csv(settings, alice, model_files, tmp_path):
    from service.cli import parse_attacks
    from tests.helpers import register_ok

    assert parse_attacks(["add_on", "prune_magnitude=0.1,0.2"]) == [
        {"name": "add_on"}, {"name": "prune_magnitude", "strengths": [0.1, 0.2]}]
    with pytest.raises(Exception, match="name=s1,s2"):
        parse_attacks(["prune_magnitude=lots"])
    inline = settings.model_copy(update={"executor": "inline"})
    app = create_app(inline)
    port = free_port()
    with EmbeddedServer(app, port):
        from fastapi.testclient import TestClient

        with TestClient(app) as client:
            ticket = register_ok(client, alice.headers, model_files.ticket)
        plots, table = tmp_path / "plots", tmp_path / "report.csv"
        common = ["--url", f"http://127.0.0.1:{port}", "--api-key", alice.key]
        result = CliRunner().invoke(cli_app, [
            "attack", ticket["id"], "-a", "prune_magnitude=0.1", "-a", "add_on=0.01", "--wait",
            "--plots", str(plots), "--csv", str(table), *common])
        assert result.exit_code == 0, result.output
        assert "prune_magnitude" in result.output and "ownership proven for" in result.output
        assert sorted(p.name for p in plots.iterdir()) == ["add-on.png", "pruning.png"]
        assert table.read_text().splitlines()[0].startswith("attack,family,strength")
        assert len(table.read_text().splitlines()) == 4  # header, the ticket itself, two attacks
        bad = CliRunner().invoke(cli_app, ["attack", ticket["id"], "-a", "melt", *common])
        assert bad.exit_code == 1 and "melt" in bad.output
