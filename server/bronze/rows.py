"""Decoded rows gathered per (table, day) in memory, and the offsets they came from.

The native decoder turns one partition's fetched bytes into Arrow tables in
Bronze's schemas. Here they are cut by partition day (vectorised: one stable
sort per table per fetch when a fetch spans days, none when it does not) and
kept as Arrow slices until they are appended to the open files (writer.py);
no Python object per row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from keystone_ingest.server.bronze.layout import CHILD_COUNTS, QUARANTINE, SCHEMAS, US_PER_DAY, purchase_days
from keystone_ingest.server.limits import ByteBudget

TopicPartition = tuple[str, int]


def split_by_day(rows: pa.RecordBatch, days: np.ndarray) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(day, rows of that day) in day order; rows keep their order within a day."""
    if not len(days):
        return
    first = days[0]
    if (days == first).all():
        yield int(first), rows
        return
    order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    rows = rows.take(pa.array(order))
    cuts = np.flatnonzero(np.diff(sorted_days)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(days)]))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(sorted_days[start]), rows.slice(start, end - start)


def decoded_days(tables: dict[str, pa.RecordBatch], child_counts: pa.RecordBatch | None) -> dict[str, np.ndarray]:
    """The partition day of every row of a decode's tables."""
    days: dict[str, np.ndarray] = {}
    orders = tables.get("orders")
    if orders is not None and orders.num_rows:
        today = time.time_ns() // (US_PER_DAY * 1000)
        order_days = purchase_days(orders, today)
        days["orders"] = order_days
        for table, column in CHILD_COUNTS:
            if table in tables and child_counts is not None:
                days[table] = np.repeat(order_days, child_counts.column(column).to_numpy())
    quarantine = tables.get(QUARANTINE)
    if quarantine is not None and quarantine.num_rows:
        micros = quarantine.column("received_at").cast(pa.int64()).to_numpy()
        days[QUARANTINE] = np.floor_divide(micros, US_PER_DAY).astype(np.int32)
    return days


class RowBuffer:
    """Rows gathered for the next spill into the open files, and the [first, end) offsets per
    topic-partition they hold all the rows of. Their Arrow bytes count against
    `limit_bytes`; once `full`, the worker spills or flushes (`--bronze-when-full`)."""

    def __init__(self, limit_bytes: int) -> None:
        self.parts: dict[tuple[str, int], list[pa.RecordBatch]] = {}
        self.ranges: dict[TopicPartition, tuple[int, int]] = {}
        self.budget = ByteBudget(limit_bytes)
        self.started: float | None = None  # monotonic time of the first offsets gathered
        self.max_timestamp_ms: dict[TopicPartition, int] = {}

    def __bool__(self) -> bool:
        return bool(self.ranges)

    @property
    def nbytes(self) -> int:
        return self.budget.used_bytes

    @property
    def full(self) -> bool:
        return self.budget.full

    def add(
        self,
        tp: TopicPartition,
        first: int,
        end: int,
        tables: dict[str, pa.RecordBatch],
        child_counts: pa.RecordBatch | None,
        max_timestamp_ms: int | None,
    ) -> None:
        """The rows decoded from offsets [first, end) of `tp`, which must
        follow on from what the buffer holds of it."""
        if end <= first:
            return
        held = self.ranges.get(tp)
        if held is not None and held[1] != first:
            raise ValueError(f"bronze: {tp} offsets {first}..{end} do not follow {held[0]}..{held[1]}")
        self.ranges[tp] = (held[0] if held else first, end)
        if max_timestamp_ms is not None:
            self.max_timestamp_ms[tp] = max_timestamp_ms
        if self.started is None:
            self.started = time.monotonic()
        days = decoded_days(tables, child_counts)
        for dest, rows in tables.items():
            if not rows.num_rows:
                continue
            if not rows.schema.equals(SCHEMAS[dest]):
                raise ValueError(f"bronze: decoded {dest} has schema {rows.schema}, not Bronze's {SCHEMAS[dest]}")
            for day, part in split_by_day(rows, days[dest]):
                self.parts.setdefault((dest, day), []).append(part)
            self.budget.take(rows.nbytes)
