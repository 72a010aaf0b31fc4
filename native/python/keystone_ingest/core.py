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

Ownership: the Arrow data of a result is owned by the result and shared with
every array exported from it (each export holds a reference), so a
`pyarrow.RecordBatch` stays valid after the result is gone. Nothing in a result
points into the input buffer: `order_spans` are offsets, not views.

Reading Kafka back into Bronze: `decode_order_records(fetched, first_offset=o,
dedup=window)` turns the record bytes one Fetch returned for one partition of
the orders topic into Bronze's tables (`decoded.tables`, each with the
`producer` column; `decoded.child_counts` says how many child rows each order
has), dropping repeated event_ids with a `LogDedup` window defined over
offsets; `decode_reject_records` does the same for the dead-letter topic,
into the quarantine table. Both release the GIL; bytes that are not record
batches raise `CorruptRecords`.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class CorruptRecords(ValueError):
    """Fetched Kafka record bytes that cannot be decoded: a record batch whose
    header, CRC, codec or offsets do not add up, or one so large that a column
    built from it would reach 2 GiB. Nothing was decoded and the dedup window
    is unchanged.

    Attributes:
        code: ``"corrupt_record_batch"``, ``"codec"`` or ``"batch_too_large"``.
        offset: byte offset in the fetched bytes of the batch (or field) at fault.
        message: readable description naming what was wrong.
        retriable: True when fetching the same offsets again may give good
            bytes (a damaged fetch); False for ``"batch_too_large"``, which the
            same batch always is.
    """

    def __init__(self, code: str, offset: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.offset = offset
        self.message = message
        self.retriable = code != "batch_too_large"


@dataclass(frozen=True, slots=True)
class RecordError:
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
LogDedup = _core.LogDedup
"""Dedup over one Kafka partition's log, by offsets and record timestamps; one per partition."""
DecodedRecords = _core.DecodedRecords
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


def decode_order_records(
    data: bytes | bytearray | memoryview,
    *,
    first_offset: int,
    dedup: LogDedup | None,
    end_offset: int | None = None,
    max_batch_bytes: int = 64 << 20,
) -> DecodedRecords:
    """The orders in the record batches one Fetch returned for one partition of
    the orders topic, as Bronze's tables.

    Records before `first_offset` (a Fetch returns whole batches) and control
    batches are skipped; a record whose `event_id` repeats inside `dedup`'s
    window is dropped; one whose value is not a valid `Order` goes to
    `tables["_quarantine"]`. Continue from `next_offset`: a batch cut short at
    the end (and, rarely, batches that would not fit one call) are left for
    the next fetch. Records at or past `end_offset` are not read (a worker
    warming its window on the offsets before where it writes); `next_offset`
    stops there. `max_batch_bytes` bounds one batch decompressed.
    Raises `CorruptRecords` for bytes that are not record batches, and
    `ValueError` when the records are not after `dedup.last_offset` (reading
    offsets again needs `dedup.reset()`).
    """
    return _core.decode_order_records(
        data, first_offset=first_offset, end_offset=end_offset, dedup=dedup, max_batch_bytes=max_batch_bytes
    )


def decode_reject_records(
    data: bytes | bytearray | memoryview,
    *,
    first_offset: int,
    dedup: LogDedup | None,
    end_offset: int | None = None,
    max_batch_bytes: int = 64 << 20,
) -> DecodedRecords:
    """The same for the dead-letter topic: one `_quarantine` row per record
    from its headers and value, deduplicated by (`batch_id`, `error.index`)."""
    return _core.decode_reject_records(
        data, first_offset=first_offset, end_offset=end_offset, dedup=dedup, max_batch_bytes=max_batch_bytes
    )


def schema(table: str) -> ArrowBatch:
    """An object exporting the Arrow schema of `table` (`__arrow_c_schema__`)."""
    return _core.schema(table)


__all__ = [
    "BATCH_ERRORS",
    "REASONS",
    "TABLES",
    "ArrowBatch",
    "BatchResult",
    "Core",
    "CorruptRecords",
    "DecodedRecords",
    "InvalidBatch",
    "LogDedup",
    "RecordBatchBuilder",
    "RecordError",
    "batch_id_of",
    "decode_order_records",
    "decode_reject_records",
    "partition_counts",
    "schema",
]
