"""`Batch`: what the pipeline hands to the sinks after the native core.

Ownership: a `Batch` owns the request bytes (`raw`) and the core's result; the
Arrow record batches below share the result's buffers without copying. Sinks
may keep a `Batch` (or its record batches) as long as they need it, but must not
mutate it. Kafka values are slices of `raw` taken through `order_spans` and
`rejects`, so they are the client's bytes, byte for byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
from keystone_ingest.core import TABLES, BatchResult


@dataclass(eq=False)
class Batch:
    raw: bytes
    result: BatchResult
    received_ns: int = field(default_factory=time.time_ns)
    # The authenticated caller that sent the batch (None without
    # authentication); `source` is what the batch says about itself.
    producer: str | None = None

    @property
    def batch_id(self) -> str:
        return self.result.batch_id

    @property
    def source(self) -> str:
        return self.result.source

    @property
    def accepted(self) -> int:
        return self.result.accepted

    @property
    def rejected(self) -> int:
        return self.result.rejected

    @cached_property
    def tables(self) -> dict[str, pa.RecordBatch]:
        """The four Bronze tables, zero-copy views of the core's Arrow output
        (a Core made with bronze_tables=False, the server's, has none)."""
        return {name: pa.record_batch(self.result.table(name)) for name in TABLES}

    @cached_property
    def spans(self) -> pa.RecordBatch:
        """One row per accepted order: `offset`, `length` of the order's bytes in
        `raw`; `key_hash` (murmur2 of order_id, positive, as Kafka's Java client
        computes it); `item_count`, `payment_count`, `customer_count` (how many
        rows of each child table belong to this order, in order)."""
        return pa.record_batch(self.result.order_spans)

    @cached_property
    def rejects(self) -> pa.RecordBatch:
        """One row per rejected order: `index`, `event_id`, `reason`, `message`,
        `offset`, `length` (the rejected `Order`'s bytes in `raw`)."""
        return pa.record_batch(self.result.rejects)
