"""S3 for tests of any package: moto's server over real HTTP on localhost.

    with s3_server() as s3:                    # or the fixture `s3` (tests/bronze/conftest.py)
        sink_config = BronzeConfig(uri=s3.uri("bronze"), s3_endpoint_url=s3.endpoint_url)
        ...
        dataset = pyarrow.dataset.dataset(f"{s3.bucket}/bronze/orders", filesystem=s3.filesystem(),
                                          partitioning="hive")

Each server gets a bucket with a random name. moto keeps its state in the test
process, not in the server, so `stop()` then `restart()` (same port) is an
outage after which the buckets and objects are still there; it also means every
server of a session sees every bucket, hence the random names.

Code under test that builds its own boto3 client reads credentials from the
environment: set `AWS_ENV` (e.g. with monkeypatch) so it never looks for real
ones. The clients made here pass them explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator

import boto3
import pyarrow.fs as pafs
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
"""Environment that keeps boto3 (and pyarrow) away from real credentials."""

# werkzeug logs every request moto serves; tests do not need to see them.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


class S3Server:
    """A running moto S3 server with one bucket."""

    def __init__(self, bucket: str, port: int = 0) -> None:
        self.bucket = bucket
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.running = True
        self.client().create_bucket(Bucket=bucket)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def uri(self, prefix: str = "") -> str:
        """`s3://<bucket>/<prefix>`."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self):  # -> botocore S3 client (no public type)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's own S3 client (not boto3) pointed at this server."""
        return pafs.S3FileSystem(
            endpoint_override=f"{self.host}:{self.port}",
            scheme="http",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
        )

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Every visible object under `prefix` in the bucket: key -> size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj["Size"]
        return found

    def stop(self) -> None:
        """Stop serving (connections are refused); the bucket's content is kept."""
        if self.running:
            self._server.stop()
            self.running = False

    def restart(self) -> None:
        """Serve again on the same port, with the same content."""
        if not self.running:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            self.running = True


def start_s3(bucket: str | None = None, port: int = 0) -> S3Server:
    """Start a moto S3 server on 127.0.0.1 (port 0: any free port) with a fresh bucket."""
    return S3Server(bucket or f"test-{uuid.uuid4().hex[:16]}", port)


@contextlib.contextmanager
def s3_server(bucket: str | None = None) -> Iterator[S3Server]:
    server = start_s3(bucket)
    try:
        yield server
    finally:
        server.stop()
