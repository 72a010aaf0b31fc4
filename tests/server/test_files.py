"""keystone_ingest.server.files: the one home of atomic writes and of the errno classification."""

import errno
import os
import subprocess
import sys

import pytest
from keystone_ingest.server.errors import SinkFailed, SinkUnavailable
from keystone_ingest.server.files import classify_os_error, pid_alive, write_atomically


@pytest.mark.parametrize("durable", [False, True])
def test_an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path, durable):
    path = tmp_path / "ready.json"
    path.write_text("old")
    write_atomically(str(path), '{"port": 1}', durable=durable)
    write_atomically(str(path), b"\x00bytes", durable=durable)
    assert path.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["ready.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "ready.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomically(str(path), 42)  # type: ignore[arg-type]
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["ready.json"]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOSPC, SinkUnavailable),
        (errno.EDQUOT, SinkUnavailable),
        (errno.EIO, SinkUnavailable),
        (errno.EMFILE, SinkUnavailable),
        (errno.EACCES, SinkFailed),
        (errno.EROFS, SinkFailed),
        (errno.ENOTDIR, SinkFailed),
    ],
)
def test_os_errors_are_retriable_only_when_waiting_can_fix_them(code, kind):
    error = classify_os_error(OSError(code, os.strerror(code), "/data/x"), "bronze: writing /data/x")
    assert type(error) is kind
    assert error.message == f"bronze: writing /data/x: [Errno {code}] {os.strerror(code)}: '/data/x'"


def test_pid_alive_tells_a_running_process_from_a_reaped_one():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert pid_alive(child.pid)
    child.communicate(b"")
    assert not pid_alive(child.pid)
