"""Files and processes on this machine, in one place: atomic writes, fsync,
the classification of an OSError, and whether a pid is alive.

A write that must never be seen half done goes to a temporary name in the
same directory and is renamed over the final one (`os.replace` is atomic
within a file system); `durable=True` also fsyncs the file before the rename
and the directory after it, so the new name survives a power cut.
"""

from __future__ import annotations

import errno
import os

from keystone_ingest.server.errors import IngestError, SinkFailed, SinkUnavailable

# errno values a retry (here, later, or on another replica) can get past: space
# or quota may be freed, an I/O hiccup may clear. Everything else (permission,
# read-only file system, a file where a directory should be) needs an operator.
TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.EMFILE, errno.ENFILE}
)


def classify_os_error(exc: OSError, what: str) -> IngestError:
    """A local I/O failure as a sink reports it: disk full is retriable, a
    permission or layout problem is not."""
    cls = SinkUnavailable if exc.errno in TRANSIENT_ERRNOS else SinkFailed
    return cls(f"{what}: {exc}")


def fsync_path(path: str, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomically(path: str, data: bytes | str, *, durable: bool = False) -> None:
    """`path` holds `data` whole, or what it held before; never a part."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_if_present(tmp)
        raise
    if durable:
        fsync_path(directory, directory=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
