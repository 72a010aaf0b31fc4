"""The Bronze worker: consume, decode, gather, flush, commit; one loop.

    worker = BronzeWorker(BronzeWorkerConfig(kafka_bootstrap="broker:9092", bronze_uri="s3://lake/bronze"))
    await worker.start()      # joins the consumer group
    ...
    await worker.stop()       # writes and commits what it consumed, leaves the group

Each member of the consumer group (`--bronze-group`) owns some partitions of
the orders and dead-letter topics. For each it owns, it:
  1. finds where Bronze ends (commits.py: the commit markers, never a local
     file), deleting the files of a flush some earlier owner cut short;
  2. warms the partition's dedup window by reading the `dedup_records`
     offsets before that point (decisions are a function of the log, so the
     same offsets get the same decisions whoever reads them, however often);
  3. fetches record batches (fetch.py), decodes them natively into Bronze's
     tables (dropping repeated event_ids) and gathers them (rows.py);
  4. when `bronze_max_buffered_bytes` are gathered, spills the rows into the
     open Parquet files (writer.py), or flushes them (`bronze_when_full`);
  5. flushes (publishes and commits the open files) when one reaches
     `bronze_roll_bytes`, when `bronze_max_open_files` would be passed, when
     the oldest row is `roll_age_s` old, when partitions are taken away, and
     at stop. Before a flush's commit marker, its end offsets are committed
     to the group: the fence that stops a worker which lost its partitions
     (writer.py), and what lag tools read (Bronze's markers are what counts).
Fetching pauses during a spill or a flush, so memory holds one buffer's rows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import errors as kafka_errors
from aiokafka.structs import TopicPartition
from keystone_ingest.core import CorruptRecords, LogDedup, decode_order_records, decode_reject_records
from keystone_ingest.retry import Backoff, retry
from keystone_ingest.server.bronze.commits import CommitLog, Flush
from keystone_ingest.server.bronze.config import BronzeWorkerConfig
from keystone_ingest.server.bronze.fetch import Fetched, Fetcher
from keystone_ingest.server.bronze.layout import DESTINATIONS
from keystone_ingest.server.bronze.metrics import BronzeMetrics
from keystone_ingest.server.bronze.rows import RowBuffer
from keystone_ingest.server.bronze.storage import open_store
from keystone_ingest.server.bronze.writer import Fenced, FlushWriter, WriterOptions
from keystone_ingest.server.errors import IngestError
from keystone_ingest.server.files import write_atomically
from keystone_ingest.server.limits import WhenFull
from keystone_ingest.server.sinks.kafka.security import KafkaSecurity

log = logging.getLogger(__name__)

OTHER_FILES = 256
"""Descriptors a worker keeps for everything but its open Bronze files (sockets, logs, libraries)."""

MAX_RECORD_BATCH_BYTES = 64 << 20
"""Largest decompressed record batch the decoder accepts (the broker's own limit is far lower)."""


@dataclass
class _Partition:
    position: int  # the next offset to fetch
    committed: int  # where Bronze ends
    dedup: LogDedup
    high_watermark: int = 0
    committed_timestamp_ms: int | None = None  # of the last record committed to Bronze


class BronzeWorker:
    def __init__(self, config: BronzeWorkerConfig, metrics: BronzeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or BronzeMetrics()
        self.error: BaseException | None = None
        self.metrics_port: int | None = None
        self._parts: dict[TopicPartition, _Partition] = {}
        self._unready: set[TopicPartition] = set()
        self._buffer = RowBuffer(config.bronze_max_buffered_bytes)
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._joined = asyncio.Event()
        # One thread decodes: a partition's dedup window is used by one thread at a time.
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="bronze-decode")
        self._tasks: list[asyncio.Task] = []
        self.consumer: AIOKafkaConsumer | None = None
        self._generation = -1  # the group generation of the current assignment
        # While fetches fail or no leader is known (brokers down, leaders
        # moving), each round waits a little longer, up to 2 s.
        self._fetch_backoff = Backoff(0.05, 2.0)

    # -- lifecycle

    async def start(self) -> None:
        c = self.config
        if c.metrics_address:
            self.metrics_port = self.metrics.serve(*c.metrics_address)
        self._max_open_files = _allow_open_files(c.bronze_max_open_files)
        self._when_full = WhenFull(c.bronze_when_full)
        store = open_store(
            c.bronze_uri, endpoint_url=c.s3_endpoint_url, spool_dir=c.spool_dir, sse_kms_key_id=c.s3_sse_kms_key_id
        )
        await asyncio.to_thread(store.check)
        self.commits = CommitLog(store)
        self.writer = FlushWriter(
            store,
            self.commits,
            WriterOptions(compression=c.parquet_compression, row_group_rows=c.row_group_rows, threads=c.write_threads),
            self.metrics,
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=c.kafka_bootstrap,
            group_id=c.bronze_group,
            client_id=f"keystone-bronze-{os.getpid()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(c.bronze_session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(c.bronze_session_timeout_s * 1000) // 3),
            **KafkaSecurity.from_config(c).client_kwargs(),
        )
        self.consumer.subscribe([c.topic, c.dlq_topic], listener=_Rebalance(self))
        await self.consumer.start()
        self.fetcher = Fetcher(self.consumer._client)
        self._tasks = [
            asyncio.create_task(self._keep_membership(), name="bronze-membership"),
            asyncio.create_task(self._run(), name="bronze-run"),
        ]
        log.info(
            "bronze worker started",
            extra={"group": c.bronze_group, "bronze": c.bronze_uri, "topics": [c.topic, c.dlq_topic]},
        )

    @property
    def _started_consumer(self) -> AIOKafkaConsumer:
        """`consumer`, for what runs only after start() made it."""
        assert self.consumer is not None, "the worker is not started"
        return self.consumer

    async def wait_joined(self) -> None:
        """Returns once the group has given this worker its first assignment (possibly none)."""
        await self._joined.wait()

    async def stop(self, timeout_s: float | None = None) -> None:
        """Writes and commits what was consumed (within `timeout_s`; beyond it
        the next owner consumes it again), then leaves the group."""
        timeout_s = self.config.shutdown_grace_s if timeout_s is None else timeout_s
        self._stopping = True
        self._wakeup.set()
        run = self._tasks[1] if len(self._tasks) > 1 else None
        try:
            async with asyncio.timeout(timeout_s):
                if run is not None:
                    await asyncio.wait([run])
                async with self._lock:
                    if self.error is None:
                        await self._flush()
        except TimeoutError:
            log.error("bronze: stop deadline passed; what was not committed is consumed again by the next owner")
        except IngestError as exc:
            log.error("bronze: the last flush failed; its offsets are consumed again", extra={"error": exc.message})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.consumer is not None:
            self._parts.clear()  # nothing left to flush when the group revokes
            await self.consumer.stop()
        self._decoder.shutdown(wait=True)
        self.metrics.close()
        log.info("bronze worker stopped")

    async def wait_failed(self) -> BaseException:
        """Returns the error that ended the worker's loop."""
        await asyncio.wait([self._tasks[1]])
        return self.error or RuntimeError("bronze worker loop ended")

    # -- the loop

    async def _keep_membership(self) -> None:
        # aiokafka leaves the group when getmany() has not been called for
        # max_poll_interval_ms; every partition is paused, so it returns nothing.
        while True:
            await self._started_consumer.getmany(timeout_ms=1000)

    async def _run(self) -> None:
        try:
            while not self._stopping:
                await self._wakeup.wait()
                self._wakeup.clear()
                while not self._stopping:
                    async with self._lock:
                        if self._unready:
                            await self._set_up(self._unready)
                        if not self._parts:
                            break
                        await self._step()
                        self._wakeup.set()  # go on unless stopping; assignment changes set it too
        except Exception as exc:
            self.error = exc
            log.error("bronze worker failed", extra={"error": getattr(exc, "message", None) or repr(exc)})
            raise

    async def _step(self) -> None:
        """One fetch from every owned partition, decoded and gathered; a flush when due."""
        positions = {tp: p.position for tp, p in self._parts.items()}
        fetched = await self.fetcher.fetch(positions)
        if len(fetched) < len(positions) or any(f.error is not None for f in fetched.values()):
            await asyncio.sleep(self._fetch_backoff.next_delay_s())
        else:
            self._fetch_backoff.reset()
        loop = asyncio.get_running_loop()
        for tp, f in fetched.items():
            part = self._parts.get(tp)
            if part is None or part.position != positions[tp]:
                continue
            part.high_watermark = f.high_watermark
            if f.error is kafka_errors.OffsetOutOfRangeError:
                await self._out_of_range(tp, part)
                continue
            if f.error is not None or not f.records:
                continue
            try:
                decoded = await loop.run_in_executor(
                    self._decoder, functools.partial(self._decode, tp.topic, f.records, part.position, part.dedup)
                )
            except CorruptRecords as exc:
                # A broken fetch (CRC, lengths): fetch it again, after a pause.
                log.error(
                    "bronze: corrupt record batch",
                    extra={"topic": tp.topic, "partition": tp.partition, "offset": part.position, "error": str(exc)},
                )
                await asyncio.sleep(1.0)
                continue
            self._gather(tp, part, decoded)
        self._update_lag()
        c = self.config
        if self._flush_due():
            await self._flush()
        elif self._buffer.full:
            if self._when_full is WhenFull.FLUSH:
                await self._flush()
            elif self.writer.open_files + self.writer.new_files(self._buffer) > self._max_open_files:
                await self._flush()  # publish what is open before this buffer opens more
            else:
                await self._spill()
                if self.writer.largest_file_bytes() >= c.bronze_roll_bytes:
                    await self._flush()

    def _flush_due(self) -> bool:
        started = [t for t in (self.writer.started, self._buffer.started) if t is not None]
        return bool(started) and time.monotonic() - min(started) >= self.config.roll_age_s

    def _decode(self, topic: str, records: bytes, first_offset: int, dedup: LogDedup, end_offset: int | None = None):
        decode = decode_reject_records if topic == self.config.dlq_topic else decode_order_records
        return decode(
            records,
            first_offset=first_offset,
            end_offset=end_offset,
            dedup=dedup,
            max_batch_bytes=MAX_RECORD_BATCH_BYTES,
        )

    def _gather(self, tp: TopicPartition, part: _Partition, decoded) -> None:
        if decoded.next_offset <= part.position:
            return
        tables = {name: pa.record_batch(t) for name, t in decoded.tables.items() if name in DESTINATIONS}
        counts = pa.record_batch(decoded.child_counts) if decoded.child_counts is not None else None
        self._buffer.add(
            (tp.topic, tp.partition), part.position, decoded.next_offset, tables, counts, decoded.max_timestamp_ms
        )
        part.position = decoded.next_offset
        m = self.metrics
        m.records_total.labels(tp.topic).inc(decoded.records)
        m.duplicates_total.labels(tp.topic).inc(decoded.duplicates)
        if tp.topic == self.config.topic:
            m.quarantined_total.inc(decoded.quarantined)
        m.buffered_bytes.set(self._buffer.nbytes)

    async def _spill(self) -> None:
        buffer, self._buffer = self._buffer, RowBuffer(self.config.bronze_max_buffered_bytes)
        self.metrics.buffered_bytes.set(0)
        try:
            await self.writer.append(buffer)
        except Exception:
            await asyncio.to_thread(self.writer.discard)
            raise

    async def _flush(self) -> None:
        """Spills what is gathered, then publishes and commits the open files."""
        if self._buffer:
            await self._spill()
        if not self.writer:
            return
        max_timestamp_ms = dict(self.writer.max_timestamp_ms)
        try:
            flush = await self.writer.flush(self._fence)
        except Fenced as exc:
            # Another worker owns these partitions now and consumes them from
            # Bronze's end; ours were deleted. Whatever this worker still owns
            # is set up again from Bronze (its dedup windows have moved on).
            log.warning(
                "bronze: flush abandoned, the partitions belong to another worker now", extra={"error": str(exc)}
            )
            self.metrics.fenced_flushes_total.inc()
            self._unready |= self._parts.keys()
            self._parts.clear()
            return
        except Exception:
            await asyncio.to_thread(self.writer.discard)
            raise
        for (topic, partition), (_, end) in flush.ranges.items():
            part = self._parts.get(TopicPartition(topic, partition))
            if part is not None:
                part.committed = end
                part.committed_timestamp_ms = max_timestamp_ms.get((topic, partition), part.committed_timestamp_ms)
        log.info("bronze flush committed", extra={"flush": flush.id, "files": len(flush.files)})
        self._update_lag()

    async def _fence(self, flush: Flush) -> None:
        """Commits the flush's end offsets to the group, before its commit
        marker. The coordinator takes a commit only from a member of the
        current generation, so success proves the partitions are still ours;
        lag tools read these offsets too (Bronze's markers are what counts)."""
        offsets = {TopicPartition(topic, partition): end for (topic, partition), (_, end) in flush.ranges.items()}
        # aiokafka 0.14 internal: the generation this member is in. A member
        # the coordinator dropped resets it, and a commit it sent then would
        # be taken as a plain commit (generation -1) by a group left empty.
        consumer = self._started_consumer
        generation = consumer._coordinator.generation
        if generation != self._generation:
            raise Fenced(f"flush {flush.id}: the group moved from generation {self._generation} to {generation}")
        try:
            await consumer.commit(offsets)
        except (kafka_errors.CommitFailedError, kafka_errors.IllegalStateError) as exc:
            raise Fenced(f"flush {flush.id}: {exc}") from exc

    async def _out_of_range(self, tp: TopicPartition, part: _Partition) -> None:
        # The log no longer holds the position: retention deleted records
        # Bronze had not written (retention shorter than the worst lag), or
        # the log was truncated. Nothing can bring them back; say so loudly.
        await self._flush()
        consumer = self._started_consumer
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        target = begin if part.position < begin else end
        log.error(
            "bronze: offset out of range; records lost to retention or truncation",
            extra={"topic": tp.topic, "partition": tp.partition, "position": part.position, "resumes_at": target},
        )
        part.position = part.committed = target
        part.dedup.reset()

    # -- partitions coming and going

    async def _set_up(self, tps: set[TopicPartition]) -> None:
        """Where Bronze ends for each partition, the recovery of flushes cut
        short, and the dedup window warmed up to that point."""
        c = self.config
        pending = sorted(tps)
        backoff = Backoff(0.2, 10.0)
        progress = await retry(
            lambda: asyncio.to_thread(self.commits.progress), what="reading Bronze's commit markers", backoff=backoff
        )
        deleted = await retry(
            lambda: asyncio.to_thread(self.commits.recover, [(tp.topic, tp.partition) for tp in pending]),
            what="recovering flushes cut short",
            backoff=backoff,
        )
        if deleted:
            self.metrics.deleted_files_total.inc(len(deleted))
            log.warning("bronze: deleted the files of a flush cut short", extra={"files": deleted})
        begins = await self._started_consumer.beginning_offsets(pending)
        for tp in pending:
            position = max(progress.get((tp.topic, tp.partition), 0), begins[tp])
            dedup = LogDedup(c.dedup_records, int(c.dedup_window_s * 1000))
            await self._warm_up(tp, dedup, max(begins[tp], position - c.dedup_records), position)
            self._parts[tp] = _Partition(position, position, dedup)
            self._unready.discard(tp)
            log.info(
                "bronze partition assigned", extra={"topic": tp.topic, "partition": tp.partition, "offset": position}
            )
        self.metrics.assigned_partitions.set(len(self._parts))

    async def _warm_up(self, tp: TopicPartition, dedup: LogDedup, start: int, end: int) -> None:
        loop = asyncio.get_running_loop()
        position = start
        while position < end:
            fetched: Fetched | None = (await self.fetcher.fetch({tp: position})).get(tp)
            if fetched is None or fetched.error is not None or not fetched.records:
                if fetched is not None and fetched.error is kafka_errors.OffsetOutOfRangeError:
                    return  # the window's start was deleted meanwhile: nothing older can repeat
                await asyncio.sleep(0.2)
                continue
            decoded = await loop.run_in_executor(
                self._decoder, functools.partial(self._decode, tp.topic, fetched.records, position, dedup, end)
            )
            if decoded.next_offset <= position:  # a batch cut short only: fetch again
                await asyncio.sleep(0.2)
                continue
            position = decoded.next_offset

    async def revoked(self, tps: set[TopicPartition]) -> None:
        async with self._lock:
            ours = {(tp.topic, tp.partition) for tp in tps}
            if ours & (self._buffer.ranges.keys() | self.writer.ranges.keys()) and self.error is None:
                await self._flush()
            for tp in tps:
                self._parts.pop(tp, None)
                self._unready.discard(tp)
                self.metrics.forget_partition(tp.topic, tp.partition)  # its lag is the next owner's to report
            self.metrics.assigned_partitions.set(len(self._parts))

    def assigned(self, tps: set[TopicPartition]) -> None:
        consumer = self._started_consumer
        self._generation = consumer._coordinator.generation
        consumer.pause(*tps)
        self._unready |= set(tps) - self._parts.keys()
        self._joined.set()
        self._wakeup.set()

    def _update_lag(self) -> None:
        now_ms = time.time() * 1000
        for tp, part in self._parts.items():
            lag = max(0, part.high_watermark - part.committed)
            labels = (tp.topic, str(tp.partition))
            self.metrics.lag_records.labels(*labels).set(lag)
            ts = part.committed_timestamp_ms
            self.metrics.lag_seconds.labels(*labels).set(max(0.0, (now_ms - ts) / 1000) if lag and ts else 0.0)

    def status(self) -> dict:
        """Per partition: position, where Bronze ends, high watermark (for tests and the ready file)."""
        return {
            f"{tp.topic}/{tp.partition}": {
                "position": p.position,
                "committed": p.committed,
                "high_watermark": p.high_watermark,
            }
            for tp, p in sorted(self._parts.items())
        }


def _allow_open_files(wanted: int) -> int:
    """Raises the soft open-file limit so `wanted` Bronze files fit beside the
    sockets (many systems start at 1,024); returns how many fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + OTHER_FILES
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning(
            "bronze: the open-file limit allows fewer files at once than --bronze-max-open-files",
            extra={"hard_limit": hard, "files": target - OTHER_FILES},
        )
    return max(1, target - OTHER_FILES)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: BronzeWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked) -> None:
        await self.worker.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        self.worker.assigned(set(assigned))


async def run_worker(config: BronzeWorkerConfig) -> int:
    """`keystone-ingest bronze`: run until SIGTERM/SIGINT; 1 when the worker fails."""
    import signal

    worker = BronzeWorker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.start()
    except BaseException:
        await worker.stop(1.0)
        raise
    await worker.wait_joined()
    if config.ready_file:
        write_atomically(config.ready_file, json.dumps({"pid": os.getpid(), "metrics_port": worker.metrics_port}))
    failed = asyncio.create_task(worker.wait_failed())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([failed, stopped], return_when=asyncio.FIRST_COMPLETED)
    await worker.stop()
    failed.cancel()
    stopped.cancel()
    # The loop also ends when the worker stops; only an error makes it a failure.
    return 1 if worker.error is not None else 0
