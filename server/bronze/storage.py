"""Where Bronze lands: a local directory or an S3 bucket, behind one interface.

The Bronze writer builds every file at a local *spool path* that no reader looks
at, closes it, and hands it to `publish`, which makes it visible in one atomic
step and durable:

- `LocalStore`: the spool path is a hidden temp name (`.part-....parquet.tmp`) in
  the destination directory itself, so dataset readers skip it (they ignore
  names starting with `.` or `_`). `publish` fsyncs the file, `os.replace`s it
  to its final name and fsyncs the directory, so a visible file is complete and
  survives a power cut.
- `S3Store`: the spool path is under a local `spool_dir`. `publish` uploads it
  with boto3 (`upload_file`: multipart above the threshold; S3 shows an object
  only when its upload completes, and s3transfer aborts a failed multipart
  upload) and deletes the spool file.

Small objects (the commit log's markers) are written whole with `put` (local:
temp file, fsync, rename, fsync of the directory; S3: one PUT), read with
`get`, listed with `list_keys` and removed with `delete`.

Every method is one attempt: it raises a classified `IngestError` (retriable
or not) and can be called again. Retrying lives in keystone_ingest/retry.py.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from typing import Any, Protocol
from urllib.parse import urlparse

from keystone_ingest.server.errors import IngestError, SinkFailed, SinkUnavailable
from keystone_ingest.server.files import classify_os_error, fsync_path, pid_alive

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"

# S3 error codes that resending will not fix. Throttling, 5xx and timeouts are
# transient; an unknown 4xx is treated as permanent (408/429 aside) so a
# misconfiguration is reported as such instead of as an outage.
_PERMANENT_S3_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
        "InvalidRequest",
    }
)


def classify_s3_error(exc: BaseException, what: str) -> IngestError:
    """A boto3/botocore failure as the sink reports it, by error code and type,
    never by message text. boto3's `upload_file` wraps a `ClientError` in an
    `S3UploadFailedError` raised inside its `except`, so the code is found on
    `__context__`."""
    import botocore.exceptions as bce  # deferred: local-only servers never import boto

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, bce.ClientError | bce.BotoCoreError):
        cause = cause.__context__
    if isinstance(cause, bce.ClientError):
        err = cause.response.get("Error", {})
        code = str(err.get("Code", ""))
        http = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        throttled = http in (408, 429) or code in ("SlowDown", "RequestTimeout", "Throttling")
        permanent = code in _PERMANENT_S3_CODES or (400 <= http < 500 and not throttled)
        cls = SinkFailed if permanent else SinkUnavailable
        return cls(f"bronze: {what}: S3 {code or http}: {err.get('Message', '')}".rstrip(": "))
    if isinstance(cause, bce.NoCredentialsError | bce.PartialCredentialsError | bce.ParamValidationError):
        return SinkFailed(f"bronze: {what}: {cause}")
    if isinstance(cause, bce.BotoCoreError):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, ...
        return SinkUnavailable(f"bronze: {what}: {cause}")
    if isinstance(exc, OSError):
        return classify_os_error(exc, f"bronze: {what}")
    return SinkUnavailable(f"bronze: {what}: {type(exc).__name__}: {exc}")


class ObjectStore(Protocol):
    """Keys are relative POSIX paths such as `orders/year=2017/month=07/day=14/part-....parquet`."""

    def spool_path(self, key: str) -> str:
        """A local path (hidden from readers) where the writer builds the file for `key`.
        Its directory exists when this returns."""

    def publish(self, spool_path: str, key: str) -> None:
        """Make the closed spool file visible as `key`, durably. One attempt, idempotent."""

    def url(self, key: str) -> str:
        """Where `key` is visible, for logs."""

    def check(self) -> None:
        """Fail fast at start on a destination that cannot work (SinkFailed)."""

    def put(self, key: str, data: bytes) -> None:
        """Write a small object (a commit marker) atomically and durably. One attempt."""

    def get(self, key: str) -> bytes | None:
        """A small object's bytes, or None when there is none."""

    def list_keys(self, prefix: str) -> list[str]:
        """Keys of the objects directly under the folder `prefix`, sorted."""

    def delete(self, key: str) -> None:
        """Remove an object; one that is not there is no error."""


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        # Directories known to be durably linked into their parent. A new
        # partition directory is fsynced into its parent once; the set only
        # grows (a few thousand entries at most: tables x days).
        self._synced_dirs: set[str] = set()

    def spool_path(self, key: str) -> str:
        final = os.path.join(self.root, key)
        directory, name = os.path.split(final)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, f".{name}{TMP_SUFFIX}")

    def publish(self, spool_path: str, key: str) -> None:
        final = os.path.join(self.root, key)
        try:
            if os.path.exists(spool_path):
                fsync_path(spool_path)
                os.replace(spool_path, final)
            elif not os.path.exists(final):
                raise SinkFailed(f"bronze: {spool_path} vanished before it was published as {final}")
            self._sync_dirs(os.path.dirname(final))
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: publishing {final}") from exc

    def _sync_dirs(self, directory: str) -> None:
        # The rename is durable once its directory is fsynced; a directory
        # created for this partition is durable once its parent is, and so on
        # up to the first directory already known durable (or the root).
        fsync_path(directory, directory=True)
        while directory not in self._synced_dirs and directory != self.root:
            parent = os.path.dirname(directory)
            fsync_path(parent, directory=True)
            self._synced_dirs.add(directory)
            directory = parent

    def put(self, key: str, data: bytes) -> None:
        final = os.path.join(self.root, key)
        tmp = self.spool_path(key)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            self._sync_dirs(os.path.dirname(final))
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: writing {final}") from exc

    def get(self, key: str) -> bytes | None:
        path = os.path.join(self.root, key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: reading {path}") from exc

    def list_keys(self, prefix: str) -> list[str]:
        directory = os.path.join(self.root, prefix)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: listing {directory}") from exc
        return sorted(f"{prefix.rstrip('/')}/{n}" for n in names if not n.startswith("."))

    def delete(self, key: str) -> None:
        path = os.path.join(self.root, key)
        try:
            os.unlink(path)
            fsync_path(os.path.dirname(path), directory=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: deleting {path}") from exc

    def url(self, key: str) -> str:
        return os.path.join(self.root, key)

    def check(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: creating {self.root}") from exc


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        spool_dir: str,
        endpoint_url: str | None = None,
        multipart_threshold_bytes: int = 64 * 1024 * 1024,
        multipart_chunk_bytes: int = 16 * 1024 * 1024,
        max_attempts: int = 3,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_pool_connections: int = 16,
        sse_kms_key_id: str | None = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # The spool is namespaced by bucket and prefix, and by process: files
        # a killed worker left are never uploaded (its flush is redone from
        # Kafka), so the next worker on this host deletes its folder (check()).
        self._spool_parent = os.path.join(os.path.abspath(spool_dir), bucket, *filter(None, self.prefix.split("/")))
        self.spool_root = os.path.join(self._spool_parent, f"{_HOST}-{os.getpid()}")
        self.endpoint_url = endpoint_url
        # SSE-KMS under this key for every object (None: the bucket's default encryption).
        self._upload_args = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": sse_kms_key_id} if sse_kms_key_id else None
        )
        # botocore's own retries (standard mode: throttling and transient
        # errors, per request, so one failed part does not restart a multipart
        # upload) stay short; outages are retried by the committer with backoff.
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                max_pool_connections=max_pool_connections,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            max_concurrency=4,
        )

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def spool_path(self, key: str) -> str:
        path = os.path.join(self.spool_root, key)
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, f".{name}{TMP_SUFFIX}")

    def publish(self, spool_path: str, key: str) -> None:
        if not os.path.exists(spool_path):
            return  # an earlier attempt uploaded it and removed the spool file
        try:
            self._client.upload_file(
                spool_path, self.bucket, self._object_key(key), Config=self._transfer, ExtraArgs=self._upload_args
            )
        except Exception as exc:  # boto3 raises several unrelated types; all are classified
            raise classify_s3_error(exc, f"uploading {self.url(key)}") from exc
        try:
            os.unlink(spool_path)
        except OSError as exc:
            log.warning("bronze: could not remove spool file", extra={"path": spool_path, "error": str(exc)})

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._object_key(key), Body=data, **(self._upload_args or {})
            )
        except Exception as exc:
            raise classify_s3_error(exc, f"writing {self.url(key)}") from exc

    def get(self, key: str) -> bytes | None:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"].read()
        except Exception as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return None
            raise classify_s3_error(exc, f"reading {self.url(key)}") from exc

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._object_key(prefix.rstrip("/")) + "/"
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/"
            ):
                keys += [o["Key"] for o in page.get("Contents", ())]
        except Exception as exc:
            raise classify_s3_error(exc, f"listing {self.url(prefix)}") from exc
        skip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[skip:] for k in keys)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:
            raise classify_s3_error(exc, f"deleting {self.url(key)}") from exc

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def _remove_dead_spools(self) -> None:
        """Deletes the spool folders of this host's processes that are gone."""
        for name in os.listdir(self._spool_parent):
            host, _, pid = name.rpartition("-")
            if host != _HOST or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            shutil.rmtree(os.path.join(self._spool_parent, name), ignore_errors=True)
            log.info("bronze: removed the spool files of a worker that is gone", extra={"pid": int(pid)})

    def check(self) -> None:
        try:
            os.makedirs(self.spool_root, exist_ok=True)
            self._remove_dead_spools()
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: creating spool directory {self.spool_root}") from exc
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = classify_s3_error(exc, f"checking bucket {self.bucket}")
            # HEAD responses carry no error body: name the two common codes.
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (403, 404):
                code = "NoSuchBucket" if status == 404 else "AccessDenied"
                raise SinkFailed(f"bronze: checking bucket {self.bucket}: S3 {code}") from exc
            if not err.retriable:
                raise err from exc
            # An S3 outage at start is not a reason to refuse to start: files
            # spool locally and upload when it is back.
            log.warning("bronze: S3 not reachable at start; uploads will retry", extra={"error": err.message})


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._=/-]*$")


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    spool_dir: str = "./data/bronze-spool",
    **s3_options: Any,
) -> LocalStore | S3Store:
    """`file:///abs/path`, `file://./relative`, a plain path, or `s3://bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"bronze uri {uri!r} names no bucket")
        if not _SAFE_KEY.match(parsed.path):
            raise ValueError(f"bronze uri {uri!r}: prefix must use letters, digits and . _ = / -")
        return S3Store(parsed.netloc, parsed.path, spool_dir=spool_dir, endpoint_url=endpoint_url, **s3_options)
    if parsed.scheme == "file":
        # file:///abs -> netloc "" and path "/abs"; file://./rel -> netloc "." and path "/rel".
        local = parsed.path if parsed.netloc in ("", "localhost") else parsed.netloc + parsed.path
        return LocalStore(local)
    if parsed.scheme == "":
        return LocalStore(uri)
    raise ValueError(f"bronze uri {uri!r}: scheme must be file:// or s3://")
