"""One settings object for the whole service, read from `TICKETGUARD_*` environment variables."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.db import Timeouts


class Settings(BaseSettings):
    """Service configuration. Every field can be set as `TICKETGUARD_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="TICKETGUARD_", extra="ignore")

    data_dir: Path = Field(Path(".ticketguard"), description="Where the embedded database, "
                           "artifacts and the generated secret live.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in DATA_DIR.")
    artifact_dir: Path | None = Field(None, description="Artifact store; default: DATA_DIR/artifacts. With an "
                                      "s3:// ARTIFACT_URL: the local read-through cache (default "
                                      "DATA_DIR/artifact-cache).")
    artifact_url: str | None = Field(None, description="Where artifacts live: `file:///absolute/path` (the "
                                     "local store at that path) or `s3://bucket/prefix` (an S3-compatible "
                                     "object store, `pip install ticketguard[s3]`; credentials from boto3's "
                                     "standard chain, e.g. AWS_ACCESS_KEY_ID); default: the local ARTIFACT_DIR.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for an s3:// ARTIFACT_URL on MinIO, "
                                        "Ceph, moto and the like (e.g. `http://minio:9000`); default: AWS.")
    s3_region: str | None = Field(None, description="Region of the s3:// ARTIFACT_URL's bucket; default: "
                                  "boto3's (AWS_DEFAULT_REGION).")
    max_upload_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest accepted upload.")
    secret_key: str | None = Field(None, description="Server secret for API-key and payload MACs; "
                                   "generated once into DATA_DIR when unset.")
    audit_witness_url: str | None = Field(None, description="Where the server writes a signed tree head of the "
                                          "transparency log every AUDIT_WITNESS_INTERVAL seconds while the log grows: "
                                          "file:///absolute/dir (another disk, a mount) or s3://bucket/prefix (a "
                                          "bucket with object lock; S3_ENDPOINT_URL and S3_REGION apply); unset: none.")
    audit_witness_interval: float = Field(3600.0, gt=0, description="Seconds between witness checkpoints.")
    audit_witness_retention_days: int = Field(0, ge=0, le=36500, description="S3 witness: keep each checkpoint "
                                              "under object lock (COMPLIANCE) this many days; 0: the bucket's default.")
    webhook_poll_interval: float = Field(2.0, gt=0, description="Seconds between rounds of webhook deliveries "
                                         "(in the API process).")
    log_key_file: Path | None = Field(None, description="The transparency log's Ed25519 signing key (PKCS#8 "
                                      "PEM); default DATA_DIR/log-signing-key.pem, generated once. Keep it off "
                                      "the database's machine: whoever holds it can sign tree heads.")
    executor: Literal["local", "inline", "external", "ray"] = Field(
        "local", description="local: `serve` runs jobs in subprocesses; inline: in the API "
        "process after the response (tests); external: a separate `ticketguard supervise` runs them; "
        "ray: jobs run as Ray actors on the cluster at RAY_ADDRESS (`pip install ticketguard[ray]`).")
    workers: int = Field(2, ge=1, le=1024, description="Jobs run at once by a supervisor (with the Ray "
                         "executor: jobs in flight on the cluster).")
    ray_address: str | None = Field(None, description="Ray cluster to submit jobs to: `head:6379` from a "
                                    "machine that is a node of it (`ray start --address=head:6379` first); "
                                    "default: start a local Ray instance.")
    ray_namespace: str = Field("ticketguard", min_length=1, description="Ray namespace of the job actors "
                               "(one per TicketGuard deployment sharing a cluster).")
    ray_gpus_per_job: float = Field(1.0, ge=0, le=8, description="GPUs a GPU-wanting job asks Ray for "
                                    "(a fraction packs several jobs on one GPU); 0, or a cluster without "
                                    "GPUs, runs every job on CPUs.")
    ray_cpus_per_job: float = Field(1.0, gt=0, le=64, description="CPUs every job asks Ray for.")
    ray_start_timeout: float = Field(600.0, gt=0, description="Seconds a job's actor may wait for a Ray node "
                                     "with the resources it asks for before the attempt counts as failed.")
    ray_gpu_verify_bytes: int = Field(32 * 1024 * 1024, ge=0, description="A white-box verification "
                                      "wants a GPU when the suspect model file is at least this large.")
    lease_seconds: float = Field(30.0, gt=0, description="Job lease; renewed while a job runs.")
    max_attempts: int = Field(3, ge=1, description="Tries before a job whose worker died fails.")
    worker_start_timeout: float = Field(120.0, gt=0, description="Seconds a started worker (a process, or a "
                                        "Ray actor once a node took it) may take to report for its job; then "
                                        "it is killed and the job requeued.")
    db_lock_timeout: float = Field(10.0, ge=0, description="Seconds a statement waits for a lock (PostgreSQL "
                                   "lock_timeout, SQLite busy timeout); 0: no limit.")
    db_statement_timeout: float = Field(60.0, ge=0, description="Seconds a statement may run (PostgreSQL "
                                        "statement_timeout); 0: no limit.")
    db_idle_timeout: float = Field(5.0, ge=0, description="Seconds a job-system connection (worker, supervisor, "
                                   "dispatcher) may idle inside a transaction before PostgreSQL ends it and "
                                   "frees its locks (idle_in_transaction_session_timeout); 0: no limit.")
    db_request_idle_timeout: float = Field(120.0, ge=0, description="The same for API requests' connections "
                                           "(a request may validate a large upload between statements).")
    verify_permutations: int = Field(99999, ge=99, description="Most permutations a permutation null draws "
                                     "(topology, QR modules); its p can go no lower than 1/(1 + this). Unremarkable "
                                     "suspects stop after a few hundred.")
    search_candidates: int = Field(5, ge=1, le=1000, description="Tickets a 1:N search tests in full: "
                                   "the nearest to the suspect in the summary index.")
    topology_references: int = Field(20, ge=0, le=200, description="Earlier registered tickets (same "
                                     "architecture and dataset, density within a factor 2) a registration "
                                     "is aligned against to calibrate its aligned topology test.")
    topology_min_references: int = Field(10, ge=2, le=200, description="References a ticket needs before "
                                         "verification runs its aligned topology test.")
    aligned_candidates: int = Field(1, ge=0, le=1000, description="Tickets among a search's shortlist "
                                    "(nearest first) that get the aligned topology test.")
    endpoint_allow_http_hosts: str = Field("", description="Comma-separated host names a remote prediction "
                                           "endpoint may be called over plain http (default: https only).")
    endpoint_allow_networks: str = Field("", description="Comma-separated networks (CIDR) an endpoint may "
                                         "resolve to although private, loopback or otherwise non-public.")
    endpoint_connect_timeout: float = Field(5.0, gt=0, le=60, description="Seconds to connect to an endpoint.")
    endpoint_read_timeout: float = Field(30.0, gt=0, le=600, description="Seconds to wait for an answer.")
    endpoint_max_response_bytes: int = Field(1 << 20, gt=0, description="Largest endpoint answer accepted.")
    endpoint_batch_size: int = Field(64, ge=1, le=1024, description="Inputs per endpoint request.")
    match_alpha: float = Field(1e-3, gt=0, lt=1, description="p-value at or below which a "
                               "verification says `match`.")
    inconclusive_alpha: float = Field(1e-2, gt=0, lt=1, description="p-value below which a "
                                      "non-match is `inconclusive` rather than `no_match`.")

    @field_validator("endpoint_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for network in filter(None, (n.strip() for n in value.split(","))):
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad entry
        return value

    @field_validator("artifact_url", "audit_witness_url")
    @classmethod
    def _storage_url(cls, value: str | None, info) -> str | None:
        if not value:
            return None
        variable = f"TICKETGUARD_{info.field_name.upper()}"
        parsed = urlparse(value)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise ValueError(f"{variable}: a file URL needs an absolute path, e.g. file:///srv/ticketguard/x")
        elif parsed.scheme == "s3":
            if not parsed.netloc or any(c in parsed.netloc for c in "@:") or parsed.query or parsed.fragment:
                raise ValueError(f"{variable}: an s3 URL is s3://bucket or s3://bucket/prefix")
        else:
            raise ValueError(f"{variable} must be file:///absolute/path or s3://bucket/prefix, "
                             f"not a {parsed.scheme + ':' if parsed.scheme else 'scheme-less'} URL")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint_url(cls, value: str | None) -> str | None:
        if value and urlparse(value).scheme not in ("http", "https"):
            raise ValueError("TICKETGUARD_S3_ENDPOINT_URL must be an http:// or https:// URL")
        return value or None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ticketguard.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        """The local store's directory; with an s3:// ARTIFACT_URL, the local read-through cache."""
        if self.artifact_url and self.artifact_url.startswith("file:"):
            return Path(unquote(urlparse(self.artifact_url).path)).resolve()
        default = "artifact-cache" if self.artifact_url else "artifacts"
        return (self.artifact_dir or self.data_dir / default).resolve()

    @property
    def is_embedded(self) -> bool:
        """True when the database is the default SQLite file inside DATA_DIR."""
        return self.database_url is None

    def secret(self) -> bytes:
        """The server secret; generated once into DATA_DIR/secret.key (mode 0600) when unset."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        value = generated_file(path, lambda: secrets.token_hex(32).encode()).decode().strip()
        if not value:
            raise RuntimeError(f"the secret file {path} is empty: restore it, or set TICKETGUARD_SECRET_KEY "
                               "(a new secret invalidates every API key)")
        return value.encode()

    @property
    def resolved_log_key_file(self) -> Path:
        """Where the transparency log's Ed25519 signing key lives (LOG_KEY_FILE, default in DATA_DIR)."""
        return self.log_key_file or self.data_dir / "log-signing-key.pem"

    def db_timeouts(self, *, requests: bool = False) -> Timeouts:
        """The database timeouts of the job system's connections, or (`requests`) of API requests'."""
        return Timeouts(lock=self.db_lock_timeout, statement=self.db_statement_timeout,
                        idle_in_transaction=self.db_request_idle_timeout if requests else self.db_idle_timeout)

    def child_environment(self) -> dict[str, str]:
        """Environment that makes a worker subprocess see exactly these settings."""
        env = dict(os.environ)
        env.update({
            "TICKETGUARD_DATA_DIR": str(self.data_dir.resolve()),
            "TICKETGUARD_DATABASE_URL": self.resolved_database_url,
            "TICKETGUARD_ARTIFACT_DIR": str(self.resolved_artifact_dir),
            "TICKETGUARD_VERIFY_PERMUTATIONS": str(self.verify_permutations),
            "TICKETGUARD_MATCH_ALPHA": str(self.match_alpha),
            "TICKETGUARD_SEARCH_CANDIDATES": str(self.search_candidates),
            "TICKETGUARD_TOPOLOGY_REFERENCES": str(self.topology_references),
            "TICKETGUARD_TOPOLOGY_MIN_REFERENCES": str(self.topology_min_references),
            "TICKETGUARD_ALIGNED_CANDIDATES": str(self.aligned_candidates),
            "TICKETGUARD_ENDPOINT_ALLOW_HTTP_HOSTS": self.endpoint_allow_http_hosts,
            "TICKETGUARD_ENDPOINT_ALLOW_NETWORKS": self.endpoint_allow_networks,
            "TICKETGUARD_ENDPOINT_CONNECT_TIMEOUT": str(self.endpoint_connect_timeout),
            "TICKETGUARD_ENDPOINT_READ_TIMEOUT": str(self.endpoint_read_timeout),
            "TICKETGUARD_ENDPOINT_MAX_RESPONSE_BYTES": str(self.endpoint_max_response_bytes),
            "TICKETGUARD_ENDPOINT_BATCH_SIZE": str(self.endpoint_batch_size),
            "TICKETGUARD_INCONCLUSIVE_ALPHA": str(self.inconclusive_alpha),
            "TICKETGUARD_LEASE_SECONDS": str(self.lease_seconds),
            "TICKETGUARD_MAX_ATTEMPTS": str(self.max_attempts),
            "TICKETGUARD_WORKER_START_TIMEOUT": str(self.worker_start_timeout),
            "TICKETGUARD_DB_LOCK_TIMEOUT": str(self.db_lock_timeout),
            "TICKETGUARD_DB_STATEMENT_TIMEOUT": str(self.db_statement_timeout),
            "TICKETGUARD_DB_IDLE_TIMEOUT": str(self.db_idle_timeout),
            "TICKETGUARD_DB_REQUEST_IDLE_TIMEOUT": str(self.db_request_idle_timeout),
        })
        if self.secret_key:
            env["TICKETGUARD_SECRET_KEY"] = self.secret_key
        if self.log_key_file:
            env["TICKETGUARD_LOG_KEY_FILE"] = str(self.log_key_file.resolve())
        for variable, value in (("TICKETGUARD_ARTIFACT_URL", self.artifact_url),
                                ("TICKETGUARD_S3_ENDPOINT_URL", self.s3_endpoint_url),
                                ("TICKETGUARD_S3_REGION", self.s3_region)):
            if value:
                env[variable] = value
            else:  # not inherited from our own environment when these settings were built without it
                env.pop(variable, None)
        # a worker's share of the cores for torch and BLAS, unless the operator chose: with every worker
        # spinning up a thread per core, concurrent jobs oversubscribe the machine and small matrix
        # products (channel alignment) slow down by an order of magnitude
        threads = str(max(1, (os.cpu_count() or 1) // self.workers))
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(variable, threads)
        return env


def generated_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The content of `path`, written first (mode 0600) from `make()` when it does not exist.

    The content is written to a temporary file and hard-linked into place, so processes starting
    together agree on one value and never read a half-written file.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(make())
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    return path.read_bytes()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests build their own and pass them to `create_app`)."""
    return Settings()
