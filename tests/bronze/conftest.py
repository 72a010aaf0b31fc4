"""Fixtures of the Bronze tests: dummy AWS credentials and an S3 endpoint
(moto over HTTP). The data helpers live in bronzeutil.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3util import AWS_ENV, S3Server, start_s3


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and no config files, so boto3 never finds real ones."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3(aws_env: None) -> Iterator[S3Server]:
    """A moto S3 server over HTTP on 127.0.0.1 with a fresh bucket (`s3.bucket`,
    `s3.endpoint_url`, `s3.filesystem()` for pyarrow)."""
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()
