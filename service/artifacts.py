"""Content-addressed artifact store (SHA-256; no client-supplied names): on the local disk here, in an
S3-compatible object store in `service.artifacts_s3`; `make_store` picks one from the settings."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from service.errors import APIError, ArtifactStoreError

if TYPE_CHECKING:
    from service.config import Settings

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Staged:
    """An upload received into a temporary file: where it is, its hash and size."""

    path: Path
    sha256: str
    size: int


class ArtifactStore:
    """Files named by their SHA-256 under `root/ab/abcdef...`; writes are atomic renames.

    The base of every store: `path(sha256)` is always a local file a caller can read (a store kept
    elsewhere fetches it into `root` first), and staging always happens in `root/tmp`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def temp_path(self) -> Path:
        """A fresh temporary file inside the store (same filesystem, so `adopt` is a rename). The folder is
        made again if it went away (an S3 store's cache may be cleared while the service runs)."""
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        os.close(fd)
        return Path(name)

    @contextmanager
    def staged(self, stream: BinaryIO | Iterable[bytes], *, max_bytes: int) -> Iterator[Staged]:
        """Stream into a temporary file with a byte cap (413 past it), hashing as it goes.

        The file is removed on exit unless `keep` moved it into the store.
        """
        tmp = self.temp_path()
        digest, size = hashlib.sha256(), 0
        chunks = iter(lambda: stream.read(CHUNK), b"") if hasattr(stream, "read") else stream
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise APIError(413, "payload_too_large",
                                       f"upload exceeds the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            yield Staged(tmp, digest.hexdigest(), size)
        finally:
            tmp.unlink(missing_ok=True)

    def keep(self, staged: Staged) -> str:
        """Move a staged file into the store under its hash."""
        return self.adopt(staged.path, staged.sha256)

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copy a local file in (used for artifacts the service produces)."""
        with open(source, "rb") as handle, self.staged(handle, max_bytes=1 << 62) as staged:
            return self.keep(staged), staged.size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes the service already holds; returns (sha256, size)."""
        with self.staged([data], max_bytes=1 << 62) as staged:
            return self.keep(staged), staged.size

    def adopt(self, tmp: Path, sha256: str) -> str:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        return sha256

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")


def make_store(settings: Settings) -> ArtifactStore:
    """The store `TICKETGUARD_ARTIFACT_URL` names: the local directory by default (and for `file://`), an
    S3-compatible bucket for `s3://bucket/prefix` (boto3 is imported only then). Raises
    `ArtifactStoreError` naming the URL when the bucket is missing or its endpoint unreachable."""
    url = settings.artifact_url
    if url and url.startswith("s3://"):
        try:
            from service.artifacts_s3 import S3ArtifactStore
        except ImportError as exc:
            raise ArtifactStoreError(f"TICKETGUARD_ARTIFACT_URL={url} needs boto3 ({exc}): "
                                     "pip install 'ticketguard[s3]'") from None
        return S3ArtifactStore(url, cache_dir=settings.resolved_artifact_dir,
                               endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    return ArtifactStore(settings.resolved_artifact_dir)
