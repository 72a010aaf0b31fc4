"""The native core's public face: one call per batch, raw bytes in, Arrow out.

    core = Core(dedup_max_keys=1_000_000, dedup_max_age_s=3600)
    result = core.process(raw_order_batch_bytes)
    orders = pyarrow.record_batch(result.orders)      # zero-copy

`Core.process` runs the stages in order (decode, validate, dedup, Arrow encode)
with the GIL released and creates no Python object per order. A `Core` may be
shared by threads: only its dedup window is shared state, locked for that
stage alone. A batch that is
not an acceptable `OrderBatch` raises `InvalidBatch`; orders that fail
validation are rejected one by one and listed in `result.rejects`.

Across restarts: `result.dedup_keys` are the keys a batch inserted (16 bytes
each), `core.dedup_snapshot()` exports the whole window (24 bytes per key: the
key and its insertion time, oldest first) and `core.dedup_restore(entries)`
puts such entries back, so a server can rebuild its window from a snapshot
and its write-ahead log.

Ownership: the Arrow data of a result is owned by the result and shared with
every array exported from it (each export holds a reference), so a
`pyarrow.RecordBatch` stays valid after the result is gone. Nothing in a result
points into the input buffer: `order_spans` are offsets, not views.
"""

from __future__ import annotations

from typing import NamedTuple

from keystone_ingest import _core

TABLES = ("orders", "order_items", "order_payments", "customers")
"""The four Bronze tables, named after the Olist dataset's files."""


class InvalidBatch(ValueError):
    """The bytes are not an acceptable `OrderBatch`; the whole batch is rejected.

    Permanent: resending the same bytes gives the same error.

    Attributes:
        code: stable machine-readable reason, e.g. ``"truncated"``, ``"batch_id_empty"``.
        offset: byte offset in the input where decoding failed, or ``None`` for
            batch-level rules (batch_id) that are not about one position.
        message: readable description naming what was wrong and where.
    """

    retriable = False

    def __init__(self, code: str, offset: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.offset = offset
        self.message = message


class RecordError(NamedTuple):
    """One rejected order: its position in the batch, its event_id, and why."""

    index: int
    event_id: str
    reason: str
    message: str


Core = _core.Core
BatchResult = _core.BatchResult
ArrowBatch = _core.ArrowBatch
RecordBatchBuilder = _core.RecordBatchBuilder
"""A Kafka v2 record batch for one topic-partition, built from requests by the
core (records stage); aiokafka's `send_batch()` takes it as a batch builder."""
REASONS: dict[str, str] = dict(_core.reasons())
"""Every per-order rejection code, with a one-line description."""
BATCH_ERRORS: dict[str, str] = dict(_core.batch_errors())
"""Every whole-batch error code (`InvalidBatch.code`), with a one-line description."""


def batch_id_of(data: bytes | bytearray | memoryview) -> str | None:
    """The batch_id of an `OrderBatch`, read without decoding its orders.

    Cheap (it steps over the top-level fields only), so the server can answer a
    resent batch_id before the core's dedup window sees the batch. `None` when
    the id is empty or the bytes do not parse that far; `Core.process` then
    raises the exact `InvalidBatch`.
    """
    return _core.batch_id_of(data)


def partition_counts(result: BatchResult, partitions: int) -> list[int]:
    """How many accepted orders of `result` Kafka's default partitioner puts on
    each of `partitions` partitions (murmur2 of order_id)."""
    return _core.partition_counts(result, partitions)


def schema(table: str) -> ArrowBatch:
    """An object exporting the Arrow schema of `table` (`__arrow_c_schema__`)."""
    return _core.schema(table)


DEDUP_KEY_BYTES = 16
"""Bytes per key in `BatchResult.dedup_keys`: two little-endian uint64 (lo, hi)."""
DEDUP_ENTRY_BYTES = 24
"""Bytes per entry of `Core.dedup_snapshot()`: the key, then int64 insertion time in ms."""

__all__ = [
    "DEDUP_ENTRY_BYTES",
    "DEDUP_KEY_BYTES",
    "ArrowBatch",
    "BATCH_ERRORS",
    "BatchResult",
    "Core",
    "InvalidBatch",
    "REASONS",
    "RecordBatchBuilder",
    "RecordError",
    "TABLES",
    "batch_id_of",
    "partition_counts",
    "schema",
]
