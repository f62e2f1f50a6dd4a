"""`ticketguard demo`: the three user flows end to end on the embedded default."""

from __future__ import annotations

import copy
import secrets
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from service.app import create_app
from service.cli import print_audit, wait_with_progress
from service.client import TicketGuardClient
from service.config import Settings
from service.db import session_factory
from service.embedded import EmbeddedServer, free_port
from service.errors import APIError
from service.models import Owner
from service.owners.service import create_owner
from verifier.attacks import fine_tune, prune_further
from verifier.checkpoint import save_state_dict
from verifier.data import load_dataset
from verifier.masks import overall_density
from verifier.models import build_model
from verifier.tickets import Ticket, find_imp_ticket
from verifier.training import evaluate

ARCH, DATASET = "lenet300_100", "digits"


def _model_of(ticket: Ticket) -> torch.nn.Module:
    data = load_dataset(ticket.dataset)
    model = build_model(ticket.arch, data.input_shape, data.num_classes)
    model.load_state_dict(ticket.state)
    return model


def _demo_owner(settings: Settings) -> tuple[Owner, str]:
    """Owner `alice`, or `alice-xxxx` when a kept data dir already has one."""
    with session_factory(settings.resolved_database_url)() as session:
        for name in ("alice", f"alice-{secrets.token_hex(2)}"):
            try:
                return create_owner(session, secret=settings.secret(), name=name, is_admin=False,
                                    actor="demo")
            except APIError:
                continue
    raise RuntimeError("could not create the demo owner")


def run_demo(console: Console, *, data_dir: Path | None, seed: int = 0) -> bool:
    """Run the demo; True when both verdicts are right."""
    with tempfile.TemporaryDirectory(prefix="ticketguard-demo-") as tmp:
        root = data_dir or Path(tmp)
        return _run(console, root, Path(tmp), seed)


def _run(console: Console, data_dir: Path, scratch: Path, seed: int) -> bool:
    started = time.monotonic()
    settings = Settings(data_dir=data_dir, executor="local", database_url=None)
    console.rule("TicketGuard demo")
    console.print(f"data dir: {data_dir.resolve()} (SQLite, local artifacts, local worker processes)")
    app = create_app(settings)
    owner, key = _demo_owner(settings)
    console.print(f"owner [bold]{owner.name}[/bold] created with an API key")

    data = load_dataset(DATASET)
    console.print(f"finding a ticket: IMP with rewinding, {ARCH} on {DATASET} (seed {seed})")
    ticket = find_imp_ticket(ARCH, data, seed=seed, rounds=3, rate=0.5)
    console.print(f"  ticket: {overall_density(ticket.mask):.1%} of weights kept, accuracy "
                  f"{ticket.accuracy:.3f} (dense {ticket.dense_accuracy:.3f})")
    thief = _model_of(ticket)
    stolen_mask = copy.deepcopy(ticket.mask)
    fine_tune(thief, stolen_mask, data.x_train, data.y_train, epochs=3, lr=0.01, seed=seed + 100)
    stolen_mask = prune_further(thief, stolen_mask, 0.10)
    console.print(f"  stolen copy: fine-tuned with the mask fixed, pruned a further 10%: accuracy "
                  f"{evaluate(thief, data.x_test, data.y_test):.3f}")
    independent = find_imp_ticket(ARCH, data, seed=seed + 1, rounds=3, rate=0.5)
    console.print(f"  independent ticket (seed {seed + 1}): accuracy {independent.accuracy:.3f}")

    files = {name: scratch / f"{name}.safetensors" for name in ("ticket", "stolen", "independent")}
    save_state_dict(ticket.state, files["ticket"])
    save_state_dict(thief.state_dict(), files["stolen"])
    save_state_dict(independent.state, files["independent"])

    port = free_port()
    with EmbeddedServer(app, port):
        client = TicketGuardClient(f"http://127.0.0.1:{port}", key)
        console.print(f"service listening on http://127.0.0.1:{port}")
        accepted = client.register(files["ticket"], arch=ARCH, dataset=DATASET, name="demo ticket")
        job = wait_with_progress(client, accepted["job_id"], "registering")
        if job["status"] != "succeeded":
            console.print(f"[red]registration failed: {job['error']}[/red]")
            return False
        ticket_id = accepted["id"]
        console.print(f"ticket {ticket_id} registered")
        cases = [("stolen copy, searched 1:N", files["stolen"], None, "match"),
                 ("independent ticket", files["independent"], ticket_id, "no_match")]
        rows, ok = [], True
        for label, path, wanted_ticket, expected in cases:
            accepted = client.verify(path, ticket_id=wanted_ticket)
            wait_with_progress(client, accepted["job_id"], "verifying")
            result = client.verification(accepted["id"])
            right = result["verdict"] == expected
            ok &= right
            rows.append((label, result["verdict"], expected, result["p_value"], result["owner"], right))
        table = Table(title="verdicts")
        for column in ("suspect", "verdict", "expected", "p-value", "owner named", "right?"):
            table.add_column(column)
        for label, verdict, expected, p_value, owner_name, right in rows:
            table.add_row(label, verdict, expected, "-" if p_value is None else f"{p_value:.2g}",
                          owner_name or "-", "[green]yes[/green]" if right else "[red]NO[/red]")
        console.print(table)
        print_audit(client.audit()["events"])
        chain = client.audit_verify()
        state = "intact" if chain["ok"] else "BROKEN"
        console.print(f"audit chain: {state} ({chain['events_checked']} events)")
        ok &= chain["ok"]
    console.print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return ok
