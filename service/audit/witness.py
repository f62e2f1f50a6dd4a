"""An external witness for the transparency log: signed tree heads written, on a schedule, where whoever
can rewrite the database cannot reach them (another disk, an S3 bucket under object lock). Any of them
later proves a rewrite with `ticketguard audit verify --checkpoint FILE`."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from service.audit.merkle import TreeHead
from service.audit.periodic import PeriodicLoop
from service.audit.transparency import latest_tree_head, log_key
from service.config import Settings
from service.db import sessions_for

log = logging.getLogger("ticketguard.witness")


class Witness(Protocol):
    def write(self, name: str, body: bytes) -> str | None:
        """Keep `body` under `name`; where it was written, or None if `name` was already there."""


class FileWitness:
    """Checkpoints as files in a directory, each written once (never overwritten) and synced."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, name: str, body: bytes) -> str | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return str(path)


class S3Witness:
    """Checkpoints as objects in a bucket, under object lock (COMPLIANCE) for `retention_days` when set."""

    def __init__(self, url: str, *, endpoint_url: str | None, region: str | None, retention_days: int) -> None:
        import boto3  # the s3 extra

        parsed = urlparse(url)
        self.bucket, self.prefix, self.retention_days = parsed.netloc, parsed.path.strip("/"), retention_days
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def write(self, name: str, body: bytes) -> str | None:
        key = f"{self.prefix}/{name}" if self.prefix else name
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return None  # already with the witness: never written twice
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        lock = {}
        if self.retention_days:
            lock = {"ObjectLockMode": "COMPLIANCE",
                    "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=self.retention_days)}
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **lock)
        return f"s3://{self.bucket}/{key}"


def make_witness(settings: Settings) -> Witness:
    url = settings.audit_witness_url
    if url is None:
        raise ValueError("no witness configured: set TICKETGUARD_AUDIT_WITNESS_URL")
    if url.startswith("file:"):
        return FileWitness(Path(unquote(urlparse(url).path)))
    return S3Witness(url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                     retention_days=settings.audit_witness_retention_days)


def checkpoint_name(head: TreeHead) -> str:
    stamp = head.timestamp.replace(":", "").replace("-", "")
    return f"checkpoint-{head.tree_size:012d}-{stamp}.json"


def witness_once(settings: Settings, witness: Witness) -> tuple[TreeHead, str | None]:
    """Sign the latest tree head (if the log grew) and give it to the witness; where it went, or None
    when the witness already holds it."""
    with sessions_for(settings)() as session:
        head = latest_tree_head(session, log_key(settings, session))
        session.commit()
    return head, witness.write(checkpoint_name(head), (json.dumps(head.to_dict(), indent=2) + "\n").encode())


def witness_loop(settings: Settings) -> PeriodicLoop:
    """Every `audit_witness_interval` seconds, a checkpoint to the witness; a failure is logged and tried
    again next time (the log itself is not affected)."""
    witness = make_witness(settings)

    def step() -> None:
        head, where = witness_once(settings, witness)
        if where:
            log.info("witness: tree head of %d events written to %s", head.tree_size, where)

    return PeriodicLoop("ticketguard-witness", settings.audit_witness_interval, step, log)
