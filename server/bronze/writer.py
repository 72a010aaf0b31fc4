"""A flush: the gathered rows as one Parquet file per (table, day), then the commit.

    flush = await writer.write(buffer)   # returns once the commit marker is durable

Steps, each durable before the next (server/bronze/commits.py says why):
  1. the pending marker: the offset ranges and the key of every file to come;
  2. the files, encoded and published by `write_threads` threads at once
     (pyarrow releases the GIL while it encodes, so a flush uses the cores);
  3. the commit marker.
A file that fails to publish is retried with backoff for as long as it takes
(an S3 outage stalls the flush, the worker stops fetching, Kafka keeps the
records); encoding happens once, before the first attempt. A permanent error
(access denied, a bucket that does not exist) ends the flush with it, and the
worker with it: what was not committed is consumed again by the next worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from keystone_ingest.server.bronze.commits import CommitLog, Flush, new_flush_id
from keystone_ingest.server.bronze.layout import SCHEMAS, parquet_options, partition_path
from keystone_ingest.server.bronze.metrics import BronzeMetrics
from keystone_ingest.server.bronze.rows import FlushBuffer
from keystone_ingest.server.errors import IngestError
from keystone_ingest.server.retry import Backoff, retry
from keystone_ingest.server.bronze.storage import ObjectStore, classify_os_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterOptions:
    compression: str = "zstd"
    compression_level: int | None = 1
    row_group_rows: int = 131_072
    threads: int = 4
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0


class FlushWriter:
    def __init__(self, store: ObjectStore, commits: CommitLog, options: WriterOptions, metrics: BronzeMetrics) -> None:
        self.store = store
        self.commits = commits
        self.options = options
        self.metrics = metrics
        self._threads = asyncio.Semaphore(options.threads)

    async def write(self, buffer: FlushBuffer) -> Flush:
        flush = Flush(new_flush_id(), dict(buffer.ranges))
        files = {(dest, day): f"{partition_path(dest, day)}/part-{flush.id}.parquet" for dest, day in buffer.parts}
        flush.files = sorted(files.values())
        await self._retry(lambda: self.commits.begin(flush), f"recording flush {flush.id}")
        await asyncio.gather(*(self._write_file(dest, files[dest, day], batches)
                               for (dest, day), batches in buffer.parts.items()))  # fmt: skip
        await self._retry(lambda: self.commits.commit(flush), f"committing flush {flush.id}")
        try:
            await asyncio.to_thread(self.commits.fold)
        except IngestError as exc:  # tidying only: the next flush tries again
            log.warning("bronze: folding commit markers failed", extra={"error": exc.message})
        self.metrics.flushes_total.inc()
        return flush

    async def _write_file(self, dest: str, key: str, batches: list[pa.RecordBatch]) -> None:
        async with self._threads:
            spool = await self._retry(lambda: self._encode(dest, key, batches), f"writing {key}")
            await self._retry(lambda: self.store.publish(spool, key), f"publishing {key}")
        rows = sum(b.num_rows for b in batches)
        self.metrics.files_total.labels(dest).inc()
        self.metrics.rows_total.labels(dest).inc(rows)

    def _encode(self, dest: str, key: str, batches: list[pa.RecordBatch]) -> str:
        schema = SCHEMAS[dest]
        spool = self.store.spool_path(key)
        o = self.options
        try:
            pq.write_table(pa.Table.from_batches(batches, schema), spool, row_group_size=o.row_group_rows,
                           **parquet_options(schema, o.compression, o.compression_level))  # fmt: skip
            self.metrics.bytes_total.labels(dest).inc(os.path.getsize(spool))
        except OSError as exc:
            raise classify_os_error(exc, f"writing {spool}") from exc
        return spool

    async def _retry(self, operation, what: str):
        def failed(exc: IngestError) -> None:
            self.metrics.publish_failures_total.inc()

        return await retry(operation, what=what, backoff=Backoff(self.options.retry_base_s, self.options.retry_max_s),
                           on_failure=failed)  # fmt: skip
