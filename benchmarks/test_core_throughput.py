"""Native core against the pure-Python reference on the same batches.

Batches of 1,000 generated orders (about 320 bytes each). Every batch has its
own event_ids, and there are more distinct orders than the dedup window
holds, so every round accepts every order and the window evicts a key for
each one it inserts: the steady state of a long-running server, not a
cache-hot rerun of one batch. Both paths end with pyarrow data for the four
Bronze tables.

The native core runs twice: with the default window of 1,000,000 keys
(~40 MB, which no cache holds) and with a 32,000-key window that stays in
cache, so the cost of the window's size shows on its own.
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import TABLES, Core
from keystone_ingest.proto.v1 import ingest_pb2

from benchmarks.reference.core import ReferenceCore

ORDERS_PER_BATCH = 1_000
DEFAULT_WINDOW_KEYS = 1_000_000
SMALL_WINDOW_KEYS = 32_000


def _distinct_batches(count: int) -> list[bytes]:
    """`count` copies of one generated batch, each with its own batch_id and event_ids."""
    template = OrderGenerator(seed=42).batch(ORDERS_PER_BATCH)
    out = []
    for k in range(count):
        batch = ingest_pb2.OrderBatch()
        batch.CopyFrom(template)
        batch.batch_id = f"bench-{k:06d}"
        for i, order in enumerate(batch.orders):
            order.event_id = f"{k:08x}-0000-4000-8000-{i:012x}"  # as long as a UUID
        out.append(batch.SerializeToString())
    return out


@pytest.fixture(scope="module")
def small_set() -> list[bytes]:
    """64,000 distinct orders: twice what the small window holds."""
    return _distinct_batches(2 * SMALL_WINDOW_KEYS // ORDERS_PER_BATCH)


@pytest.fixture(scope="module")
def large_set() -> list[bytes]:
    """1,100,000 distinct orders: more than the default window holds."""
    return _distinct_batches(DEFAULT_WINDOW_KEYS // ORDERS_PER_BATCH + 100)


def _native_run(core: Core, batches: list[bytes]):
    it = itertools.cycle(batches)
    # Fill the window first so every measured round evicts as it inserts.
    for _ in range(len(batches)):
        core.process(next(it))

    def run():
        result = core.process(next(it))
        return [pa.record_batch(result.table(name)) for name in TABLES]

    return run


def test_native_core_default_window(benchmark, large_set, record):
    run = _native_run(Core(dedup_max_keys=DEFAULT_WINDOW_KEYS), large_set)
    tables = benchmark.pedantic(run, rounds=400, warmup_rounds=20)
    assert tables[0].num_rows == ORDERS_PER_BATCH
    record(benchmark, group="batch-1000", role="native", orders=ORDERS_PER_BATCH, input_bytes=len(large_set[0]))


def test_native_core_cache_resident_window(benchmark, small_set, record):
    run = _native_run(Core(dedup_max_keys=SMALL_WINDOW_KEYS), small_set)
    tables = benchmark.pedantic(run, rounds=400, warmup_rounds=20)
    assert tables[0].num_rows == ORDERS_PER_BATCH
    record(benchmark, group="batch-1000", role="native", orders=ORDERS_PER_BATCH, input_bytes=len(small_set[0]))


def test_reference_python_core(benchmark, small_set, record):
    core = ReferenceCore(dedup_max_keys=SMALL_WINDOW_KEYS)
    it = itertools.cycle(small_set)

    def run():
        return core.process(next(it)).tables

    tables = benchmark.pedantic(run, rounds=15, warmup_rounds=2)
    assert tables["orders"].num_rows == ORDERS_PER_BATCH
    record(benchmark, group="batch-1000", role="reference", orders=ORDERS_PER_BATCH, input_bytes=len(small_set[0]))
