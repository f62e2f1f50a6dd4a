"""The artifact store in an S3-compatible bucket (AWS S3, MinIO, Ceph, moto), with a local read-through cache.

Objects are named by their SHA-256 under `prefix/ab/abcdef...`, exactly as the local store names files, so
an object's key is never built from anything a client sent. Every caller keeps reading local files:
`path(sha256)` downloads the object into the cache directory on first use (into a temporary file, checked
against its name, then renamed into place) and returns the cached file. Writes (`adopt`, `keep`,
`put_file`, `put_bytes`) upload with boto3's managed transfer (multipart above `multipart_threshold`),
skip objects already in the bucket, and leave the file in the cache. Staging stays local (`root/tmp`).

Imported only when an s3:// `TICKETGUARD_ARTIFACT_URL` is configured (`pip install ticketguard[s3]`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from service.artifacts import CHUNK, ArtifactStore, ArtifactStoreError

log = logging.getLogger("ticketguard")

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # files at least this large are uploaded (and fetched) in parts
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024  # the part size (S3's minimum is 5 MiB, its limit 10,000 parts)
MISSING = {"404", "NoSuchKey", "NotFound"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3ArtifactStore(ArtifactStore):
    """`ArtifactStore` whose objects live in `s3://bucket/prefix`; `root` is the local cache directory.

    Construction checks that the bucket is reachable (`ArtifactStoreError` naming the URL otherwise).
    A cached file is checked against its name the first time this store object hands it out (a corrupt
    one is fetched again); a downloaded object that does not hash to its name is refused and never cached.
    """

    def __init__(self, url: str, *, cache_dir: Path, endpoint_url: str | None = None, region: str | None = None,
                 multipart_threshold: int = MULTIPART_THRESHOLD,
                 multipart_chunksize: int = MULTIPART_CHUNKSIZE) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError("an S3 artifact URL is s3://bucket or s3://bucket/prefix")
        super().__init__(cache_dir)
        self.url, self.bucket, self.prefix = url, parsed.netloc, parsed.path.strip("/")
        self.endpoint_url = endpoint_url
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_chunksize)
        # standard retries (AWS_MAX_ATTEMPTS, default 3) with a short connect timeout, so an unreachable
        # endpoint is reported in seconds rather than minutes
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                   config=Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard"}))
        self._verified: set[str] = set()
        self._check_bucket()

    # ---- naming and errors

    def key(self, sha256: str) -> str:
        super().path(sha256)  # validates the digest
        return f"{self.prefix}/{sha256[:2]}/{sha256}" if self.prefix else f"{sha256[:2]}/{sha256}"

    def _where(self) -> str:
        return f"the artifact store {self.url}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _failure(self, doing: str, exc: Exception) -> ArtifactStoreError:
        if isinstance(exc, NoCredentialsError):
            reason = "no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
        elif isinstance(exc, ClientError) and _code(exc) in {"403", "AccessDenied", "InvalidAccessKeyId",
                                                              "SignatureDoesNotMatch"}:
            reason = f"access denied ({_code(exc)}): check the credentials and the bucket policy"
        else:
            reason = str(exc)
        return ArtifactStoreError(f"{self._where()}: {doing} failed: {reason}")

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchBucket", "NotFound"}:
                raise ArtifactStoreError(f"{self._where()}: the bucket {self.bucket!r} does not exist; "
                                         "create it, or fix TICKETGUARD_ARTIFACT_URL") from None
            raise self._failure("checking the bucket", exc) from None
        except BotoCoreError as exc:
            raise self._failure("reaching the bucket", exc) from None

    # ---- the store

    def _in_bucket(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if _code(exc) in MISSING:
                return False
            raise self._failure(f"looking up artifact {sha256}", exc) from None
        except BotoCoreError as exc:
            raise self._failure(f"looking up artifact {sha256}", exc) from None
        return True

    def exists(self, sha256: str) -> bool:
        return self._in_bucket(sha256)

    def path(self, sha256: str) -> Path:
        """The cached local file, fetched first if need be. An artifact missing from the bucket gives a path
        that does not exist, as a missing file of the local store does."""
        local = super().path(sha256)
        if local.is_file():
            if sha256 in self._verified:
                return local
            if file_sha256(local) == sha256:
                self._verified.add(sha256)
                return local
            log.warning("cached artifact %s does not hash to its name; fetching it again", local)
            local.unlink(missing_ok=True)
        if self._fetch(sha256, local):
            self._verified.add(sha256)
        return local

    def _fetch(self, sha256: str, local: Path) -> bool:
        """Download into a temporary file, check its hash, rename it into the cache. False if missing."""
        key, tmp = self.key(sha256), self.temp_path()
        try:
            try:
                self.client.download_file(self.bucket, key, str(tmp), Config=self.transfer)
            except ClientError as exc:
                if _code(exc) in MISSING:
                    return False
                raise self._failure(f"fetching artifact {sha256}", exc) from None
            except (Boto3Error, BotoCoreError) as exc:
                raise self._failure(f"fetching artifact {sha256}", exc) from None
            actual = file_sha256(tmp)
            if actual != sha256:
                raise ArtifactStoreError(f"{self._where()}: the object {key} hashes to {actual}, not to its "
                                         "name: it is corrupt and was not used")
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(local)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(self, tmp: Path, sha256: str) -> str:
        """Upload a file the caller hashed (multipart when large) unless the bucket has it, then cache it."""
        key = self.key(sha256)
        if not self._in_bucket(sha256):
            try:
                self.client.upload_file(str(tmp), self.bucket, key, Config=self.transfer)
            except (Boto3Error, BotoCoreError, ClientError) as exc:  # S3UploadFailedError wraps a ClientError
                raise self._failure(f"uploading artifact {sha256}", exc) from None
        cached = super().path(sha256).is_file()
        super().adopt(tmp, sha256)
        if not cached:  # the caller's file, hashed as it was staged
            self._verified.add(sha256)
        return sha256
