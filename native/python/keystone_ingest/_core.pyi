"""Type stubs for the compiled core (native/bindings/module.cpp)."""

from typing import Any

from keystone_ingest.core import RecordError

class ArrowBatch:
    """One Arrow record batch (or, from `schema()`, only a schema), exported
    through the Arrow PyCapsule protocol: `pyarrow.record_batch(x)` takes it
    without copying, and may be called more than once."""

    @property
    def name(self) -> str: ...
    @property
    def num_rows(self) -> int: ...
    def __arrow_c_schema__(self) -> Any: ...
    def __arrow_c_array__(self, requested_schema: Any | None = None) -> tuple[Any, Any]: ...
    def __len__(self) -> int: ...

class BatchResult:
    @property
    def batch_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def accepted(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def orders(self) -> ArrowBatch: ...
    @property
    def order_items(self) -> ArrowBatch: ...
    @property
    def order_payments(self) -> ArrowBatch: ...
    @property
    def customers(self) -> ArrowBatch: ...
    @property
    def order_spans(self) -> ArrowBatch:
        """One row per accepted order, in order (row for row with `orders`): `offset: int64, length: int32` of the
        accepted order's `Order` message inside the input buffer; `key_hash:
        int32`, murmur2 of order_id made positive, as Kafka's Java partitioner
        computes it; `item_count`, `payment_count`, `customer_count: int32`,
        how many rows of each child table belong to the order (children follow
        their orders' order); `event_id_offset, order_id_offset: int64` and
        `event_id_length, order_id_length: int32`, where the two ids lie in
        the input buffer (the Kafka record's header and key)."""
    @property
    def rejects(self) -> ArrowBatch:
        """One row per rejected order: `index: int32, event_id: utf8,
        reason: utf8, message: utf8, offset: int64, length: int32`."""
    def table(self, name: str) -> ArrowBatch: ...
    def errors(self, limit: int | None = None) -> list[RecordError]: ...

class Core:
    def __init__(
        self,
        *,
        dedup_max_keys: int = 1_000_000,
        dedup_max_age_s: float = 3600.0,
        max_orders_per_batch: int = 100_000,
        max_items_per_order: int = 1_000,
        max_payments_per_order: int = 1_000,
        max_batch_id_bytes: int = 128,
        max_source_bytes: int = 128,
        max_event_id_bytes: int = 128,
        max_id_bytes: int = 64,
        max_text_bytes: int = 256,
        min_year: int = 2000,
        max_year: int = 2100,
        bronze_tables: bool = True,
    ) -> None:
        """`bronze_tables=False` builds only `order_spans` and `rejects` (what
        the Kafka records need); the four Bronze tables of its results then
        raise ValueError."""
    def process(self, data: bytes | bytearray | memoryview, *, now_ms: int | None = None) -> BatchResult: ...
    def forget(self, result: BatchResult) -> int: ...
    @property
    def dedup_size(self) -> int: ...
    @property
    def dedup_memory_bytes(self) -> int: ...
    @property
    def dedup_bytes_per_key(self) -> float: ...

class RecordBatchBuilder:
    """A Kafka v2 record batch for one topic-partition. Appends encode records
    straight from the request (key order_id, value the order's bytes,
    headers event_id then `headers`); close() compresses with the GIL
    released; aiokafka's send_batch() stamps the producer's id, epoch and
    first sequence (_set_producer_state) and takes the bytes (_build)."""

    def __init__(self, codec: str, level: int, max_bytes: int) -> None: ...
    def append_orders(
        self,
        result: BatchResult,
        raw: bytes | bytearray | memoryview,
        partition: int,
        partitions: int,
        start: int,
        timestamp_ms: int,
        headers: list[tuple[str, bytes]],
    ) -> int:
        """Append the accepted orders on `partition` from row `start` on;
        returns the row to go on from (result.accepted when done)."""
    def append_rejects(
        self,
        result: BatchResult,
        raw: bytes | bytearray | memoryview,
        start: int,
        timestamp_ms: int,
        headers: list[tuple[str, bytes]],
    ) -> int:
        """Append the rejected orders from `start` on; returns the row to go on
        from (result.rejected when done)."""
    def close(self) -> None: ...
    def closed(self) -> bool: ...
    def record_count(self) -> int: ...
    def size(self) -> int: ...
    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None: ...
    def _build(self) -> bytes: ...

class LogDedup:
    """Dedup over one Kafka partition's log: a record at offset o repeats key k
    iff k's previous occurrence o' has `o - window_records <= o' < o` and its
    timestamp is at most `window_ms` older. One per partition: decodes that
    share one take turns."""

    def __init__(self, window_records: int, window_ms: int) -> None: ...
    def reset(self) -> None:
        """Forget everything, `last_offset` included (to read offsets again)."""
    def __len__(self) -> int:
        """Occurrences held: at most `window_records`."""
    @property
    def last_offset(self) -> int | None: ...
    @property
    def window_records(self) -> int: ...
    @property
    def window_ms(self) -> int: ...

class DecodedRecords:
    @property
    def next_offset(self) -> int:
        """The offset after the last whole record batch read (control batches
        included): where the next fetch starts. `first_offset` if none."""
    @property
    def consumed(self) -> int:
        """Bytes of the input those batches take."""
    @property
    def records(self) -> int:
        """Data records read at or after `first_offset`: duplicates + orders + quarantined."""
    @property
    def duplicates(self) -> int: ...
    @property
    def orders(self) -> int: ...
    @property
    def quarantined(self) -> int: ...
    @property
    def max_timestamp_ms(self) -> int | None: ...
    @property
    def last_offset(self) -> int | None: ...
    @property
    def tables(self) -> dict[str, ArrowBatch]:
        """`orders`, `order_items`, `order_payments`, `customers` (Bronze's
        schemas: the core's tables plus `producer`) and `_quarantine`
        (`batch_id, source, producer, index: int32, event_id, reason, message,
        raw: binary, received_at: timestamp[us, UTC]`); only `_quarantine`
        for the dead-letter topic."""
    @property
    def child_counts(self) -> ArrowBatch:
        """Row for row with `orders`: `item_count`, `payment_count`,
        `customer_count: int32` (children follow their orders' order)."""

def decode_order_records(
    data: bytes | bytearray | memoryview,
    *,
    first_offset: int,
    end_offset: int | None = None,
    dedup: LogDedup | None,
    max_batch_bytes: int = 64 << 20,
) -> DecodedRecords:
    """Records at or past `end_offset` are not read (`next_offset` stops there)."""

def decode_reject_records(
    data: bytes | bytearray | memoryview,
    *,
    first_offset: int,
    end_offset: int | None = None,
    dedup: LogDedup | None,
    max_batch_bytes: int = 64 << 20,
) -> DecodedRecords: ...
def partition_counts(result: BatchResult, partitions: int) -> list[int]: ...
def batch_id_of(data: bytes | bytearray | memoryview) -> str | None: ...
def schema(table: str) -> ArrowBatch: ...
def reasons() -> list[tuple[str, str]]: ...
def batch_errors() -> list[tuple[str, str]]: ...
