"""The pure-Python reference server: the same contract as `keystone-ingest serve`,
written the way a competent Python engineer would without a native core.

    python -m benchmarks.reference.server --listen 127.0.0.1:0 --kafka-bootstrap HOST:PORT \\
        --topic orders --dlq-topic orders.dlq --bronze-dir data/ref-bronze --ready-file ready.json

What it does per batch, on one asyncio event loop:
  - `grpc.aio` server, `keystone.ingest.v1.OrderIngest` (StreamOrders with up to
    `--max-in-flight-per-stream` batches in the pipeline per stream and acks in
    arrival order, and IngestOrders);
  - the batch_id window in an ordered dict (a second copy in flight waits for the first);
  - decode, validate, dedup and Arrow through `ReferenceCore` (benchmarks/reference/core.py:
    the official protobuf classes, a Python loop over the orders, the dedup window in an
    ordered dict, `pyarrow.Table.from_pylist`);
  - one Kafka record per accepted order through aiokafka's batch API (`create_batch`,
    `send_batch`), acks=all, idempotent, zstd, the Java partitioner's `murmur2(order_id)`;
    rejected orders to the dead-letter topic, all of a batch on `murmur2(batch_id)`;
    the same keys, values, headers and timestamps as the real server. A value is the
    `Order` re-serialised (`SerializeToString()`): the official classes do not keep the
    bytes as sent, and re-serialising gives them back for canonically encoded input,
    which is what protobuf libraries send;
  - Bronze: the rows are buffered in Arrow in the server after Kafka acked the batch (the
    ack follows that hand-off; the real server writes Bronze from Kafka instead), and every
    `--roll-age-s`, when `--bronze-max-buffered-bytes` is reached, and at shutdown they
    are sorted by partition day and written as zstd (level 3) Parquet with row groups of
    131,072 rows, the real writer's settings, to a hidden name, fsynced and renamed.

Not here, on purpose, because they are not on the measured path: health, reflection,
metrics, TLS and authentication (so the Bronze `producer` column is always null and
records carry no `producer` header, as on the real server without authentication), S3,
reconnection logic beyond aiokafka's own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from keystone_ingest.core import InvalidBatch
from keystone_ingest.proto.v1 import ingest_pb2

# The Bronze layout is the contract both servers fulfil: the real sink's quarantine and Parquet settings.
from keystone_ingest.server.bronze.layout import QUARANTINE, QUARANTINE_SCHEMA, parquet_options

from benchmarks.reference.core import ReferenceCore, ReferenceResult

log = logging.getLogger("reference-server")

SERVICE_NAME = "keystone.ingest.v1.OrderIngest"
CONTENT_TYPE = b"application/x-protobuf; messageType=keystone.ingest.v1.Order"
MAX_ERRORS_PER_ACK = 100
US_PER_DAY = 86_400_000_000


class RetryLater(Exception):
    """Kafka did not take the batch; the client should resend it (UNAVAILABLE)."""


# -- Bronze ------------------------------------------------------------------------------


class BronzeBuffer:
    """Rows waiting for the next roll, per table, with each row's partition day."""

    def __init__(self, root: Path, max_buffered_bytes: int) -> None:
        self.root = root
        self.max_buffered_bytes = max_buffered_bytes
        self._tables: dict[str, list[tuple[pa.Table, np.ndarray]]] = collections.defaultdict(list)
        self._bytes = 0
        self._seq = 0
        self._prefix = f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._rolling: asyncio.Task | None = None

    def add(self, table: str, rows: pa.Table, days: np.ndarray) -> None:
        if rows.num_rows:
            if "producer" not in rows.schema.names:
                # Lineage: the authenticated caller; the reference has no authentication.
                rows = rows.append_column(pa.field("producer", pa.string()), pa.nulls(rows.num_rows, pa.string()))
            self._tables[table].append((rows, days))
            self._bytes += rows.nbytes

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_buffered_bytes

    async def roll(self) -> None:
        """Write everything buffered so far (in a thread: Parquet encoding is slow)."""
        while self._rolling is not None:  # one roll at a time; files of a partition stay in order
            await asyncio.shield(self._rolling)
        taken, self._tables, self._bytes = self._tables, collections.defaultdict(list), 0
        if taken:
            self._rolling = asyncio.ensure_future(asyncio.to_thread(self._write, taken))
            try:
                await asyncio.shield(self._rolling)
            finally:
                self._rolling = None

    def _write(self, taken: dict[str, list[tuple[pa.Table, np.ndarray]]]) -> None:
        utc = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for table, parts in taken.items():
            rows = pa.concat_tables([p for p, _ in parts])
            days = np.concatenate([d for _, d in parts])
            order = np.argsort(days, kind="stable")
            rows, days = rows.take(order), days[order]
            bounds = np.flatnonzero(np.diff(days)) + 1
            starts = [0, *bounds.tolist()]
            ends = [*bounds.tolist(), len(days)]
            for start, end in zip(starts, ends, strict=True):
                self._seq += 1
                day = np.datetime64(int(days[start]), "D").astype(object)
                folder = self.root / table / f"year={day.year:04d}" / f"month={day.month:02d}" / f"day={day.day:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{utc}-{self._prefix}-{self._seq:06d}.parquet"
                hidden = folder / f".{name}.tmp"
                with open(hidden, "wb") as f:
                    pq.write_table(
                        rows.slice(start, end - start), f, row_group_size=131_072, **parquet_options(rows.schema)
                    )  # the real server's settings
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(hidden, folder / name)
                dir_fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)


def _days(micros: pa.ChunkedArray | pa.Array, fallback_day: int) -> np.ndarray:
    values = pc.cast(micros, pa.int64()).fill_null(fallback_day * US_PER_DAY).to_numpy()
    return np.floor_divide(values, US_PER_DAY).astype(np.int32)


# -- the server --------------------------------------------------------------------------


class ReferenceServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.core = ReferenceCore(dedup_max_keys=args.dedup_window, dedup_max_age_s=args.dedup_max_age_s)
        self.bronze = BronzeBuffer(Path(args.bronze_dir), args.bronze_max_buffered_bytes)
        self.producer: AIOKafkaProducer | None = None
        self.partitions: dict[str, int] = {}
        self._partition_locks: dict[tuple[str, int], asyncio.Lock] = {}
        # batch_id -> counts of its first ack, or a future while it is in flight
        self.batch_ids: collections.OrderedDict[str, tuple[int, int, int] | asyncio.Future] = collections.OrderedDict()

    async def start(self) -> None:
        a = self.args
        self.producer = AIOKafkaProducer(
            bootstrap_servers=a.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            compression_type=None if a.compression == "none" else a.compression,
            max_batch_size=a.max_batch_bytes,
            linger_ms=0,
        )
        await self.producer.start()
        for topic in (a.topic, a.dlq_topic):
            self.partitions[topic] = len(await self.producer.partitions_for(topic))

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.bronze.roll()

    async def roll_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.args.roll_age_s)
            await self.bronze.roll()

    # -- one batch -----------------------------------------------------------------------

    async def ingest(self, raw: bytes) -> ingest_pb2.BatchAck:
        received_ns = time.time_ns()
        try:
            message = ingest_pb2.OrderBatch.FromString(raw)
        except Exception as exc:
            return _rejected(InvalidBatch("undecodable", None, str(exc)), "")
        batch_id = message.batch_id
        while isinstance(first := self.batch_ids.get(batch_id), asyncio.Future):
            await asyncio.shield(first)  # the first copy is in flight: wait for its outcome
        if first is not None:
            accepted, duplicates, rejected = first
            return ingest_pb2.BatchAck(
                batch_id=batch_id,
                status=ingest_pb2.ACK_STATUS_DUPLICATE_BATCH,
                accepted=accepted,
                duplicates=duplicates,
                rejected=rejected,
            )
        claim = asyncio.get_running_loop().create_future()
        if batch_id:
            self.batch_ids[batch_id] = claim
        try:
            try:
                result = self.core.process_message(message, now_ms=received_ns // 1_000_000)
            except InvalidBatch as exc:
                self.batch_ids.pop(batch_id, None)
                return _rejected(exc, batch_id)
            try:
                await self._publish(result, received_ns)
            except BaseException:
                self.core.forget(result)
                self.batch_ids.pop(batch_id, None)
                raise
            self._to_bronze(result, raw, received_ns)
            if self.bronze.full:
                await self.bronze.roll()
            counts = (result.accepted, result.duplicates, result.rejected)
            self.batch_ids[batch_id] = counts
            while len(self.batch_ids) > self.args.batch_id_window:
                self.batch_ids.popitem(last=False)
        finally:
            claim.set_result(None)
        return ingest_pb2.BatchAck(
            batch_id=batch_id,
            status=ingest_pb2.ACK_STATUS_ACCEPTED,
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=result.rejected,
            errors=[
                ingest_pb2.RecordError(index=e.index, event_id=e.event_id, reason=e.reason)
                for e in result.errors[:MAX_ERRORS_PER_ACK]
            ],
        )

    async def _publish(self, result: ReferenceResult, received_ns: int) -> None:
        a = self.args
        timestamp_ms = received_ns // 1_000_000
        common = [
            ("batch_id", result.batch_id.encode()),
            ("source", result.source.encode()),
            ("content-type", CONTENT_TYPE),
        ]
        orders = result.message.orders
        by_partition: dict[int, list[tuple[bytes, bytes, list]]] = collections.defaultdict(list)
        n = self.partitions[a.topic]
        for index in result.accepted_indices:
            order = orders[index]
            key = order.order_id.encode()
            headers = [("event_id", order.event_id.encode()), *common]
            by_partition[(murmur2(key) & 0x7FFFFFFF) % n].append((key, order.SerializeToString(), headers))
        sends = []
        for partition, records in by_partition.items():
            sends += await self._send(a.topic, partition, records, timestamp_ms)
        if result.errors:
            partition = (murmur2(result.batch_id.encode()) & 0x7FFFFFFF) % self.partitions[a.dlq_topic]
            rejects = [
                (
                    None,
                    orders[e.index].SerializeToString(),
                    [
                        ("event_id", e.event_id.encode()),
                        *common,
                        ("error.reason", e.reason.encode()),
                        ("error.index", str(e.index).encode()),
                        ("error.message", e.message.encode()),
                    ],
                )
                for e in result.errors
            ]
            sends += await self._send(a.dlq_topic, partition, rejects, timestamp_ms)
        try:
            async with asyncio.timeout(a.send_timeout_s):
                await asyncio.gather(*sends)
        except Exception as exc:
            raise RetryLater(f"Kafka did not take batch {result.batch_id!r}: {exc!r}") from exc

    async def _send(self, topic: str, partition: int, records: list, timestamp_ms: int) -> list[asyncio.Future]:
        producer = self.producer
        assert producer is not None  # start() made it before serving
        builders = [producer.create_batch()]
        for key, value, headers in records:
            if builders[-1].append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                builders.append(producer.create_batch())
                builders[-1].append(key=key, value=value, timestamp=timestamp_ms, headers=headers)
        # aiokafka holds one record batch per partition and makes the others wait
        # for it to drain; with many waiters its timeout bookkeeping (it subtracts
        # the total time waited on every wake-up) fails them early with
        # KafkaTimeoutError. One hand-off per partition at a time, in arrival order.
        lock = self._partition_locks.setdefault((topic, partition), asyncio.Lock())
        async with lock:
            return [await producer.send_batch(b, topic, partition=partition) for b in builders]

    def _to_bronze(self, result: ReferenceResult, raw: bytes, received_ns: int) -> None:
        received_day = received_ns // (US_PER_DAY * 1000)
        tables = result.tables
        if result.accepted:
            order_days = _days(tables["orders"].column("order_purchase_timestamp"), received_day)
            self.bronze.add("orders", tables["orders"], order_days)
            orders = result.message.orders
            accepted = [orders[i] for i in result.accepted_indices]
            counts = {
                "order_items": [len(o.items) for o in accepted],
                "order_payments": [len(o.payments) for o in accepted],
                "customers": [int(o.HasField("customer")) for o in accepted],
            }
            for table, per_order in counts.items():
                self.bronze.add(table, tables[table], np.repeat(order_days, per_order))
        if result.errors:
            orders = result.message.orders
            n = len(result.errors)
            quarantine = pa.table(
                [
                    pa.array([result.batch_id] * n, pa.string()),
                    pa.array([result.source] * n, pa.string()),
                    pa.nulls(n, pa.string()),
                    pa.array([e.index for e in result.errors], pa.int32()),
                    pa.array([e.event_id for e in result.errors], pa.string()),
                    pa.array([e.reason for e in result.errors], pa.string()),
                    pa.array([e.message for e in result.errors], pa.string()),
                    pa.array([orders[e.index].SerializeToString() for e in result.errors], pa.binary()),
                    pa.array([received_ns // 1000] * n, pa.timestamp("us", tz="UTC")),
                ],
                schema=QUARANTINE_SCHEMA,
            )
            self.bronze.add(QUARANTINE, quarantine, np.full(n, received_day, dtype=np.int32))

    # -- gRPC ----------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        serialize = ingest_pb2.BatchAck.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "StreamOrders": grpc.stream_stream_rpc_method_handler(
                    self.stream_orders, response_serializer=serialize
                ),
                "IngestOrders": grpc.unary_unary_rpc_method_handler(self.ingest_orders, response_serializer=serialize),
            },
        )

    async def ingest_orders(self, raw: bytes, context: grpc.aio.ServicerContext) -> ingest_pb2.BatchAck:
        try:
            return await self.ingest(raw)
        except RetryLater as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # not reached: context.abort() raises (grpc ships no types that would tell mypy so)

    async def stream_orders(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.BatchAck]:
        slots = asyncio.Semaphore(self.args.max_in_flight_per_stream)
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for raw in requests:
                    await slots.acquire()
                    answers.put_nowait(asyncio.ensure_future(self.ingest(raw)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                try:
                    ack = await answer
                except RetryLater as exc:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                slots.release()
                yield ack
        finally:
            reader.cancel()


def _rejected(exc: InvalidBatch, batch_id: str) -> ingest_pb2.BatchAck:
    return ingest_pb2.BatchAck(
        batch_id=batch_id,
        status=ingest_pb2.ACK_STATUS_REJECTED,
        errors=[ingest_pb2.RecordError(index=0, reason=f"{exc.code}: {exc.message}")],
    )


async def serve(args: argparse.Namespace) -> None:
    app = ReferenceServer(args)
    await app.start()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", args.max_message_bytes)])
    server.add_generic_rpc_handlers([app.handler()])
    port = server.add_insecure_port(args.listen)
    await server.start()
    roller = asyncio.create_task(app.roll_periodically())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready_file:
        host = args.listen.rsplit(":", 1)[0]
        Path(args.ready_file).write_text(
            json.dumps({"port": port, "host": host, "pid": os.getpid(), "kafka_bootstrap": args.kafka_bootstrap})
        )
    log.info("reference server listening on %s:%d", args.listen.rsplit(":", 1)[0], port)
    await stop.wait()
    # Shutdown: stop taking batches and finish those received, then flush Kafka, then write Bronze.
    await server.stop(args.shutdown_grace_s)
    roller.cancel()
    await app.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.reference.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default="127.0.0.1:50061")
    p.add_argument("--kafka-bootstrap", required=True)
    p.add_argument("--topic", default="orders")
    p.add_argument("--dlq-topic", default="orders.dlq")
    p.add_argument("--bronze-dir", default="data/reference-bronze")
    p.add_argument("--ready-file")
    p.add_argument("--compression", default="zstd", choices=("zstd", "lz4", "snappy", "gzip", "none"))
    p.add_argument("--max-batch-bytes", type=int, default=512 * 1024)
    p.add_argument("--send-timeout-s", type=float, default=30.0)
    p.add_argument("--max-in-flight-per-stream", type=int, default=8)
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--dedup-window", type=int, default=1_000_000)
    p.add_argument("--dedup-max-age-s", type=float, default=3600.0)
    p.add_argument("--batch-id-window", type=int, default=200_000)
    p.add_argument("--roll-age-s", type=float, default=60.0)
    p.add_argument("--bronze-max-buffered-bytes", type=int, default=256 * 1024 * 1024)
    p.add_argument("--shutdown-grace-s", type=float, default=30.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
