"""`ticketguard`: run the service, administer it, and talk to it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.client import ClientError, TicketGuardClient
from service.config import get_settings

app = typer.Typer(help="TicketGuard: prove who owns a lottery ticket.", no_args_is_help=True)
owners_app = typer.Typer(help="Owners and API keys (run on the server machine).", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit history.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs: status and cancellation.", no_args_is_help=True)
receipt_app = typer.Typer(help="Registration receipts: fetch and verify them.", no_args_is_help=True)
registry_app = typer.Typer(help="The registry as a whole (run on the server machine).", no_args_is_help=True)
app.add_typer(owners_app, name="owners")
app.add_typer(audit_app, name="audit")
app.add_typer(jobs_app, name="jobs")
app.add_typer(receipt_app, name="receipt")
app.add_typer(registry_app, name="registry")
console = Console(width=None if sys.stdout.isatty() else 120)

UrlOpt = Annotated[str, typer.Option("--url", envvar="TICKETGUARD_URL", help="Server URL.")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="TICKETGUARD_API_KEY",
                                            help="API key (default: $TICKETGUARD_API_KEY).")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _client(url: str, key: str | None) -> TicketGuardClient:
    if not key:
        console.print("[red]no API key: set TICKETGUARD_API_KEY or pass --api-key[/red]")
        raise typer.Exit(2)
    return TicketGuardClient(url, key)


@contextmanager
def reporting_client_errors() -> Iterator[None]:
    """Turn a server's error answer into a red line and exit code 1."""
    try:
        yield
    except ClientError as exc:
        console.print(f"[red]error[/red] {exc.code}: {exc.message}")
        raise typer.Exit(1) from exc


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: Annotated[int, typer.Option(min=1, max=64, help="API processes (uvicorn workers). More than "
                                               "one needs TICKETGUARD_EXECUTOR=external, with jobs run by "
                                               "`ticketguard supervise` (local processes or Ray).")] = 1) -> None:
    """Run the API (and, with the default local executor, the job supervisor)."""
    import uvicorn

    from service.app import create_app, prepare_database

    settings = get_settings()
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return
    if settings.executor != "external":
        console.print(f"[red]--workers {workers} needs TICKETGUARD_EXECUTOR=external[/red]: every API process "
                      f"would run its own {settings.executor} supervisor; run jobs with `ticketguard supervise`")
        raise typer.Exit(2)
    prepare_database(settings)  # once, before the processes start
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


@app.command()
def supervise() -> None:
    """Run only the job supervisor (for TICKETGUARD_EXECUTOR=external API processes): local worker
    processes, or with TICKETGUARD_EXECUTOR=ray the dispatcher onto the Ray cluster at RAY_ADDRESS."""
    import logging
    import signal
    import threading

    from service.app import prepare_database
    from service.jobs.executors import make_supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    prepare_database(settings)
    supervisor = make_supervisor(settings)
    stop = threading.Event()
    supervisor.start()
    # after start: connecting to Ray installs Ray's own SIGTERM handler, which would exit at once
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print(f"supervisor {supervisor.identity} running {settings.workers} worker(s)"
                  + (" on Ray" if settings.executor == "ray" else ""))
    stop.wait()
    supervisor.stop()


@app.command()
def migrate() -> None:
    """Bring the database to the current schema."""
    from service.migrate import current_revision, upgrade

    settings = get_settings()
    if settings.is_embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    console.print(f"database at revision {current_revision(settings.resolved_database_url)}")


@app.command()
def calibrate(tickets: Annotated[list[str] | None, typer.Option(
        "--ticket", help="Only this ticket (repeatable); it is measured again even if it has references.")] = None
              ) -> None:
    """Measure the aligned topology test's references for tickets that have none of the current statistic
    (registered before calibration existed, or before it changed): each against the tickets registered
    before it, as a registration does. Then index again every ticket whose search summary is of an
    older kind, and find the initialisation of tickets registered before tickets recorded one."""
    from sqlalchemy import select

    from service.app import prepare_database
    from service.artifacts import make_store
    from service.datasets.catalog import resolve_dataset
    from service.db import sessions_for
    from service.models import Job, Ticket, TicketReference, TicketSummary
    from service.tickets.service import record_initialisation
    from service.verifications.calibration import recalibrate
    from service.verifications.search import SUMMARY_KIND, reindex
    from verifier.aligned import STATISTIC

    settings = get_settings()
    prepare_database(settings)
    store = make_store(settings)
    with sessions_for(settings)() as session:
        query = select(Ticket).where(Ticket.status == "registered")
        if tickets:
            query = query.where(Ticket.id.in_(tickets))
        else:
            calibrated = select(TicketReference.ticket_id).where(TicketReference.kind == STATISTIC)
            query = query.where(Ticket.id.not_in(calibrated))
        todo = list(session.execute(query.order_by(Ticket.registered_at)).scalars())
        session.commit()  # end the read: the weights are read (perhaps from S3) outside any transaction
        missing = set(tickets or []) - {t.id for t in todo}
        if missing:
            console.print(f"[red]not a registered ticket: {', '.join(sorted(missing))}[/red]")
            raise typer.Exit(1)
        for index, ticket in enumerate(todo, start=1):
            count = recalibrate(session, store, ticket, limit=settings.topology_references)
            console.print(f"{index}/{len(todo)} ticket {ticket.id} ({ticket.arch}, {ticket.dataset}): "
                          f"{count} reference(s)")
        current = select(TicketSummary.ticket_id).where(TicketSummary.kind == SUMMARY_KIND)
        stale = list(session.execute(select(Ticket).where(Ticket.status == "registered", Ticket.id.not_in(current))
                                     .order_by(Ticket.registered_at)).scalars())
        session.commit()
        for ticket in stale:
            reindex(session, store, ticket)
        unchecked = list(session.execute(select(Ticket).where(
            Ticket.status == "registered", Ticket.init_signs_sha256.is_(None), Ticket.init_public.is_(None))
            .order_by(Ticket.registered_at)).scalars())
        session.commit()
        for ticket in unchecked:
            job = session.get(Job, ticket.job_id) if ticket.job_id else None
            spec = resolve_dataset(session, ticket.dataset, owner=None).spec
            params = job.params if job else {}
            label = record_initialisation(session, store, ticket, spec, params.get("rewind_sha256"),
                                          params.get("seed_drawn"))
            console.print(f"ticket {ticket.id}: initialisation {label}")
    console.print(f"calibrated {len(todo)} ticket(s); indexed {len(stale)} ticket(s) again; found the "
                  f"initialisation of {len(unchecked)} ticket(s) registered before tickets recorded it")


@owners_app.command("create")
def owners_create(name: str, admin: Annotated[bool, typer.Option("--admin")] = False) -> None:
    """Create an owner; its API key is printed once, on the last line."""
    from service.app import prepare_database
    from service.db import sessions_for
    from service.errors import APIError
    from service.owners.service import create_owner

    settings = get_settings()
    prepare_database(settings)
    with sessions_for(settings)() as session:
        try:
            owner, key = create_owner(session, secret=settings.secret(), name=name, is_admin=admin,
                                      actor="cli")
        except APIError as exc:
            console.print(f"[red]{exc.message}[/red]")
            raise typer.Exit(1) from exc
    console.print(f"created {'admin ' if admin else ''}owner {owner.name} ({owner.id}); API key:")
    print(key)


CheckpointOpt = Annotated[Path | None, typer.Option(
    "--checkpoint", exists=True, dir_okay=False,
    help="A tree head saved earlier (`audit checkpoint`): also prove that today's log extends it.")]


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        console.print(f"[red]cannot read {what} {path}[/red]: {exc}")
        raise typer.Exit(2) from exc


@contextmanager
def _local_session() -> Iterator:
    from service.app import prepare_database
    from service.db import sessions_for
    from service.errors import APIError

    settings = get_settings()
    prepare_database(settings)
    with sessions_for(settings)() as session:
        try:
            yield settings, session
        except APIError as exc:  # e.g. the log's key file is missing: one red line, not a traceback
            console.print(f"[red]{exc.message}[/red]")
            raise typer.Exit(2) from exc


@audit_app.command("verify")
def audit_verify(
    url: Annotated[str | None, typer.Option(help="Ask a server instead of reading the database.")] = None,
    api_key: KeyOpt = None,
    checkpoint: CheckpointOpt = None,
    public_key: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Verify with this public key (PEM) instead of the key file's: on a "
                                          "machine that holds the database but not the log key.")] = None,
) -> None:
    """Check the transparency log: the hash chain recomputed from every event, the Merkle tree over it,
    every tree head the log has signed, and with --checkpoint a head you saved earlier. Exit 1 and say
    what is wrong if anything is. With --url the server checks itself, and the checkpoint is proven
    with the server's consistency proof and the key the checkpoint names."""
    from service.audit.merkle import TreeHead, VerificationFailed

    saved = None
    if checkpoint is not None:
        try:
            saved = TreeHead.from_dict(_read_json(checkpoint, "checkpoint"))
        except VerificationFailed as exc:
            console.print(f"[red]{checkpoint}[/red]: {exc}")
            raise typer.Exit(2) from exc
    if url:
        client = _client(url, api_key)
        with reporting_client_errors():
            report = client.audit_verify()
            if report["ok"] and saved is not None:
                report = report | {"checkpoint": _remote_checkpoint(client, saved)}
                if not report["checkpoint"]["consistent"]:
                    report |= {"ok": False, "reason": report["checkpoint"]["reason"]}
    else:
        from service.audit.log_key import LogKeyError, read_public_key
        from service.audit.transparency import log_key, verify_log

        with _local_session() as (settings, session):
            try:
                public = read_public_key(public_key) if public_key else log_key(settings, session).public_key()
            except LogKeyError as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(2) from exc
            report = verify_log(session, public, saved).to_dict()
    if report["ok"]:
        extends = (f"; extends the checkpoint of {report['checkpoint']['tree_size']} events"
                   if report.get("checkpoint") else "")
        console.print(f"[green]audit log intact[/green]: {report['events_checked']} events, root "
                      f"{str(report.get('root_hash'))[:16]}..., {report.get('tree_heads_checked', 0)} signed tree "
                      f"heads consistent{extends}")
        return
    where = f" at event {report['first_broken_seq']}" if report.get("first_broken_seq") else ""
    console.print(f"[red]audit log broken{where}[/red]: {report['reason']}")
    raise typer.Exit(1)


def _remote_checkpoint(client: TicketGuardClient, saved) -> dict:
    """Whether the server's latest tree head extends `saved`, by its consistency proof, with the public
    key the checkpoint names (the server's is taken only if its id is the checkpoint's key id)."""
    from service.audit.log_key import LogKeyError, load_public_key
    from service.audit.merkle import VerificationFailed

    try:
        public = load_public_key(client.public_key()["public_key_pem"])
        saved.verify(public)
        _server_extends(client, saved, public)
    except (VerificationFailed, LogKeyError) as exc:
        return {"tree_size": saved.tree_size, "timestamp": saved.timestamp, "consistent": False, "reason": str(exc)}
    return {"tree_size": saved.tree_size, "timestamp": saved.timestamp, "consistent": True}


def _server_extends(client: TicketGuardClient, head, public_key) -> None:
    """Raise VerificationFailed unless the server's latest signed tree head (checked with `public_key`)
    extends `head`, by the server's consistency proof."""
    from service.audit.merkle import TreeHead, verify_consistency

    latest = TreeHead.from_dict(client.tree_head())
    latest.verify(public_key)
    proof = client.consistency_proof(head.tree_size, latest.tree_size)["proof"] \
        if head.tree_size <= latest.tree_size else None
    verify_consistency(head, latest, proof)


@audit_app.command("checkpoint")
def audit_checkpoint(
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="Write the tree head here.")],
    url: Annotated[str | None, typer.Option(help="Ask a server instead of reading the database.")] = None,
    api_key: KeyOpt = None,
) -> None:
    """Save the log's latest signed tree head. Keep it away from the server (another machine, a
    write-once bucket): `audit verify --checkpoint FILE` later proves the log still extends it."""
    if url:
        with reporting_client_errors():
            head = _client(url, api_key).tree_head()
    else:
        from service.audit.transparency import latest_tree_head, log_key

        with _local_session() as (settings, session):
            head = latest_tree_head(session, log_key(settings, session)).to_dict()
            session.commit()
    output.write_text(json.dumps(head, indent=2) + "\n")
    console.print(f"tree head of {head['tree_size']} events (root {head['root_hash'][:16]}...) written to {output}")


@audit_app.command("witness")
def audit_witness() -> None:
    """Write the log's latest signed tree head to the witness (TICKETGUARD_AUDIT_WITNESS_URL) once, as
    `serve` does every AUDIT_WITNESS_INTERVAL seconds: for a cron job, or to check the setting."""
    from service.app import prepare_database
    from service.audit.witness import make_witness, witness_once

    settings = get_settings()
    if not settings.audit_witness_url:
        console.print("[red]no witness configured[/red]: set TICKETGUARD_AUDIT_WITNESS_URL "
                      "(file:///absolute/dir or s3://bucket/prefix)")
        raise typer.Exit(2)
    prepare_database(settings)
    head, where = witness_once(settings, make_witness(settings))
    console.print(f"tree head of {head.tree_size} events " + (f"written to {where}" if where else
                                                             "already with the witness"))


@audit_app.command("public-key")
def audit_public_key(
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                help="Write the PEM here (default: print it).")] = None,
    url: Annotated[str | None, typer.Option(help="Ask a server instead of reading the key file.")] = None,
) -> None:
    """The log's Ed25519 public key (PEM), which verifies receipts and tree heads offline."""
    if url:
        with reporting_client_errors():
            pem = TicketGuardClient(url, "").public_key()["public_key_pem"]
    else:
        from service.audit.log_key import public_pem
        from service.audit.transparency import log_key

        with _local_session() as (settings, session):
            pem = public_pem(log_key(settings, session).public_key())
    if output is None:
        print(pem, end="")
        return
    output.write_text(pem)
    console.print(f"public key written to {output}")


@audit_app.command("list")
def audit_list(url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None, ticket_id: str | None = None,
               since: str | None = None, until: str | None = None, limit: int = 100,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the audit history visible to your key."""
    with reporting_client_errors():
        page = _client(url, api_key).audit(ticket_id=ticket_id, since=since, until=until, limit=limit)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    print_audit(page["events"])


def print_audit(events: list[dict]) -> None:
    table = Table(title="audit history")
    for column in ("seq", "time", "actor", "action", "subject", "hash"):
        table.add_column(column)
    for event in events:
        table.add_row(str(event["seq"]), event["ts"][:19], event["actor"], event["action"], event["subject"],
                      event["hash"][:12])
    console.print(table)


def wait_with_progress(client: TicketGuardClient, job_id: str, label: str) -> dict:
    """Poll a job with a progress bar; returns the final job."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[message]}"), TimeElapsedColumn(), console=console,
                  transient=not sys.stdout.isatty()) as progress:
        task = progress.add_task(label, total=1.0, message="queued")
        return client.wait(job_id, on_progress=lambda job: progress.update(
            task, completed=job["progress"], message=job["message"][:40]))


@app.command()
def register(model: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
             arch: Annotated[str, typer.Option(help="Architecture, e.g. lenet300_100, resnet20.")],
             dataset: Annotated[str, typer.Option(help="Dataset, e.g. digits.")],
             name: Annotated[str, typer.Option(help="A name for the ticket.")],
             signature: Annotated[str, typer.Option(
                 help="qr: write a QR code bound to you into the mask; fingerprint/none: keep the mask; "
                      "auto: qr where a layer is large enough.")] = "auto",
             recovery_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after writing the code.")] = 2,
             trigger_set: Annotated[bool, typer.Option(help="Also embed a secret trigger set for black-box "
                                                       "verification.")] = False,
             url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None,
             wait: Annotated[bool, typer.Option(help="Wait for the job to finish.")] = True,
             receipt: Annotated[Path | None, typer.Option(
                 dir_okay=False, help="With --wait: save the registration's receipt here (default "
                                      "receipt-TICKET_ID.json); `ticketguard receipt verify` checks it.")] = None,
             ) -> None:
    """Register ownership of a ticket (a .safetensors or .pt state dict). The registered ticket, with
    its signature, downloads from GET /v1/tickets/{id}/model. The job first screens it against every
    earlier ticket: one deriving from another owner's is refused."""
    client = _client(url, api_key)
    with reporting_client_errors():
        accepted = client.register(model, arch=arch, dataset=dataset, name=name, signature=signature,
                                   recovery_epochs=recovery_epochs, trigger_set=trigger_set)
        console.print(f"ticket {accepted['id']} accepted (job {accepted['job_id']})")
        if wait:
            job = wait_with_progress(client, accepted["job_id"], "registering")
            ticket = client.ticket(accepted["id"])
            console.print_json(data=ticket)
            if job["status"] != "succeeded" or ticket["status"] != "registered":
                console.print(f"[red]registration {ticket['status']}[/red]: {job['error'] or ticket['error']}")
                raise typer.Exit(1)
            found = client.ticket_receipt(ticket["id"])
            path = receipt or Path(f"receipt-{ticket['id']}.json")
            path.write_text(json.dumps(found, indent=2) + "\n")
            console.print(f"receipt (event {found['leaf_index']} of the transparency log) written to {path}")


@app.command()
def verify(model: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False,
                                                        help="The suspect model file.")] = None,
           ticket_id: Annotated[str | None, typer.Option("--ticket", help="One of your tickets; "
                                                         "omit to search every registered ticket.")] = None,
           mode: Annotated[str | None, typer.Option(help="white_box, black_box or both (default: white_box "
                                                    "for a model file, black_box otherwise).")] = None,
           endpoint: Annotated[str | None, typer.Option(help="Instead of a file: the suspect's prediction "
                                                        "API (needs --ticket).")] = None,
           answers: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Instead of a file: "
                                                        "JSON answers to your ticket's trigger inputs.")] = None,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None,
           wait: Annotated[bool, typer.Option(help="Wait for the verdict.")] = True) -> None:
    """Ask whether a suspect (a model file, a prediction endpoint, or answers you gathered) derives
    from a registered ticket."""
    client = _client(url, api_key)
    with reporting_client_errors():
        accepted = client.verify(model, ticket_id=ticket_id, mode=mode, endpoint=endpoint, answers=answers)
        console.print(f"verification {accepted['id']} accepted (job {accepted['job_id']})")
        if wait:
            wait_with_progress(client, accepted["job_id"], "verifying")
            result = client.verification(accepted["id"])
            console.print_json(data=result)


@app.command("trigger-set")
def trigger_set_download(ticket_id: str, output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                                                              help="Where to save the .npz.")],
                         url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Download your ticket's trigger set (.npz: x, y) to query a suspect yourself; upload its answers
    with `verify --answers`."""
    client = _client(url, api_key)
    with reporting_client_errors():
        client.download_trigger_set(ticket_id, output)
    console.print(f"saved {output}")


def parse_params(pairs: list[str]) -> dict:
    """`key=value` pairs (value as JSON where it parses, else a string; dotted keys nest) -> dict."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--param")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@app.command()
def find(arch: Annotated[str, typer.Option(help="Architecture, e.g. lenet300_100, resnet20.")],
         dataset: Annotated[str, typer.Option(help="Dataset, e.g. digits.")] = "digits",
         method: Annotated[str, typer.Option(help="imp, oneshot, ... (see `ticketguard finders`).")] = "imp",
         seed: Annotated[int | None, typer.Option(help="Initialisation and data-order seed (default: the server "
                                                       "draws one at random, and the initialisation is private; "
                                                       "a seed you give makes it public).")] = None,
         param: Annotated[list[str] | None, typer.Option(
             "--param", "-p", help="Hyperparameter key=value (JSON value); nest with dots: train.epochs=5.")] = None,
         out: Annotated[Path | None, typer.Option(help="Save the found ticket here (safetensors).")] = None,
         form: Annotated[str, typer.Option(help="plain, prune or artifact (with --out).")] = "plain",
         register_as: Annotated[str | None, typer.Option(help="Register the found ticket under this name.")]
         = None,
         url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Find a winning ticket on the server, with a progress bar; optionally save or register it."""
    client = _client(url, api_key)
    with reporting_client_errors():
        accepted = client.find(arch=arch, dataset=dataset, method=method, seed=seed,
                               hyperparameters=parse_params(param or []))
        console.print(f"job {accepted['job_id']} accepted")
        job = wait_with_progress(client, accepted["job_id"], f"finding ({method})")
        if job["status"] != "succeeded":
            console.print(f"[red]search {job['status']}[/red]: {job['error']}")
            raise typer.Exit(1)
        result = job["result"]
        table = Table(title=f"{method} on {arch}/{dataset}, seed {result['seed']}")
        for column in ("round", "weights kept", "accuracy"):
            table.add_column(column)
        for row in result["rounds"]:
            if "round" in row:
                table.add_row(str(row["round"]), f"{row['density']:.2%}", f"{row['accuracy']:.4f}")
        console.print(table)
        dense = "" if result["dense_accuracy"] is None else f" (dense {result['dense_accuracy']:.4f})"
        console.print(f"ticket: {result['density']:.2%} of weights kept, accuracy {result['accuracy']:.4f}{dense}")
        if out is not None:
            client.download_found(accepted["job_id"], out, form=form)
            console.print(f"saved to {out}")
        if register_as:
            registered = client.register_found(accepted["job_id"], name=register_as)
            wait_with_progress(client, registered["job_id"], "registering")
            console.print(f"registered as ticket {registered['id']}")


def parse_attacks(specs: list[str]) -> list[dict]:
    """`name` or `name=s1,s2` -> the request's `attacks` items."""
    items = []
    for spec in specs:
        name, sep, raw = spec.partition("=")
        item: dict = {"name": name}
        if sep:
            try:
                item["strengths"] = [float(s) for s in raw.split(",")]
            except ValueError:
                raise typer.BadParameter(f"expected name=s1,s2 with numbers, got {spec!r}",
                                         param_hint="--attack") from None
        items.append(item)
    return items


def _p(value) -> str:
    return "" if value is None else f"{value:.0e}" if value < 0.01 else f"{value:.2f}"


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _yes(value) -> str:
    return "" if value is None else "yes" if value else "no"


def _verdict_cell(row: dict) -> str:
    if row["status"] != "done":
        return row["status"]
    if row["verdict"] is None:  # the forged-key row: the key mask's own test
        return "forgery fails" if row["ownership_proven"] else "key forged"
    return row["verdict"]


def print_attack_report(report: dict) -> None:
    """The report's rows as a table (accuracies in %, change in points), then its headline."""
    rows = report["rows"]
    columns = [("attack", lambda r: f"{r['attack']} {r['strength']:g}"),
               ("acc %", lambda r: _percent(r["test_accuracy"])),
               ("change", lambda r: "" if r["accuracy_change"] is None else f"{100 * r['accuracy_change']:+.1f}"),
               ("in bound", lambda r: _yes(r["within_fidelity"])), ("decoded", lambda r: _yes(r["qr_decoded"])),
               ("QR p", lambda r: _p(r["module_p"])), ("topology p", lambda r: _p(r["topology_p"])),
               ("aligned p", lambda r: _p(r["aligned_topology_p"])),
               ("trigger %", lambda r: _percent(r["trigger_accuracy"])), ("trigger p", lambda r: _p(r["trigger_p"])),
               ("verdict", _verdict_cell)]
    shown = [(name, cell) for name, cell in columns if any(cell(r) for r in rows)]
    table = Table(title=f"attack report {report['id']} on ticket {report['ticket_id']} ({report['status']})")
    for name, _ in shown:
        table.add_column(name, overflow="fold", no_wrap=name == "attack")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in shown))
    console.print(table)
    for row in rows:
        if row["status"] != "done" and row["note"]:
            console.print(f"{row['attack']} {row['strength']:g} {row['status']}: {row['note']}")
    if report["summary"]:
        console.print(f"[bold]{report['summary']['headline']}[/bold]")


@app.command()
def attack(ticket_id: Annotated[str, typer.Argument(help="One of your registered tickets.")],
           preset: Annotated[str | None, typer.Option(help="paper (the paper's table) or full (every attack); "
                                                      "default paper unless --attack is given.")] = None,
           attack_specs: Annotated[list[str] | None, typer.Option(
               "--attack", "-a", help="Instead of a preset: name or name=s1,s2 (see GET /v1/attacks); "
                                      "repeat for more.")] = None,
           data: Annotated[str | None, typer.Option(help="Data set the thief trains on (default the "
                                                    "ticket's).")] = None,
           fidelity_bound: Annotated[float, typer.Option(help="Accuracy a thief may lose (0.01 = 1 point).")] = 0.01,
           max_epochs: Annotated[int, typer.Option(help="Budget: the most training epochs of one attack.")] = 20,
           seed: int = 0,
           plots: Annotated[Path | None, typer.Option(file_okay=False, help="With --wait: save each attack "
                                                      "family's PNG plot in this folder.")] = None,
           csv_out: Annotated[Path | None, typer.Option("--csv", dir_okay=False, help="With --wait: save the "
                                                        "report as CSV here.")] = None,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None,
           wait: Annotated[bool, typer.Option(help="Wait for the report and print it.")] = False) -> None:
    """Attack your own ticket as a thief would and report whether ownership is still proven."""
    body: dict = {"fidelity_bound": fidelity_bound, "seed": seed, "budget": {"max_epochs": max_epochs}}
    if attack_specs:
        body["attacks"] = parse_attacks(attack_specs)
    if preset:
        body["preset"] = preset
    if data:
        body["data"] = data
    client = _client(url, api_key)
    with reporting_client_errors():
        accepted = client.attack(ticket_id, body)
        console.print(f"attack report {accepted['id']} accepted (job {accepted['job_id']})")
        if not wait:
            return
        job = wait_with_progress(client, accepted["job_id"], "attacking")
        report = client.attack_report(accepted["id"])
        print_attack_report(report)
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            for path in report["plots"].values():
                client.download(path, plots / path.rsplit("/", 1)[1])
            console.print(f"{len(report['plots'])} plot(s) saved in {plots}")
        if csv_out is not None:
            client.download(f"/v1/attack-reports/{accepted['id']}", csv_out, format="csv")
            console.print(f"CSV saved to {csv_out}")
        if job["status"] != "succeeded":
            console.print(f"[red]attack job {job['status']}[/red]: {job['error']}")
            raise typer.Exit(1)


@app.command()
def finders(url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """List the ticket-finding methods with their hyperparameters and defaults."""
    with reporting_client_errors():
        console.print_json(data=_client(url, api_key).finders())


@jobs_app.command("show")
def jobs_show(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Show a job."""
    with reporting_client_errors():
        console.print_json(data=_client(url, api_key).job(job_id))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Cancel a job."""
    with reporting_client_errors():
        console.print_json(data=_client(url, api_key).cancel(job_id))


@jobs_app.command("wait")
def jobs_wait(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Wait for a job with a progress bar."""
    with reporting_client_errors():
        job = wait_with_progress(_client(url, api_key), job_id, "job")
    console.print_json(data=job)


@registry_app.command("screen")
def registry_screen(
    mark: Annotated[bool, typer.Option(help="Apply what registration screening would have done: link a ticket "
                                       "to its owner's earlier ticket, refuse one deriving from another owner's "
                                       "(and alert that owner).")] = False,
) -> None:
    """Screen every registered ticket, oldest first, against the tickets registered before it, as
    registration now does (for tickets registered before screening existed). Prints every derived pair;
    exit 1 if a ticket derives from another owner's earlier ticket and --mark was not given."""
    from sqlalchemy import select

    from service.artifacts import make_store
    from service.datasets.catalog import resolve_dataset
    from service.models import Owner, Ticket
    from service.security import pseudonym
    from service.tickets.screening import OfflineContext, refuse, screen_registered

    with _local_session() as (settings, session):
        ctx = OfflineContext(settings=settings, store=make_store(settings))
        todo = list(session.execute(select(Ticket.id).where(Ticket.status == "registered")
                                    .order_by(Ticket.registered_at, Ticket.id)).scalars())
        session.commit()
        table = Table(title="derived tickets")
        for column in ("ticket", "owner", "derives from", "its owner", "p", "action"):
            table.add_column(column)
        contested = 0
        for ticket_id in todo:
            ticket = session.get(Ticket, ticket_id)
            spec = resolve_dataset(session, ticket.dataset, owner=None).spec
            session.commit()  # no transaction idles while the weights are read and the tests run
            found = screen_registered(ctx, ticket, spec)
            contested += bool(found.others(ticket.owner_id))
            for match in found.matches:
                same = match["owner_id"] == ticket.owner_id
                action = ("linked" if same else "refused") if mark else "none (no --mark)"
                table.add_row(ticket.id, session.get(Owner, ticket.owner_id).name, match["ticket_id"],
                              session.get(Owner, match["owner_id"]).name, f"{match['p_value']:.2g}", action)
            if mark and found.matches:
                if found.others(ticket.owner_id):
                    refuse(session, ticket, found, registrant=pseudonym(settings.secret(), ticket.owner_id))
                else:
                    ticket.derived_from_id = found.own(ticket.owner_id)[0]["ticket_id"]
                session.commit()
    console.print(table)
    console.print(f"screened {len(todo)} registered ticket(s); {contested} derive from another owner's earlier "
                  "ticket" + ("" if mark or not contested else ": run again with --mark to refuse them"))
    if contested and not mark:
        raise typer.Exit(1)


@app.command()
def alerts(url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None, limit: int = 100,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What others did that concerns you: verifications that matched your tickets, registrations refused
    because they derive from yours, API keys created for you."""
    with reporting_client_errors():
        page = _client(url, api_key).alerts(limit=limit)
    if as_json:
        print(json.dumps(page, indent=2))
        return
    table = Table(title="alerts")
    for column in ("seq", "time", "what", "ticket", "details"):
        table.add_column(column)
    for event in page["events"]:
        table.add_row(str(event["seq"]), str(event["ts"]), event["action"], event["ticket_id"] or "",
                      json.dumps(event["payload"], sort_keys=True))
    console.print(table)


@receipt_app.command("get")
def receipt_get(ticket_id: str,
                output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="Write it here.")],
                url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Save the receipt of your ticket's registration (the event, a signed tree head, the inclusion proof)."""
    with reporting_client_errors():
        found = _client(url, api_key).ticket_receipt(ticket_id)
    output.write_text(json.dumps(found, indent=2) + "\n")
    console.print(f"receipt for event {found['leaf_index']} (tree of {found['tree_head']['tree_size']} events) "
                  f"written to {output}")


@receipt_app.command("verify")
def receipt_verify(
    receipt: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A receipt saved earlier.")],
    public_key: Annotated[Path, typer.Option(exists=True, dir_okay=False,
                                             help="The log's public key (PEM, `audit public-key`).")],
    url: Annotated[str | None, typer.Option(help="Also prove that the server's log today still extends the "
                                            "receipt's tree head.")] = None,
    api_key: KeyOpt = None,
) -> None:
    """Check a receipt offline with only the log's public key: the event's hash, its inclusion in the
    tree head, the head's signature. With --url also against the server's log today (a rewrite of the
    log since the receipt was issued fails here)."""
    from service.audit.log_key import LogKeyError, read_public_key
    from service.audit.merkle import VerificationFailed, verify_receipt

    try:
        key = read_public_key(public_key)
        head = verify_receipt(_read_json(receipt, "receipt"), key)
        if url:
            client = _client(url, api_key)
            with reporting_client_errors():
                _server_extends(client, head, key)
    except (VerificationFailed, LogKeyError) as exc:
        console.print(f"[red]receipt does not verify[/red]: {exc}")
        raise typer.Exit(1) from exc
    event = json.loads(receipt.read_text())["event"]
    today = " and the server's log today extends it" if url else ""
    console.print(f"[green]receipt verifies[/green]: event {event['seq']} ({event['action']} {event['subject']}, "
                  f"{event['ts']}) is in the log's signed tree of {head.tree_size} events{today}")


@app.command()
def demo(data_dir: Annotated[Path | None, typer.Option(help="Keep the demo's data here "
                                                       "(default: a fresh temporary folder).")] = None,
         seed: Annotated[int | None, typer.Option(help="The tickets' seed (default: drawn at random, as the finder "
                                                        "does, so the ticket's initialisation is private).")] = None,
         ) -> None:
    """Train a ticket, register it, verify a stolen copy and an independent ticket, show the audit."""
    from service.demo import run_demo

    ok = run_demo(console, data_dir=data_dir, seed=seed)
    raise typer.Exit(0 if ok else 1)



if __name__ == "__main__":
    app()
