"""What Bronze looks like: its tables, their schemas, where a row's file goes, how Parquet is encoded.

Layout: `<uri>/<table>/year=YYYY/month=MM/day=DD/part-<flush>.parquet` for
`orders`, `order_items`, `order_payments` and `customers`, partitioned by the
order's `order_purchase_timestamp` (UTC); an order's items, payments and
customer go in the order's partition, so the Olist SQL joins within a day.
Rejected orders go to `<uri>/_quarantine/...`, partitioned by the day the
server received them (UTC), with their original bytes. `pyarrow.dataset` skips
names starting with `_` or `.`, so reading `<uri>/orders` never sees the
quarantine, the commit log (`<uri>/_bronze/`) or a file being written.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from keystone_ingest.core import TABLES, schema

US_PER_DAY = 86_400_000_000

QUARANTINE = "_quarantine"
"""Destination of rejected orders; the leading `_` hides it from dataset readers."""

DESTINATIONS = (*TABLES, QUARANTINE)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("source", pa.string()),
        ("producer", pa.string()),
        ("index", pa.int32()),
        ("event_id", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("raw", pa.binary()),
        ("received_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Beside the core's `source` (what a batch says about itself), every row has
# `producer`: the authenticated caller that sent it (null without authentication).
PRODUCER_FIELD = pa.field("producer", pa.string())
SCHEMAS: dict[str, pa.Schema] = {
    **{t: pa.schema(schema(t)).append(PRODUCER_FIELD) for t in TABLES},
    QUARANTINE: QUARANTINE_SCHEMA,
}

CHILD_COUNTS = (("order_items", "item_count"), ("order_payments", "payment_count"), ("customers", "customer_count"))
"""Child tables and the count, per order, of their rows (children follow their orders)."""

CODECS = frozenset({"zstd", "snappy", "gzip", "brotli", "lz4", "none"})
"""Compression codecs pyarrow's Parquet writer accepts."""

DICTIONARY_COLUMNS = frozenset(
    {
        "order_status",
        "payment_type",
        "customer_city",
        "customer_state",
        "customer_zip_code_prefix",
        "seller_id",
        "batch_id",
        "source",
        "producer",
    }
)
"""Columns Bronze dictionary-encodes: few distinct values per row group. Ids
and timestamps are nearly all distinct; a dictionary for them is built, overflows
and is abandoned for plain encoding, which cost about a third of the encoding
time for no smaller file (benchmarks/test_stages.py)."""


def parquet_options(schema: pa.Schema, compression: str = "zstd", compression_level: int | None = 1) -> dict:
    """Keyword arguments for `pq.ParquetWriter` / `pq.write_table`: the one
    definition of how Bronze encodes Parquet (the reference server uses it too)."""
    return {
        "compression": compression,
        "compression_level": compression_level if compression in ("zstd", "gzip", "brotli") else None,
        "use_dictionary": [name for name in schema.names if name in DICTIONARY_COLUMNS],
    }


def purchase_days(orders: pa.RecordBatch | pa.Table, fallback_day: int) -> np.ndarray:
    """Days since the epoch (UTC) of each order's purchase timestamp.

    The core accepts no order without one; a null here would be a core bug,
    and such a row goes to `fallback_day` rather than being lost."""
    ts = orders.column("order_purchase_timestamp").cast(pa.timestamp("us", tz="UTC"))
    micros = ts.cast(pa.int64()).fill_null(fallback_day * US_PER_DAY).to_numpy()
    return np.floor_divide(micros, US_PER_DAY).astype(np.int32)


def partition_path(dest: str, day: int) -> str:
    """`orders/year=2017/month=07/day=14` for day 17361."""
    y, m, d = _civil_from_days(day)
    return f"{dest}/year={y:04d}/month={m:02d}/day={d:02d}"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    # Howard Hinnant's days_from_civil inverse: exact for any day count, no
    # datetime range limits, no time zone involved.
    z += 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d
