"""Micro-benchmarks of the server's stages after the native core, one batch of
1,000 generated orders each, so a regression shows where it is.

The native stages (decode, validate, dedup, Arrow encode) are timed one by one
in C++ by benchmarks/native/stage_bench.cc (test_native_stages below builds and
runs it); their sum is `Core.process`, timed in test_core_throughput.py. Here:

  arrow import      the server's core result as pyarrow record batches (spans, rejects)
  bronze decode     the Bronze consumer's side: one partition's fetch of the Kafka sink's record
                    batches (zstd) through `decode_order_records` with a log dedup window, the
                    tables imported into pyarrow; per order
  kafka batching    the Kafka sink's records for the batch: per-partition record
                    batches encoded by the native core from the request (keys,
                    values, headers), compressed (zstd level 1) and stamped as
                    they are before a Produce request
  bronze gather     the decoded tables cut by partition day into the next spill (`RowBuffer.add`)
  parquet encoding  Bronze's Parquet settings (layout.parquet_options) on 20 batches' decoded
                    orders and child rows; per order
  ack               the BatchAck message the pipeline answers with, serialised
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from keystone_ingest.core import Core, LogDedup, decode_order_records
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.bronze.layout import parquet_options
from keystone_ingest.server.bronze.rows import RowBuffer
from keystone_ingest.server.pipeline import accepted_ack
from keystone_ingest.server.sinks.kafka import KafkaConfig
from keystone_ingest.server.sinks.kafka.lanes import RecordLanes

from benchmarks.corpus import BatchMaker, load_pool

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
    core = Core(bronze_tables=False)  # the server's
    results = [core.process(p) for p in payloads]
    it = iter(range(10**9))

    def run():
        b = Batch(payloads[0], results[next(it) % len(results)])
        return b.spans, b.rejects

    benchmark.pedantic(run, rounds=300, warmup_rounds=10)
    _record(record, benchmark, "stage", ORDERS)


def fetched_records(payloads) -> tuple[bytes, int]:
    """The Kafka sink's record batches (its encode stage, with the server's
    defaults) of every payload on one partition, with the offsets the broker
    assigns: what one Fetch returns."""

    async def encode() -> tuple[bytes, int]:
        c = KafkaConfig(bootstrap="127.0.0.1:9")
        lanes = RecordLanes(c.topic, c.dlq_topic, c.compression, c.level, c.max_batch_bytes)
        (lane,) = lanes.add_topic(c.topic, 1)
        lanes.add_topic(c.dlq_topic, 1)
        core = Core(bronze_tables=False)  # the server's
        fetch, offset = [], 0
        for payload in payloads:
            lanes.append(Batch(payload, core.process(payload)))
            while (segment := lanes.next_segment(lane)) is not None:
                segment.builder.close()
                fetch.append(struct.pack(">q", offset) + segment.builder._build()[8:])  # the offset the broker assigns
                offset += segment.builder.record_count()
        return b"".join(fetch), offset

    return asyncio.run(encode())


@pytest.fixture(scope="module")
def decoded(payloads):
    data, _ = fetched_records(payloads)
    out = decode_order_records(data, first_offset=0, dedup=None)
    return {name: pa.record_batch(t) for name, t in out.tables.items()}, pa.record_batch(out.child_counts)


def test_stage_bronze_decode(benchmark, payloads, record):
    data, offset = fetched_records(payloads)

    def run():
        window = LogDedup(window_records=1_000_000, window_ms=3_600_000)
        decoded = decode_order_records(data, first_offset=0, dedup=window)
        assert decoded.orders == offset
        return {name: pa.record_batch(t) for name, t in decoded.tables.items()}, pa.record_batch(decoded.child_counts)

    benchmark.pedantic(run, rounds=30, warmup_rounds=2)
    _record(record, benchmark, "stage", offset, len(data))


def test_stage_kafka_record_batching(benchmark, batches, record):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # The sink's encode stage on its own, with the server's defaults: no producer takes the segments.
    c = KafkaConfig(bootstrap="127.0.0.1:9", topic="orders", dlq_topic="orders.dlq")
    lanes = RecordLanes(c.topic, c.dlq_topic, c.compression, c.level, c.max_batch_bytes)
    lanes.add_topic(c.topic, 6)
    lanes.add_topic(c.dlq_topic, 3)
    it = iter(range(10**9))

    async def once():
        segments = lanes.append(batches[next(it) % len(batches)])
        for lane in lanes:  # what the lane tasks do: take the record batches for a producer
            while lanes.next_segment(lane) is not None:
                pass
        for segment in segments:
            segment.builder.close()  # compresses (a worker thread does it in the server)
            # What aiokafka's sender does when it first sends a record batch, then takes its bytes.
            segment.builder._set_producer_state(1, 0, 0)
            segment.builder._build()
        lanes.unsettled.clear()
        return segments

    def run():
        return loop.run_until_complete(once())

    try:
        benchmark.pedantic(run, rounds=100, warmup_rounds=5)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    _record(record, benchmark, "stage", ORDERS)


def test_stage_bronze_gather(benchmark, decoded, record):
    tables, counts = decoded

    def run():
        buffer = RowBuffer(1 << 40)  # never full: the benchmark times gathering alone
        buffer.add(("orders", 0), 0, 1, tables, counts, 0)
        return buffer

    benchmark.pedantic(run, rounds=30, warmup_rounds=2)
    _record(record, benchmark, "stage", tables["orders"].num_rows)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="bronze-settings"),  # what the Bronze writer uses: zstd 1, dictionaries on few columns
        # For comparison: the settings Bronze used before (zstd 3, a dictionary on every column).
        pytest.param({"compression_level": 3, "use_dictionary": True}, id="zstd3-all-dictionaries"),
    ],
)
def test_stage_parquet_encoding(benchmark, decoded, record, settings):
    tables = {name: pa.Table.from_batches([rows]) for name, rows in decoded[0].items() if name != "_quarantine"}
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
    orders = tables["orders"].num_rows
    benchmark.extra_info["parquet_bytes_per_order"] = sizes[-1] / orders
    _record(record, benchmark, "stage", orders)


def test_stage_ack(benchmark, batches, record):
    it = iter(range(10**9))

    def run():
        return accepted_ack(batches[next(it) % len(batches)].result).SerializeToString()

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
    subprocess.run(
        [str(cmake), "-S", str(REPO / "benchmarks" / "native"), "-B", str(build), *generator],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run([str(cmake), "--build", str(build)], check=True, stdout=subprocess.DEVNULL)
    maker = BatchMaker(load_pool(20_000), ORDERS)
    header = b"\x0a\x0bstage-bench"  # batch_id; the tag goes into the event_ids
    templates = [header + chunk for chunk, _ in maker.chunks]
    templates_path = build / "templates.bin"
    templates_path.write_bytes(b"".join(struct.pack("<I", len(t)) + t for t in templates))

    def run():
        return subprocess.run(
            [str(build / "stage_bench"), str(templates_path), "400"], check=True, capture_output=True, text=True
        ).stdout

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    for line in out.splitlines():
        stage = json.loads(line)
        record_measured(
            f"native_{stage['stage']}",
            group="native-stage",
            role="stage",
            median_s=stage["ns_per_batch"] / 1e9,
            orders=stage["orders"],
        )
