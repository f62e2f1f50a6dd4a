"""`ticketguard demo` end to end: real HTTP server, local subprocess workers, SQLite."""

from __future__ import annotations

from typer.testing import CliRunner

from service.cli import app as cli_app


def test_demo_exits_zero_with_both_verdicts_right(tmp_path):
    result = CliRunner().invoke(cli_app, ["demo", "--data-dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "demo passed" in result.output
    assert "stolen copy" in result.output and "units permuted" in result.output
    assert "independent ticket" in result.output
    assert "the thief's registration: refused (derives_from_registered_ticket)" in result.output
    assert "the owner's alerts: 1 refused registration" in result.output
    assert "the owner's receipt verified offline" in result.output
    assert (tmp_path / "demo" / "ticketguard.db").exists()
