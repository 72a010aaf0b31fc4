"""Object stores of Bronze: where a file is built, how it becomes visible,
small objects (the commit log), and how failures are classified. Real
directories, real S3 (moto over HTTP)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from keystone_ingest.server.bronze.storage import LocalStore, S3Store, classify_os_error, open_store
from keystone_ingest.server.errors import SinkFailed, SinkUnavailable

KEY = "orders/year=2017/month=11/day=24/part-x.parquet"


def build(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# -- URIs


def test_uris_name_local_directories_and_s3_prefixes(tmp_path, monkeypatch, aws_env):
    monkeypatch.chdir(tmp_path)
    assert open_store(f"file://{tmp_path}/abs").root == f"{tmp_path}/abs"
    assert open_store("file://./data/bronze").root == f"{tmp_path}/data/bronze"
    assert open_store("relative/dir").root == f"{tmp_path}/relative/dir"
    assert open_store(str(tmp_path / "plain")).root == f"{tmp_path}/plain"
    s3 = open_store("s3://lake/bronze/v1/", spool_dir=str(tmp_path / "spool"))
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.url(KEY)) == ("lake", "bronze/v1", f"s3://lake/bronze/v1/{KEY}")
    assert s3.spool_root.startswith(f"{tmp_path}/spool/lake/bronze/v1/")  # then host-pid: one folder per process
    with pytest.raises(ValueError, match="scheme"):
        open_store("gs://bucket/prefix")
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///prefix")


# -- local


def test_local_file_is_hidden_until_published_then_complete(tmp_path):
    store = LocalStore(str(tmp_path))
    spool = store.spool_path(KEY)
    assert os.path.dirname(spool) == str(tmp_path / os.path.dirname(KEY))
    assert os.path.basename(spool).startswith(".")  # dataset readers skip it
    build(spool, b"complete file")
    store.publish(spool, KEY)
    assert not os.path.exists(spool)
    assert (tmp_path / KEY).read_bytes() == b"complete file"
    store.publish(spool, KEY)  # a retry after success is a no-op


def test_local_publish_of_a_vanished_file_is_an_error_not_a_success(tmp_path):
    store = LocalStore(str(tmp_path))
    with pytest.raises(SinkFailed, match="vanished"):
        store.publish(store.spool_path(KEY), KEY)


def test_local_errors_are_classified_by_errno():
    assert isinstance(classify_os_error(OSError(errno.ENOSPC, "No space left on device"), "w"), SinkUnavailable)
    assert isinstance(classify_os_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "w"), SinkUnavailable)
    assert isinstance(classify_os_error(OSError(errno.EACCES, "Permission denied"), "w"), SinkFailed)
    assert isinstance(classify_os_error(OSError(errno.EROFS, "Read-only file system"), "w"), SinkFailed)


def test_local_layout_error_is_permanent(tmp_path):
    (tmp_path / "orders").write_text("a file where a directory should be")
    store = LocalStore(str(tmp_path))
    with pytest.raises(NotADirectoryError):
        store.spool_path(KEY)  # the writer classifies this
    assert isinstance(classify_os_error(NotADirectoryError(errno.ENOTDIR, "Not a directory"), "w"), SinkFailed)


# -- S3


def s3_store(s3, tmp_path, bucket: str | None = None, **kwargs) -> S3Store:
    return S3Store(
        bucket or s3.bucket,
        "bronze",
        spool_dir=str(tmp_path / "spool"),
        endpoint_url=s3.endpoint_url,
        max_attempts=1,
        connect_timeout_s=1.0,
        **kwargs,
    )


def test_s3_object_appears_with_the_spool_files_bytes_and_the_spool_is_removed(s3, tmp_path):
    store = s3_store(s3, tmp_path)
    spool = store.spool_path(KEY)
    assert os.path.basename(spool).startswith(".")
    build(spool, b"parquet bytes")
    store.publish(spool, KEY)
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"bronze/{KEY}")["Body"].read()
    assert body == b"parquet bytes"
    assert not os.path.exists(spool)
    store.publish(spool, KEY)  # a retry after success is a no-op


def test_s3_multipart_upload_above_the_threshold(s3, tmp_path):
    mib = 1024 * 1024
    store = s3_store(s3, tmp_path, multipart_threshold_bytes=5 * mib, multipart_chunk_bytes=5 * mib)
    data = os.urandom(11 * mib)
    spool = store.spool_path(KEY)
    build(spool, data)
    store.publish(spool, KEY)
    client = s3.client()
    head = client.head_object(Bucket=s3.bucket, Key=f"bronze/{KEY}")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB
    assert client.get_object(Bucket=s3.bucket, Key=f"bronze/{KEY}")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_s3_missing_bucket_is_permanent_and_the_file_is_kept_for_the_next_attempt(s3, tmp_path):
    store = s3_store(s3, tmp_path, bucket=f"{s3.bucket}-missing")
    spool = store.spool_path(KEY)
    build(spool, b"data")
    with pytest.raises(SinkFailed, match="NoSuchBucket"):
        store.publish(spool, KEY)
    assert Path(spool).read_bytes() == b"data"
    with pytest.raises(SinkFailed, match="S3 NoSuchBucket"):
        store.check()


def test_s3_unreachable_endpoint_is_retriable_and_quick(aws_env, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store(
        "bucket",
        "bronze",
        spool_dir=str(tmp_path / "spool"),
        endpoint_url=f"http://127.0.0.1:{port}",
        max_attempts=1,
        connect_timeout_s=1.0,
    )
    spool = store.spool_path(KEY)
    build(spool, b"data")
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match="Could not connect"):
        store.publish(spool, KEY)
    assert time.monotonic() - started < 5
    store.check()  # an outage at start only warns
    assert Path(spool).read_bytes() == b"data"  # kept for the next attempt
    with pytest.raises(SinkUnavailable, match="Could not connect"):
        store.put("_bronze/commits/x.json", b"{}")


# -- small objects: the commit log's markers


@pytest.mark.parametrize("where", ["local", "s3"])
def test_small_objects_are_written_whole_listed_read_and_deleted(where, tmp_path, request):
    if where == "local":
        store = LocalStore(str(tmp_path / "bronze"))
    else:
        store = s3_store(request.getfixturevalue("s3"), tmp_path)
    assert store.list_keys("_bronze/commits") == []
    assert store.get("_bronze/commits/a.json") is None
    store.put("_bronze/commits/b.json", b'{"b": 1}')
    store.put("_bronze/commits/a.json", b'{"a": 1}')
    store.put("_bronze/commits/a.json", b'{"a": 2}')  # replaced whole
    store.put("_bronze/pending/c.json", b"{}")
    assert store.list_keys("_bronze/commits") == ["_bronze/commits/a.json", "_bronze/commits/b.json"]
    assert store.get("_bronze/commits/a.json") == b'{"a": 2}'
    store.delete("_bronze/commits/a.json")
    store.delete("_bronze/commits/a.json")  # already gone: no error
    assert store.list_keys("_bronze/commits") == ["_bronze/commits/b.json"]
    if where == "local":  # no temp file left where readers or listings could see it
        assert sorted(os.listdir(tmp_path / "bronze" / "_bronze" / "commits")) == ["b.json"]


def test_s3_spool_files_of_a_worker_that_is_gone_are_deleted_at_the_next_start(s3, tmp_path):
    # A killed worker's half-uploaded flush is redone from Kafka, never
    # uploaded from its spool: the next worker on the host deletes it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = s3_store(s3, tmp_path)
    parent = os.path.dirname(store.spool_root)
    host = os.path.basename(store.spool_root).rpartition("-")[0]
    left = os.path.join(parent, f"{host}-{int(dead.stdout)}", "orders", ".part-x.parquet.tmp")
    os.makedirs(os.path.dirname(left))
    build(left, b"half a file")
    other_host = os.path.join(parent, "another-host-1", "x.tmp")
    os.makedirs(os.path.dirname(other_host))
    build(other_host, b"not ours")
    store.check()
    assert not os.path.exists(os.path.dirname(os.path.dirname(left)))
    assert os.path.exists(other_host) and os.path.isdir(store.spool_root)
