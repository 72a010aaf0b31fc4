"""Micro-benchmarks of the server's stages after the native core, one batch of
1,000 generated orders each, so a regression shows where it is.

The native stages (decode, validate, dedup, Arrow encode) are timed one by one
in C++ by benchmarks/native/stage_bench.cc (test_native_stages below builds and
runs it); their sum is `Core.process`, timed in test_core_throughput.py. Here:

  arrow import      the core's result as pyarrow record batches (`Batch.tables`, spans, rejects)
  kafka batching    the Kafka sink's records for the batch: per-partition record
                    batches encoded by the native core from the request (keys,
                    values, headers), compressed (zstd level 1) and stamped as
                    they are before a Produce request
  bronze rows       `BronzeRows.from_batch`: partition days, the producer column
  parquet encoding  the Bronze writer's Parquet settings (bronze.parquet_options) on 20 batches' orders
                    and child rows; per order
  wal encode        the write-ahead log record (Arrow IPC of the Bronze rows, metadata, crc)
  wal append        encode, write and fsync one record (one batch per fsync: the
                    worst case; under load group commit shares an fsync)
  ack               the BatchAck message the pipeline answers with, serialised
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.corpus import BatchMaker, load_pool
from keystone_ingest.core import Core
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.sinks.bronze import BronzeRows, parquet_options
from keystone_ingest.server.sinks.kafka import CONTENT_TYPE, KafkaConfig, KafkaSink, _Lane
from keystone_ingest.server.wal import WalRecord, encode_record

ORDERS = 1000
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    maker = BatchMaker(load_pool(20_000), ORDERS)
    batches = maker.batches(namespace=4000)
    return [next(batches)[1] for _ in range(20)]


@pytest.fixture(scope="module")
def batches(payloads) -> list[Batch]:
    core = Core()
    return [Batch(p, core.process(p)) for p in payloads]


def _record(record, benchmark, group: str, orders: int, input_bytes: int = 0) -> None:
    record(benchmark, group=group, role="stage", orders=orders, input_bytes=input_bytes)


def test_stage_arrow_import(benchmark, payloads, record):
    core = Core()
    results = [core.process(p) for p in payloads]
    it = iter(range(10**9))

    def run():
        b = Batch(payloads[0], results[next(it) % len(results)])
        return b.tables, b.spans, b.rejects

    benchmark.pedantic(run, rounds=300, warmup_rounds=10)
    _record(record, benchmark, "stage", ORDERS)


def test_stage_kafka_record_batching(benchmark, batches, record):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def make_sink() -> KafkaSink:
        # Never started: only its lanes and record batches are used.
        sink = KafkaSink(KafkaConfig(bootstrap="127.0.0.1:9", topic="orders", dlq_topic="orders.dlq"))
        sink._lanes = {"orders": [_Lane("orders", p) for p in range(6)],
                       "orders.dlq": [_Lane("orders.dlq", p) for p in range(3)]}  # fmt: skip
        return sink

    sink = loop.run_until_complete(make_sink())
    it = iter(range(10**9))

    async def once():
        batch = batches[next(it) % len(batches)]
        common = [("batch_id", batch.batch_id.encode()), ("source", batch.source.encode()),
                  ("content-type", CONTENT_TYPE)]  # fmt: skip
        segments = set()
        sink._append_orders(batch, batch.received_ns // 1_000_000, common, segments)
        if batch.rejects.num_rows:
            sink._append_rejects(batch, batch.received_ns // 1_000_000, common, segments)
        for lanes in sink._lanes.values():
            for lane in lanes:
                lane.open = None  # a fresh record batch per partition, as at moderate load
        for segment in segments:
            segment.builder.close()  # compresses (a worker thread does it in the server)
            segment.builder._set_producer_state(1, 0, 0)  # what aiokafka's sender does, then takes the bytes
            segment.builder._build()
        return segments

    def run():
        return loop.run_until_complete(once())

    try:
        benchmark.pedantic(run, rounds=100, warmup_rounds=5)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    _record(record, benchmark, "stage", ORDERS)


def test_stage_bronze_rows(benchmark, batches, record):
    it = iter(range(10**9))
    benchmark.pedantic(lambda: BronzeRows.from_batch(batches[next(it) % len(batches)]), rounds=300, warmup_rounds=10)
    _record(record, benchmark, "stage", ORDERS)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="bronze-settings"),  # what the Bronze writer uses: zstd 1, dictionaries on few columns
        # For comparison: the settings Bronze used before (zstd 3, a dictionary on every column).
        pytest.param({"compression_level": 3, "use_dictionary": True}, id="zstd3-all-dictionaries"),
    ],
)
def test_stage_parquet_encoding(benchmark, batches, record, settings):
    rows = [BronzeRows.from_batch(b) for b in batches]
    tables = {name: pa.Table.from_batches([r.tables[name] for r in rows if name in r.tables])
              for name in ("orders", "order_items", "order_payments", "customers")}  # fmt: skip
    sizes = []

    def run():
        size = 0
        for table in tables.values():
            sink = io.BytesIO()
            pq.write_table(table, sink, row_group_size=131_072, **{**parquet_options(table.schema), **settings})
            size += sink.tell()
        sizes.append(size)
        return size

    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    benchmark.extra_info["parquet_bytes_per_order"] = sizes[-1] / (ORDERS * len(batches))
    _record(record, benchmark, "stage", ORDERS * len(batches))


def test_stage_wal_encode(benchmark, batches, record):
    records = [WalRecord.of(b, BronzeRows.from_batch(b), 0) for b in batches]
    it = iter(range(10**9))
    benchmark.pedantic(lambda: encode_record(next(it), records[next(it) % len(records)]), rounds=200, warmup_rounds=5)
    _record(record, benchmark, "stage", ORDERS)


def test_stage_wal_append_one_fsync_per_batch(benchmark, batches, record, tmp_path):
    records = [WalRecord.of(b, BronzeRows.from_batch(b), 0) for b in batches]
    fd = os.open(tmp_path / "segment.wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    it = iter(range(10**9))

    def run():
        n = next(it)
        buffers = encode_record(n, records[n % len(records)])
        os.writev(fd, [memoryview(b) for b in buffers])
        os.fdatasync(fd)

    try:
        benchmark.pedantic(run, rounds=100, warmup_rounds=5)
    finally:
        os.close(fd)
    _record(record, benchmark, "stage", ORDERS)


def test_stage_ack(benchmark, batches, record):
    it = iter(range(10**9))

    def run():
        r = batches[next(it) % len(batches)].result
        return ingest_pb2.BatchAck(
            batch_id=r.batch_id, status=ingest_pb2.ACK_STATUS_ACCEPTED, accepted=r.accepted,
            duplicates=r.duplicates, rejected=r.rejected,
            errors=[ingest_pb2.RecordError(index=e.index, event_id=e.event_id, reason=e.reason)
                    for e in r.errors(100)],
        ).SerializeToString()  # fmt: skip

    benchmark.pedantic(run, rounds=300, warmup_rounds=10)
    _record(record, benchmark, "stage", ORDERS)


def test_native_stages(benchmark, record_measured):
    """Builds benchmarks/native/stage_bench (CMake, the core's own sources) and
    runs it on batches of the benchmark pool: decode, validate, dedup (full
    1,000,000-key window), Arrow encode and export, each timed on its own."""
    build = REPO / "build" / "bench-native"
    cmake = Path(sys.executable).with_name("cmake")
    ninja = Path(sys.executable).with_name("ninja")  # the pinned wheel's, as the package build uses
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja.exists() else []
    subprocess.run([str(cmake), "-S", str(REPO / "benchmarks" / "native"), "-B", str(build), *generator],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run([str(cmake), "--build", str(build)], check=True, stdout=subprocess.DEVNULL)
    maker = BatchMaker(load_pool(20_000), ORDERS)
    header = b"\x0a\x0bstage-bench"  # batch_id; the tag goes into the event_ids
    templates = [header + chunk for chunk, _ in maker.chunks]
    templates_path = build / "templates.bin"
    templates_path.write_bytes(b"".join(struct.pack("<I", len(t)) + t for t in templates))

    def run():
        return subprocess.run([str(build / "stage_bench"), str(templates_path), "400"], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    for line in out.splitlines():
        stage = json.loads(line)
        record_measured(f"native_{stage['stage']}", group="native-stage", role="stage",
                        median_s=stage["ns_per_batch"] / 1e9, orders=stage["orders"])  # fmt: skip
