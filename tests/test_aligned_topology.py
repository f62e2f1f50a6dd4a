"""The aligned topology test through the API: registrations calibrate against earlier tickets, and a
channel-permuted copy of an unsigned ticket is caught once enough references exist."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.config import get_settings
from service.db import session_factory
from service.models import Ticket, TicketReference, TicketSummary
from service.verifications.search import SUMMARY_KIND
from tests.helpers import register_ok, verify_ok
from verifier.attacks import permute_hidden_units
from verifier.checkpoint import save_state_dict
from verifier.masks import magnitude_mask
from verifier.models import build_model, prunable_parameters

ARCH = "lenet300_100"


@dataclass
class Files:
    references: list[Path]  # independent tickets, registered before the ticket
    ticket: Path
    permuted: Path  # the ticket with its hidden units permuted: same function, scrambled positions
    independent: Path
    sparse_independent: Path  # an independent ticket at a quarter of the references' density


def _pruned(seed: int, density: float = 0.2) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(ARCH, (1, 8, 8), 10)
    names = prunable_parameters(ARCH, model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mask = magnitude_mask(weights, dict.fromkeys(names, density))
    return {k: v * mask[k] if k in mask else v for k, v in weights.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("aligned")

    def save(state: dict, name: str) -> Path:
        save_state_dict(state, root / name)
        return root / name

    ticket = _pruned(0)
    return Files(references=[save(_pruned(100 + i), f"ref{i}.safetensors") for i in range(10)],
                 ticket=save(ticket, "ticket.safetensors"),
                 permuted=save(permute_hidden_units(ARCH, ticket, seed=5), "permuted.safetensors"),
                 independent=save(_pruned(999), "independent.safetensors"),
                 sparse_independent=save(_pruned(998, 0.05), "sparse.safetensors"))


def _job_result(client, headers, ticket: dict) -> dict:
    return client.get(f"/v1/jobs/{ticket['job_id']}", headers=headers).json()["result"]


def test_permuted_copy_of_an_unsigned_ticket_is_caught_once_calibrated(client, settings, alice, bob, files):
    first = register_ok(client, bob.headers, files.references[0], name="ref 0")
    early = verify_ok(client, bob.headers, files.permuted, ticket_id=first["id"])
    assert early["evidence"]["aligned_topology"] == {"calibrated": False, "references": 0,
                                                     "references_needed": 10}
    for index, path in enumerate(files.references[1:], start=1):
        register_ok(client, bob.headers, path, name=f"ref {index}")
    ticket = register_ok(client, alice.headers, files.ticket)
    assert _job_result(client, alice.headers, ticket)["topology_references"] == 10
    with session_factory(settings.resolved_database_url)() as session:
        rows = session.execute(select(TicketReference).where(TicketReference.ticket_id == ticket["id"])).all()
        assert len(rows) == 10
        first_rows = session.execute(select(TicketReference).where(TicketReference.ticket_id == first["id"])).all()
        assert first_rows == []  # earlier tickets only: nothing was registered before the first

    stolen = verify_ok(client, alice.headers, files.permuted, ticket_id=ticket["id"])
    evidence = stolen["evidence"]
    assert stolen["verdict"] == "match" and stolen["p_value"] <= 1e-3, evidence
    assert evidence["schemes"] == ["topology", "aligned_topology"]
    assert evidence["topology"]["p_value"] > 1e-2  # the position-based test is blind to the permutation
    aligned = evidence["aligned_topology"]
    assert aligned["calibrated"] and aligned["references"] == 10 and aligned["kappa"] == pytest.approx(1.0)
    assert aligned["selection_correction"] == 1

    searched = verify_ok(client, bob.headers, files.permuted)  # no ticket_id: the search finds it
    assert searched["verdict"] == "match" and searched["ticket_id"] == ticket["id"]
    assert searched["evidence"]["aligned_topology"]["selection_correction"] == 11

    innocent = verify_ok(client, alice.headers, files.independent, ticket_id=ticket["id"])
    assert innocent["verdict"] == "no_match", innocent["evidence"]
    assert innocent["evidence"]["aligned_topology"]["p_value"] > 1e-2

    # every reference keeps 20 % of its weights: they say nothing of a suspect's null at 5 %, so no p
    sparse = verify_ok(client, alice.headers, files.sparse_independent, ticket_id=ticket["id"])
    aligned = sparse["evidence"]["aligned_topology"]
    assert not aligned["calibrated"] and "keeps 5.0% of its weights" in aligned["reason"], aligned
    assert "p_value" not in aligned and sparse["verdict"] == "no_match"


def test_a_suspect_beyond_the_stored_references_is_read_against_earlier_tickets_of_its_density(
        client, settings, alice, bob, files, tmp_path):
    for index, path in enumerate(files.references):
        register_ok(client, bob.headers, path, name=f"ref {index}")
    for index in range(4):  # sparse tickets, registered before the ticket but outside its references' window
        save_state_dict(_pruned(300 + index, 0.05), tmp_path / f"sparse{index}.safetensors")
        register_ok(client, bob.headers, tmp_path / f"sparse{index}.safetensors", name=f"sparse {index}")
    ticket = register_ok(client, alice.headers, files.ticket)
    assert _job_result(client, alice.headers, ticket)["topology_references"] == 10  # all at 20 %

    # the thief permutes the copy and prunes it to a quarter of the ticket's weights (5 %)
    permuted = permute_hidden_units(ARCH, _pruned(0), seed=5)  # _pruned(0) is the ticket
    pruned = {k: v * magnitude_mask({k: v}, {k: 0.05})[k] if k.endswith(".weight") and v.dim() == 2 else v
              for k, v in permuted.items()}
    save_state_dict(pruned, tmp_path / "pruned.safetensors")
    stolen = verify_ok(client, alice.headers, tmp_path / "pruned.safetensors", ticket_id=ticket["id"])
    aligned = stolen["evidence"]["aligned_topology"]
    assert aligned["calibrated"] and aligned["references_added"] == 4 and aligned["references"] == 14, aligned
    assert stolen["verdict"] == "match" and aligned["p_value"] <= 1e-3, aligned

    innocent = verify_ok(client, alice.headers, files.sparse_independent, ticket_id=ticket["id"])
    aligned = innocent["evidence"]["aligned_topology"]
    assert aligned["calibrated"] and aligned["references_added"] == 0 and aligned["references"] == 14, aligned
    assert aligned["density_adjusted"] and aligned["p_value"] > 1e-2 and innocent["verdict"] == "no_match"


def test_the_same_file_registered_twice_is_one_reference(client, settings, alice, files):
    for index in range(3):
        register_ok(client, alice.headers, files.references[0], name=f"copy {index}")
    ticket = register_ok(client, alice.headers, files.ticket)
    assert _job_result(client, alice.headers, ticket)["topology_references"] == 1


def test_calibrate_command_measures_tickets_registered_without_references(client, settings, alice, files,
                                                                          monkeypatch):
    ids = [register_ok(client, alice.headers, path, name=f"ref {i}")["id"]
           for i, path in enumerate(files.references[:3])]
    with session_factory(settings.resolved_database_url)() as session:
        session.execute(delete(TicketReference))  # as for tickets registered before calibration existed
        session.execute(update(TicketSummary).values(kind="spectral-8"))  # indexed before the summary changed
        session.commit()
    monkeypatch.setenv("TICKETGUARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TICKETGUARD_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TICKETGUARD_SECRET_KEY", "test-secret")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(cli_app, ["calibrate"])
        assert result.exit_code == 0, result.output
        assert "calibrated 3 ticket(s); indexed 3 ticket(s) again" in result.output
        with session_factory(settings.resolved_database_url)() as session:
            counts = [len(session.execute(select(TicketReference).where(TicketReference.ticket_id == i)).all())
                      for i in ids]
            kinds = set(session.execute(select(TicketSummary.kind)).scalars())
        assert counts == [0, 1, 2]  # each against the tickets registered before it
        assert kinds == {SUMMARY_KIND}
        again = runner.invoke(cli_app, ["calibrate"]).output
        assert "calibrated 1 ticket(s); indexed 0 ticket(s) again" in again  # only the one without references
        unknown = runner.invoke(cli_app, ["calibrate", "--ticket", "nope"])
        assert unknown.exit_code == 1 and "nope" in unknown.output
    finally:
        get_settings.cache_clear()


def test_calibrate_command_finds_the_initialisation_of_tickets_registered_before_it_was_recorded(
        client, settings, alice, files, monkeypatch):
    public = register_ok(client, alice.headers, files.ticket, name="seed 0")["id"]
    private = register_ok(client, alice.headers, files.independent, name="seed 999")["id"]
    with session_factory(settings.resolved_database_url)() as session:  # as registered before migration 0010
        session.execute(update(Ticket).values(init_signs_sha256=None, init_seed=None, init_public=None))
        session.commit()
    assert client.get(f"/v1/tickets/{public}", headers=alice.headers).json()["initialisation"] == "unknown"
    monkeypatch.setenv("TICKETGUARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TICKETGUARD_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TICKETGUARD_SECRET_KEY", "test-secret")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["calibrate"])
        assert result.exit_code == 0 and "found the initialisation of 2 ticket(s)" in result.output, result.output
        again = CliRunner().invoke(cli_app, ["calibrate"]).output
        assert "found the initialisation of 0 ticket(s)" in again  # an unknown one is not searched again
    finally:
        get_settings.cache_clear()
    labels = [client.get(f"/v1/tickets/{t}", headers=alice.headers).json()["initialisation"] for t in (public, private)]
    assert labels == ["public (seed 0)", "unknown"]
