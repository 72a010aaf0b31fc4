"""Bronze files: open Parquet files that grow spill by spill, then a flush that publishes and commits them.

    await writer.append(buffer)   # the buffer's rows as row groups of the open files
    ...
    flush = await writer.flush()  # returns once the commit marker is durable

Memory holds one buffer of decoded rows (`bronze_max_buffered_bytes`); files
are as large as the roll rules let them grow (`bronze_roll_bytes`,
`roll_age_s`), so a small memory budget does not mean small files. Each
append writes the buffer's rows of each (table, day) as row groups of that
day's open file, at a local spool path no reader looks at, `write_threads`
files at a time (pyarrow releases the GIL while it encodes, so this uses the
cores).

A flush, each step durable before the next (server/bronze/commits.py says why):
  1. the open files are closed (their footers written);
  2. the pending marker: the offset ranges and the key of every file;
  3. the files are published, `write_threads` at a time;
  4. the fence: the worker proves it still owns the partitions (worker.py);
     a worker that lost them (a pause longer than the session timeout: its
     partitions went to another worker, which consumes the same offsets)
     deletes the files instead, so they never reach Bronze twice;
  5. the commit marker.
Publishing and committing are retried with backoff for as long as it takes
(an S3 outage stalls the flush, the worker stops fetching, Kafka keeps the
records). A permanent error (access denied, a bucket that does not exist)
ends the flush with it, and so does any failure to write the local spool
(the rows of the open files are then nowhere but in Kafka): the worker ends,
and whoever runs it next consumes the uncommitted offsets again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from keystone_ingest.retry import Backoff, retry
from keystone_ingest.server.bronze.commits import CommitLog, Flush, new_flush_id
from keystone_ingest.server.bronze.layout import SCHEMAS, parquet_options, partition_path
from keystone_ingest.server.bronze.metrics import BronzeMetrics
from keystone_ingest.server.bronze.rows import RowBuffer, TopicPartition
from keystone_ingest.server.bronze.storage import ObjectStore
from keystone_ingest.server.errors import IngestError
from keystone_ingest.server.files import classify_os_error, unlink_if_present

T = TypeVar("T")

log = logging.getLogger(__name__)


class Fenced(Exception):
    """The partitions of a flush belong to another worker now."""


@dataclass(frozen=True)
class WriterOptions:
    compression: str = "zstd"
    compression_level: int | None = 1
    row_group_rows: int = 131_072
    threads: int = 4
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0


class _OpenFile:
    """One (table, day)'s file of the coming flush, open at its spool path."""

    def __init__(self, store: ObjectStore, dest: str, key: str, options: WriterOptions) -> None:
        self.dest = dest
        self.key = key
        self.spool = store.spool_path(key)
        self.rows = 0
        self._closed_bytes: int | None = None
        self._sink = pa.OSFile(self.spool, "wb")
        schema = SCHEMAS[dest]
        self._writer = pq.ParquetWriter(
            self._sink, schema, **parquet_options(schema, options.compression, options.compression_level)
        )

    @property
    def nbytes(self) -> int:
        return self._sink.tell() if self._closed_bytes is None else self._closed_bytes

    def append(self, batches: list[pa.RecordBatch], row_group_rows: int) -> None:
        self._writer.write_table(pa.Table.from_batches(batches, SCHEMAS[self.dest]), row_group_size=row_group_rows)
        self.rows += sum(b.num_rows for b in batches)

    def close(self) -> None:
        self._writer.close()
        self._closed_bytes = self._sink.tell()
        self._sink.close()

    def discard(self) -> None:
        try:
            self.close()
        except (OSError, pa.ArrowException):
            pass  # a file that failed to write; it is deleted either way
        unlink_if_present(self.spool)


class FlushWriter:
    def __init__(self, store: ObjectStore, commits: CommitLog, options: WriterOptions, metrics: BronzeMetrics) -> None:
        self.store = store
        self.commits = commits
        self.options = options
        self.metrics = metrics
        self._threads = asyncio.Semaphore(options.threads)
        self._reset()

    def _reset(self) -> None:
        self._id = new_flush_id()
        self._files: dict[tuple[str, int], _OpenFile] = {}
        self.ranges: dict[TopicPartition, tuple[int, int]] = {}
        """[first, end) offsets per topic-partition whose rows the open files hold."""
        self.max_timestamp_ms: dict[TopicPartition, int] = {}
        self.started: float | None = None  # monotonic time of the first offsets appended

    def __bool__(self) -> bool:
        return bool(self.ranges)

    @property
    def open_files(self) -> int:
        return len(self._files)

    def new_files(self, buffer: RowBuffer) -> int:
        """How many files appending `buffer` would open."""
        return sum(1 for part in buffer.parts if part not in self._files)

    def largest_file_bytes(self) -> int:
        return max((f.nbytes for f in self._files.values()), default=0)

    async def append(self, buffer: RowBuffer) -> None:
        """Writes the buffer's rows to the open files. A failure raises a
        classified IngestError and leaves the open files unusable: `discard()`."""
        for tp, (first, end) in buffer.ranges.items():
            held = self.ranges.get(tp)
            if held is not None and held[1] != first:
                raise ValueError(f"bronze: {tp} offsets {first}..{end} do not follow {held[0]}..{held[1]}")
            self.ranges[tp] = (held[0] if held else first, end)
        self.max_timestamp_ms.update(buffer.max_timestamp_ms)
        if self.started is None:
            self.started = buffer.started or time.monotonic()
        await asyncio.gather(*(self._append(dest, day, batches) for (dest, day), batches in buffer.parts.items()))

    async def _append(self, dest: str, day: int, batches: list[pa.RecordBatch]) -> None:
        async with self._threads:
            await asyncio.to_thread(self._append_blocking, dest, day, batches)

    def _append_blocking(self, dest: str, day: int, batches: list[pa.RecordBatch]) -> None:
        f = self._files.get((dest, day))
        try:
            if f is None:
                key = f"{partition_path(dest, day)}/part-{self._id}.parquet"
                f = self._files[dest, day] = _OpenFile(self.store, dest, key, self.options)
            f.append(batches, self.options.row_group_rows)
        except OSError as exc:
            raise classify_os_error(exc, f"bronze: writing {f.spool if f else dest}") from exc

    async def flush(self, fence: Callable[[Flush], Awaitable[None]]) -> Flush:
        """Closes, publishes and commits the open files. `fence(flush)` runs
        between the files and the commit marker and raises Fenced when the
        offsets are no longer this worker's: the files are then deleted and
        Fenced raised. Raises on a permanent error or a failure to close a
        spool file too (then `discard()`)."""
        files = sorted(self._files.values(), key=lambda f: f.key)
        flush = Flush(self._id, dict(self.ranges), [f.key for f in files])
        await asyncio.gather(*(self._close(f) for f in files))
        await self._retry(lambda: self.commits.begin(flush), f"recording flush {flush.id}")
        await asyncio.gather(*(self._publish(f) for f in files))
        try:
            await fence(flush)
        except Fenced:
            await self._retry(lambda: self.commits.abandon(flush), f"deleting the files of flush {flush.id}")
            self._reset()
            raise
        await self._retry(lambda: self.commits.commit(flush), f"committing flush {flush.id}")
        self._reset()
        try:
            await asyncio.to_thread(self.commits.fold)
        except IngestError as exc:  # tidying only: the next flush tries again
            log.warning("bronze: folding commit markers failed", extra={"error": exc.message})
        self.metrics.flushes_total.inc()
        return flush

    async def _close(self, f: _OpenFile) -> None:
        async with self._threads:
            try:
                await asyncio.to_thread(f.close)
            except OSError as exc:
                raise classify_os_error(exc, f"bronze: writing {f.spool}") from exc
        self.metrics.bytes_total.labels(f.dest).inc(f.nbytes)

    async def _publish(self, f: _OpenFile) -> None:
        async with self._threads:
            await self._retry(lambda: self.store.publish(f.spool, f.key), f"publishing {f.key}")
        self.metrics.files_total.labels(f.dest).inc()
        self.metrics.rows_total.labels(f.dest).inc(f.rows)

    def discard(self) -> None:
        """Deletes the open files (blocking): their offsets are consumed again."""
        for f in self._files.values():
            f.discard()
        self._reset()

    async def _retry(self, operation: Callable[[], T], what: str) -> T:
        """Runs the blocking `operation` in a thread, retried while it fails retriably."""

        def failed(exc: Exception) -> None:
            self.metrics.publish_failures_total.inc()

        return await retry(
            lambda: asyncio.to_thread(operation),
            what=what,
            backoff=Backoff(self.options.retry_base_s, self.options.retry_max_s),
            on_failure=failed,
        )
