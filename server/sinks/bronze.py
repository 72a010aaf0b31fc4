"""Bronze sink: the four tables and the quarantine as Hive-partitioned Parquet.

    sink = BronzeSink(BronzeConfig(uri="s3://lake/bronze"), metrics,
                      on_durable=wal.mark_durable, publish_log=wal.manifest)
    await sink.start()
    await sink.write(batch)          # returns once the writer owns the rows
    await sink.write_rows(rows)      # the same for rows the write-ahead log feeds (token = WAL seq)
    await sink.stop()                # every row written is in a visible Parquet file

Layout: `<uri>/<table>/year=YYYY/month=MM/day=DD/part-<utc>-<host>-<pid>-<uuid>-<seq>.parquet`
for `orders`, `order_items`, `order_payments` and `customers`, partitioned by the
order's `order_purchase_timestamp` (UTC); an order's items, payments and customer
go in the order's partition. Rejected orders go to `<uri>/_quarantine/...`,
partitioned by the day the batch was received (UTC), with their original bytes.
`pyarrow.dataset` skips names starting with `_` or `.`, so reading `<uri>/orders`
never sees the quarantine or a file being written.

Ownership: `write()` turns a `Batch` into `BronzeRows` (Arrow views of the core's
output plus each row's partition day, and copies of the rejected orders' bytes)
and hands them to the writer thread; from then on the writer owns them and the
caller may drop the batch. That is the ack rule of issue 3 ("handed to the
Bronze writer"): durability comes later, and is reported through `on_durable`
with the token given to `write()`. `BronzeRows` is the writer's whole input, so a
write-ahead log can persist it before the ack and feed it again after a crash
(`write_rows`).

Exactly once across a crash (with the write-ahead log, server/wal.py): the log
feeds rows in its sequence order, one `BronzeRows` per batch with the batch's
seq as token, and the writer keeps that order per (table, day): rows are staged
in arrival order, a stable sort by day keeps it within a day, and a partition's
next file starts only once the previous one is rolled. One batch's rows of one
partition are never split between two files (a file may exceed a row group by
part of a batch instead). So every file holds, for its (table, day), all the
rows of every token from its first to its last and nothing else, and
`publish_log.intend()` records exactly that, durably, before the file is
published: after a crash, a file that exists says which (token, table, day)
rows are already in Bronze, whatever order the committers published in. (The
price: with a publish log, a file rolls at the first batch boundary past
`roll_bytes`, so it can exceed it by one batch's rows of its partition. Cutting
inside a batch would need row positions in the log, and a replayed remainder
of a batch would have to carry its original positions.)

Threads: the event loop only builds `BronzeRows` (vectorised numpy, no Python
per accepted row) and waits for buffer space. One writer thread owns all
buffers and Parquet writers, so they need no locks. A small pool of committer
threads fsyncs-and-renames or uploads closed files; it is the one place where
publishing is retried.

Buffering and memory (why not one streaming ParquetWriter per partition, why not
buffer everything until the roll): generated and replayed data spreads a batch
of 1,000 orders over hundreds of purchase days, so a file per (table, day)
means thousands of files open at once. An open ParquetWriter costs a file
descriptor, per-column encoders and a zstd context, and a row group written
from a handful of rows is a poor Parquet file. Buffering everything until the
roll instead caps a file at what memory holds (a 128 MiB zstd file is ~0.5 GiB
of Arrow). So the writer does both, by partition temperature:
  - rows are first *staged* per table, in arrival order, and distributed to
    partitions in runs of `_STAGE_ROWS` rows or once a tick: one stable sort by
    day and one copy per run, so the Python work per partition is paid per
    run, not per batch;
  - each (table, day) keeps its rows as Arrow slices until it has
    `row_group_rows` of them; only then is a ParquetWriter opened and the rows
    encoded as one row group. A hot partition (live traffic: today) streams
    row groups into its open file, which rolls at `roll_bytes` measured on the
    file itself; a cold one never opens a writer until it rolls by age or for
    memory, and is then written in one go;
  - at most `max_open_files` writers are open (the oldest rolls first), and the
    writer's buffers are bounded by `max_buffered_bytes`: above 75% (or when a
    `write()` waits for more than is left) the oldest partitions are encoded
    (open writer) or rolled until it holds 50%, and `write()` waits while the
    limit is reached, which is the backpressure the server passes on.
The cost is one extra copy of every row (the sort into partitions) and, for
spread-out data, files smaller than `roll_bytes`: rows of cold days are written
when they reach `roll_age_s` or when memory is needed, whichever comes first.
Each file costs ~1 ms of pyarrow time with the GIL held, so data spread over
~700 days at 256 MiB writes ~50k orders/s; live data (one day) ~350k orders/s.

Failures: a file the writer cannot write locally (disk full, permissions) is
abandoned with a loud error naming how many rows it held; the sink then stays
failed (`write()` raises the classified error) until restarted, so no further
batch is acked on a sink that has lost data; the tokens of those rows never
become durable, which is what a write-ahead log needs to write them again. A
file that cannot be *published* (S3 down, throttled, a rename failing) is kept
and retried with backoff for as long as the sink runs; after `commit_attempts`
failures of one file the sink reports the error (`write()` and `flush()` raise
it) until that file goes through. `stop()` waits `stop_timeout_s` for uploads,
then keeps what is left in the spool directory (listed in the error it raises)
and the next start uploads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from keystone_ingest.core import TABLES, schema
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.errors import IngestError, ShuttingDown, SinkFailed, SinkUnavailable
from keystone_ingest.server.sinks.storage import ObjectStore, classify_os_error, open_store

log = logging.getLogger(__name__)

MiB = 1024 * 1024
US_PER_DAY = 86_400_000_000
NS_PER_DAY = 86_400_000_000_000

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

# What each destination's rows must look like: the core's export, and the quarantine.
# Beside the core's `source` (what a batch says about itself), every row gets
# `producer`: the authenticated caller that sent it (null without authentication).
PRODUCER_FIELD = pa.field("producer", pa.string())
SCHEMAS: dict[str, pa.Schema] = {
    **{t: pa.schema(schema(t)).append(PRODUCER_FIELD) for t in TABLES},
    QUARANTINE: QUARANTINE_SCHEMA,
}

# Child tables and the `spans` column that says how many of their rows each
# order owns (children appear in the order of their orders).
_CHILD_COUNTS = (("order_items", "item_count"), ("order_payments", "payment_count"), ("customers", "customer_count"))

# Staged rows of one table are distributed to partitions once this many have
# arrived (or at the next tick): big enough that the per-partition Python work
# of a distribution is spread over many batches, small enough that the sort's
# extra copy stays a few MiB.
_STAGE_ROWS = 32_768

# Compression codecs pyarrow's Parquet writer accepts.
_CODECS = frozenset({"zstd", "snappy", "gzip", "brotli", "lz4", "none"})

DICTIONARY_COLUMNS = frozenset({
    "order_status", "payment_type", "customer_city", "customer_state", "customer_zip_code_prefix", "seller_id",
    "batch_id", "source", "producer",
})  # fmt: skip
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


@dataclass(frozen=True)
class BronzeConfig:
    uri: str = "file://./data/bronze"
    """`file:///abs/path`, `file://./relative`, a plain path, or `s3://bucket/prefix`."""
    s3_endpoint_url: str | None = None
    """Endpoint override for S3-compatible stores (MinIO, moto, ...)."""
    roll_bytes: int = 128 * MiB
    """A file is closed once this many bytes are written to it (measured on the file)."""
    roll_age_s: float = 60.0
    """A file is closed this long after its first row arrived, however small."""
    compression: str = "zstd"
    compression_level: int | None = 1
    """zstd 1: files about the size level 3 gives on this data (dictionaries
    do most of the work), at half the encoding time."""
    row_group_rows: int = 131_072
    """Rows per Parquet row group; also how many rows a partition buffers before
    its file is opened and written to."""
    max_buffered_bytes: int = 256 * MiB
    """Bound on Arrow bytes the writer holds (queued, staged, not yet encoded);
    `write()` waits while it is reached. Rows not yet distributed are views that
    keep the core's whole result alive, about 1.6x their Arrow size, so expect
    the process to grow by up to ~1.6x this (measured)."""
    max_open_files: int = 64
    """Bound on ParquetWriters open at once; the oldest rolls to make room."""
    max_pending_files: int = 64
    """Closed files waiting to be published; the writer waits beyond this (S3 slow or down)."""
    commit_threads: int = 4
    commit_attempts: int = 5
    """Failed publish attempts of one file before the sink reports the error."""
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0
    stop_timeout_s: float = 30.0
    """How long `stop()` waits for files to be published before keeping them in the spool."""
    spool_dir: str = "./data/bronze-spool"
    """S3 only: local directory where files are built and kept until uploaded."""
    multipart_threshold_bytes: int = 64 * MiB
    multipart_chunk_bytes: int = 16 * MiB
    s3_max_attempts: int = 3
    """botocore's per-request attempts (standard retry mode), inside each publish attempt."""
    s3_connect_timeout_s: float = 5.0
    s3_sse_kms_key_id: str | None = None
    """S3 only: encrypt objects with SSE-KMS under this key id or ARN (None: the bucket's default)."""
    s3_read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        positive = ("roll_bytes", "roll_age_s", "row_group_rows", "max_buffered_bytes", "max_open_files",
                    "max_pending_files", "commit_threads", "commit_attempts", "retry_base_s", "retry_max_s",
                    "multipart_threshold_bytes", "multipart_chunk_bytes", "s3_max_attempts")  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"BronzeConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.stop_timeout_s < 0:
            raise ValueError("BronzeConfig.stop_timeout_s must not be negative")
        if self.compression not in _CODECS:
            raise ValueError(f"BronzeConfig.compression must be one of {sorted(_CODECS)}, got {self.compression!r}")


# --------------------------------------------------------------------------
# The writer's input


@dataclass(frozen=True, eq=False)
class BronzeRows:
    """Everything the Bronze writer needs from one batch, as Arrow and numpy only.

    `tables` maps a destination (one of `DESTINATIONS`) to its rows; `days` gives,
    row for row, the partition of each row as days since 1970-01-01 UTC (int32).
    Destinations without rows may be absent. `token` is reported to `on_durable`
    once every row here is in a durable file (None: not tracked).
    """

    tables: Mapping[str, pa.RecordBatch]
    days: Mapping[str, np.ndarray]
    token: Hashable | None = None
    nbytes_by_table: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        for dest, rows in self.tables.items():
            if dest not in DESTINATIONS:
                raise ValueError(f"unknown Bronze destination {dest!r}")
            # Checked here, where the caller can be told, rather than in the
            # writer thread, where a mismatch would fail every batch buffered with it.
            if not rows.schema.equals(SCHEMAS[dest]):
                raise ValueError(f"{dest}: schema {rows.schema} is not Bronze's {SCHEMAS[dest]}")
            if len(self.days[dest]) != rows.num_rows:
                raise ValueError(f"{dest}: {rows.num_rows} rows but {len(self.days[dest])} partition days")
        object.__setattr__(self, "nbytes_by_table", {d: rows.nbytes for d, rows in self.tables.items()})

    @property
    def nbytes(self) -> int:
        return sum(self.nbytes_by_table.values())

    @classmethod
    def from_batch(cls, batch: Batch, token: Hashable | None = None) -> BronzeRows:
        received_day = batch.received_ns // NS_PER_DAY
        tables: dict[str, pa.RecordBatch] = {}
        days: dict[str, np.ndarray] = {}
        orders = batch.orders
        if orders.num_rows:
            order_days = _purchase_days(orders, received_day)
            tables["orders"], days["orders"] = _with_producer(orders, batch.producer), order_days
            spans = batch.spans
            for table, count_column in _CHILD_COUNTS:
                rows = batch.tables[table]
                if not rows.num_rows:
                    continue
                # Children follow their orders, so each order's day repeated by its
                # child count is the children's days, in order.
                child_days = np.repeat(order_days, spans.column(count_column).to_numpy())
                if len(child_days) != rows.num_rows:
                    raise SinkFailed(
                        f"bronze: batch {batch.batch_id!r}: spans.{count_column} sums to {len(child_days)} "
                        f"but {table} has {rows.num_rows} rows"
                    )
                tables[table], days[table] = _with_producer(rows, batch.producer), child_days
        if batch.rejects.num_rows:
            quarantine = quarantine_rows(batch)
            tables[QUARANTINE] = quarantine
            days[QUARANTINE] = np.full(quarantine.num_rows, received_day, dtype=np.int32)
        return cls(tables, days, token)


def _producer_column(producer: str | None, n: int) -> pa.Array:
    if producer is None:
        return pa.nulls(n, pa.string())
    return pa.repeat(pa.scalar(producer, pa.string()), n)


def _with_producer(rows: pa.RecordBatch, producer: str | None) -> pa.RecordBatch:
    """The core's rows (shared, not copied) plus the `producer` column."""
    return rows.append_column(PRODUCER_FIELD, _producer_column(producer, rows.num_rows))


def _purchase_days(orders: pa.RecordBatch, fallback_day: int) -> np.ndarray:
    """Days since the epoch (UTC) of each order's purchase timestamp.

    The core rejects orders without one; a null here would be a core bug, and
    such a row goes to the day the batch arrived rather than being lost."""
    ts = orders.column("order_purchase_timestamp").cast(pa.timestamp("us", tz="UTC"))
    micros = ts.cast(pa.int64()).fill_null(fallback_day * US_PER_DAY).to_numpy()
    return np.floor_divide(micros, US_PER_DAY).astype(np.int32)


def quarantine_rows(batch: Batch) -> pa.RecordBatch:
    """The rejected orders of `batch` in `QUARANTINE_SCHEMA`, with their original bytes."""
    rejects = batch.rejects
    n = rejects.num_rows
    offsets = rejects.column("offset").to_pylist()
    lengths = rejects.column("length").to_pylist()
    # Python per rejected order: rejects are few, and each needs its own bytes
    # copied out of the request anyway so the request can be freed.
    raw = pa.array([batch.raw[o : o + n_] for o, n_ in zip(offsets, lengths, strict=True)], pa.binary())
    received_us = batch.received_ns // 1000
    return pa.record_batch(
        [
            pa.array([batch.batch_id] * n, pa.string()),
            pa.array([batch.source] * n, pa.string()),
            _producer_column(batch.producer, n),
            rejects.column("index"),
            rejects.column("event_id"),
            rejects.column("reason"),
            rejects.column("message"),
            raw,
            pa.array(np.full(n, received_us, dtype=np.int64)).view(pa.timestamp("us", tz="UTC")),
        ],
        schema=QUARANTINE_SCHEMA,
    )


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


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32].strip("-") or "host"


# --------------------------------------------------------------------------
# Shared state between the event loop, the writer thread and the committers


class _ByteBudget:
    """Bytes of rows the writer holds. `write()` acquires on the event loop and
    waits while the limit is reached; the writer thread releases as rows are
    encoded. A single request larger than the limit goes through alone, so it
    cannot wait forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.Future[None], int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_wait: Callable[[], None] = lambda: None

    def bind(self, loop: asyncio.AbstractEventLoop, on_wait: Callable[[], None]) -> None:
        """`on_wait` is called when a request starts waiting: the writer must
        free memory even if it holds less than its usual threshold."""
        self._loop = loop
        self._on_wait = on_wait

    @property
    def used(self) -> int:
        return self._used

    @property
    def wanted(self) -> int:
        """The largest request waiting now (0: none)."""
        with self._lock:
            return max((n for _, n in self._waiters), default=0)

    async def acquire(self, n: int, check: Callable[[], None]) -> None:
        assert self._loop is not None
        while True:
            check()
            with self._lock:
                if self._used == 0 or self._used + n <= self.limit:
                    self._used += n
                    return
                waiter = self._loop.create_future()
                entry = (waiter, n)
                self._waiters.append(entry)
            self._on_wait()
            try:
                await waiter
            except asyncio.CancelledError:
                with self._lock:
                    if entry in self._waiters:
                        self._waiters.remove(entry)
                raise

    def adjust(self, delta: int) -> None:
        """Writer side: memory changed without waiting (a sort copy made, a buffer freed)."""
        with self._lock:
            self._used += delta
            waiters, self._waiters = (self._waiters, []) if delta <= 0 else ([], self._waiters)
        for waiter, _ in waiters:
            self._wake(waiter)

    def wake_all(self) -> None:
        self.adjust(0)

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))


class _Chunk:
    """One distributed run of staged rows of one destination.

    `unencoded` (writer thread only): slices of it not yet encoded, plus one
    hold while it is being distributed; its memory is released at 0.
    `unpublished` (under the durability lock): files holding its rows not yet
    published, plus the same hold; its tokens advance at 0."""

    __slots__ = ("nbytes", "rows", "tokens", "unencoded", "unpublished")

    def __init__(self, nbytes: int, rows: int, tokens: list[Hashable]) -> None:
        self.nbytes = nbytes
        self.rows = rows
        self.tokens = tokens
        self.unencoded = 1
        self.unpublished = 1


class _Durability:
    """Which tokens have every row in a published file."""

    def __init__(self, notify: Callable[[list[Hashable]], None]) -> None:
        self._lock = threading.Lock()
        self._remaining: dict[Hashable, int] = {}
        self._notify = notify

    def expect(self, token: Hashable, chunks: int) -> None:
        """`token`'s rows will be in `chunks` chunks (one per non-empty destination)."""
        if chunks == 0:
            self._notify([token])
            return
        with self._lock:
            self._remaining[token] = self._remaining.get(token, 0) + chunks

    def add_file(self, chunk: _Chunk) -> None:
        with self._lock:
            chunk.unpublished += 1

    def release(self, chunks: list[_Chunk]) -> None:
        durable: list[Hashable] = []
        with self._lock:
            for chunk in chunks:
                chunk.unpublished -= 1
                if chunk.unpublished:
                    continue
                for token in chunk.tokens:
                    left = self._remaining[token] - 1
                    if left:
                        self._remaining[token] = left
                    else:
                        del self._remaining[token]
                        durable.append(token)
        if durable:
            self._notify(durable)

    @property
    def tracked(self) -> int:
        return len(self._remaining)


@dataclass(eq=False)
class _Sealed:
    """A closed file on its way to being published."""

    dest: str
    key: str
    spool_path: str
    rows: int
    nbytes: int
    chunks: list[_Chunk]
    day: int | None = None
    tokens: tuple[Hashable, Hashable] | None = None
    """(first, last) token of the rows in the file, in feed order; None: untracked."""


@dataclass(frozen=True)
class FileIntent:
    """A file about to be published: it holds every row of (`dest`, `day`) of
    each token from `first_token` to `last_token` (in feed order), and no other row."""

    key: str
    dest: str
    day: int
    first_token: Hashable
    last_token: Hashable


class PublishLog(Protocol):
    """Where the sink records its files, so a crash can be resolved file by file
    (server/wal.py's manifest). Called from the writer and committer threads."""

    def opened(self, key: str) -> None:
        """A spool file for `key` now exists (a hint: lets the next start remove it if unpublished)."""

    def intend(self, files: list[FileIntent]) -> None:
        """Durably record that these files are about to be published. Raises OSError if it cannot."""

    def published(self, key: str) -> None:
        """`key` is visible and durable (a hint: saves a lookup at the next start)."""


class _Committer:
    """Publishes closed files on a small thread pool; the one place publishing is retried."""

    def __init__(self, store: ObjectStore, config: BronzeConfig, durability: _Durability, metrics: Any,
                 on_error_change: Callable[[], None], publish_log: PublishLog | None = None) -> None:  # fmt: skip
        self._store = store
        self._publish_log = publish_log
        self._config = config
        self._durability = durability
        self._metrics = metrics
        self._on_error_change = on_error_change
        self._pool = concurrent.futures.ThreadPoolExecutor(config.commit_threads, thread_name_prefix="bronze-commit")
        # Bounds the spool: the writer waits here when publishing falls behind,
        # its buffers fill, and write() waits in turn.
        self._slots = threading.Semaphore(config.max_pending_files)
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._failing: dict[str, IngestError] = {}  # spool path -> last error, past commit_attempts
        self._kept: list[str] = []
        self.abort = threading.Event()
        self.files = self.bytes = self.rows = 0

    def submit(self, sealed: _Sealed, *, bounded: bool = True) -> None:
        """Queue a file for publishing; waits while `max_pending_files` are
        pending. `bounded=False` (files an earlier run left in the spool, which
        are on disk already) never waits: start() must not block on them while
        S3 is down."""
        if bounded:
            self._slots.acquire()
        future = self._pool.submit(self._commit, sealed)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(functools.partial(self._done, bounded))

    def _done(self, bounded: bool, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        if bounded:
            self._slots.release()

    def pending(self) -> list[concurrent.futures.Future[None]]:
        with self._lock:
            return list(self._pending)

    @property
    def error(self) -> IngestError | None:
        with self._lock:
            errors = list(self._failing.values())
        # A permanent error is the more useful one to report when both occur.
        return next((e for e in errors if not e.retriable), errors[-1] if errors else None)

    @property
    def kept(self) -> list[str]:
        with self._lock:
            return list(self._kept)

    def _commit(self, sealed: _Sealed) -> None:
        url = self._store.url(sealed.key)
        for attempt in itertools.count(1):
            if self.abort.is_set():
                self._keep(sealed, url)
                return
            try:
                self._store.publish(sealed.spool_path, sealed.key)
                break
            except Exception as exc:
                err = exc if isinstance(exc, IngestError) else SinkFailed(f"bronze: publishing {url}: {exc!r}")
                log.warning(
                    "bronze: publish failed, will retry",
                    extra={"key": url, "attempt": attempt, "error": err.message, "retriable": err.retriable},
                )
                if self._metrics is not None:
                    self._metrics.bronze_publish_failures_total.inc()
                if attempt >= self._config.commit_attempts or not err.retriable:
                    self._set_failing(sealed.spool_path, err)
            delay = min(self._config.retry_max_s, self._config.retry_base_s * 2 ** (attempt - 1))
            self.abort.wait(delay * random.uniform(0.5, 1.0))
        self._set_failing(sealed.spool_path, None)
        with self._lock:
            self.files += 1
            self.bytes += sealed.nbytes
            self.rows += sealed.rows
        if self._metrics is not None:
            self._metrics.bronze_files_total.labels(table=sealed.dest).inc()
            self._metrics.bronze_bytes_total.labels(table=sealed.dest).inc(sealed.nbytes)
            self._metrics.bronze_rows_total.labels(table=sealed.dest).inc(sealed.rows)
        log.debug("bronze: file published", extra={"key": url, "rows": sealed.rows, "bytes": sealed.nbytes})
        if self._publish_log is not None:
            self._publish_log.published(sealed.key)
        self._durability.release(sealed.chunks)

    def _keep(self, sealed: _Sealed, url: str) -> None:
        try:
            path = self._store.keep(sealed.spool_path, sealed.key)
        except IngestError as err:
            path = sealed.spool_path
            log.error(
                "bronze: could not move an unpublished file to the spool", extra={"path": path, "error": err.message}
            )
        with self._lock:
            self._kept.append(path)
        log.error(
            "bronze: file NOT published, kept in the spool for the next start",
            extra={"key": url, "path": path, "rows": sealed.rows},
        )

    def _set_failing(self, spool_path: str, err: IngestError | None) -> None:
        with self._lock:
            before = bool(self._failing)
            if err is None:
                self._failing.pop(spool_path, None)
            else:
                self._failing[spool_path] = err
            changed = before != bool(self._failing) or err is not None
        if changed:
            self._on_error_change()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------
# The writer thread


@dataclass(eq=False)
class _Staged:
    rows: pa.RecordBatch
    days: np.ndarray
    nbytes: int
    token: Hashable | None


class _PartitionFile:
    """The file being built for one (destination, day): Arrow slices waiting
    to be encoded and, once a row group's worth has been, an open ParquetWriter."""

    __slots__ = ("dest", "day", "key", "created_s", "slices", "slice_chunks", "pending_rows", "pending_bytes",
                 "chunks", "spool_path", "sink", "writer", "rows", "written_bytes", "closed", "tokens")  # fmt: skip

    def __init__(self, dest: str, day: int, key: str, created_s: float) -> None:
        self.dest, self.day, self.key, self.created_s = dest, day, key, created_s
        self.slices: list[pa.Table] = []
        self.slice_chunks: list[_Chunk] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.chunks: list[_Chunk] = []  # every chunk with rows in this file (for durability)
        self.spool_path: str | None = None
        self.sink: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0  # rows encoded into the file
        self.written_bytes = 0
        self.closed = False  # rolled or abandoned; a list of files taken earlier may still hold it
        self.tokens: tuple[Hashable, Hashable] | None = None  # (first, last) token of its rows


@dataclass(eq=False)
class _Flush:
    done: concurrent.futures.Future[None]
    stop: bool = False


class _Writer:
    """Owns every buffer and open file; runs on one thread."""

    def __init__(self, config: BronzeConfig, store: ObjectStore, budget: _ByteBudget, durability: _Durability,
                 committer: _Committer, fail: Callable[[IngestError], None],
                 publish_log: PublishLog | None = None) -> None:  # fmt: skip
        self.config = config
        self.queue: queue.SimpleQueue[BronzeRows | _Flush | None] = queue.SimpleQueue()
        self._store = store
        self._publish_log = publish_log
        # Files rolled in this turn of the loop: their intents are recorded
        # with one fsync, then they go to the committer (_submit_sealed).
        self._sealed: list[_Sealed] = []
        self._budget = budget
        self._durability = durability
        self._committer = committer
        self._fail = fail
        self._staged: dict[str, list[_Staged]] = {}
        self._staged_rows: dict[str, int] = {}
        self._files: dict[tuple[str, int], _PartitionFile] = {}
        self._writers: dict[tuple[str, int], _PartitionFile] = {}  # files with an open writer, oldest first
        # Encoded bytes per Arrow byte, per destination, learned from the files
        # written so far; estimates how big buffered rows will be on disk.
        self._ratio: dict[str, float] = dict.fromkeys(DESTINATIONS, 0.25)
        self.held_bytes = 0
        self._tick_s = min(1.0, max(0.01, config.roll_age_s / 4))
        self._next_age_check = 0.0
        self._name_prefix = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._seq = itertools.count()
        self.dead = False
        self._flushing: _Flush | None = None  # the flush being worked on, failed if the thread dies
        self.thread = threading.Thread(target=self._run, name="bronze-writer", daemon=True)

    def wake(self) -> None:
        """Thread-safe: run the loop's checks (memory, age) now."""
        self.queue.put(None)

    @property
    def open_files(self) -> int:
        return len(self._files)

    @property
    def open_writers(self) -> int:
        return len(self._writers)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: fail everything pending rather than hang it
            log.exception("bronze: writer thread died")
            self._die(SinkFailed(f"bronze: writer stopped after an internal error ({type(exc).__name__}: {exc})"))

    def _loop(self) -> None:
        while True:
            # Wakes for: rows to buffer, a flush or stop request, a write()
            # waiting for memory (None, from `wake`), or the tick that rolls
            # files older than roll_age_s (checked at most once a tick).
            try:
                item: BronzeRows | _Flush | None = self.queue.get(timeout=self._tick_s)
            except queue.Empty:
                item = None
            if isinstance(item, BronzeRows):
                self._ingest(item)
            elif isinstance(item, _Flush):
                self._flushing = item
                self._roll_all()
                self._submit_sealed()
                self._flushing = None
                item.done.set_result(None)
                if item.stop:
                    return
            now = time.monotonic()
            if now >= self._next_age_check:
                self._next_age_check = now + self._tick_s
                self._roll_aged(now)
            # Free memory above 75% of the budget, or below it when a write()
            # is waiting for more than is left.
            limit, wanted = self.config.max_buffered_bytes, self._budget.wanted
            target = min(0.5 * limit, limit - wanted)
            if self.held_bytes > 0.75 * limit or (wanted and self.held_bytes > target):
                self._relieve_memory(target)
            self._submit_sealed()

    def _die(self, err: IngestError) -> None:
        self.dead = True
        self._fail(err)
        pending = [self._flushing] if self._flushing is not None else []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Flush):
                pending.append(item)
        for flush in pending:
            flush.done.set_exception(err)
        self._budget.adjust(-self._budget.used)

    # -- rows in

    def _ingest(self, rows: BronzeRows) -> None:
        present = [dest for dest, batch in rows.tables.items() if batch.num_rows]
        held = sum(rows.nbytes_by_table[dest] for dest in present)
        self.held_bytes += held
        if held != rows.nbytes:
            self._budget.adjust(held - rows.nbytes)  # empty tables hold nothing
        if rows.token is not None:
            self._durability.expect(rows.token, len(present))
        for dest in present:
            batch = rows.tables[dest]
            self._staged.setdefault(dest, []).append(
                _Staged(batch, rows.days[dest], rows.nbytes_by_table[dest], rows.token)
            )
            self._staged_rows[dest] = self._staged_rows.get(dest, 0) + batch.num_rows
            if self._staged_rows[dest] >= _STAGE_ROWS:
                self._distribute(dest)

    def _distribute(self, dest: str) -> None:
        """Split the staged rows of `dest` by day and add each day's rows to its file."""
        staged = self._staged.pop(dest, None)
        self._staged_rows[dest] = 0
        if not staged:
            return
        table = pa.Table.from_batches([s.rows for s in staged])
        days = staged[0].days if len(staged) == 1 else np.concatenate([s.days for s in staged])
        # Which staged batch each row came from: a file never splits one
        # batch's rows of a partition (see "Exactly once" above).
        groups = np.repeat(np.arange(len(staged), dtype=np.int32), [s.rows.num_rows for s in staged])
        tokens = [s.token for s in staged]
        staged_bytes = sum(s.nbytes for s in staged)
        if len(days) > 1 and bool((days[1:] < days[:-1]).any()):
            # One stable sort keeps rows of a day in arrival order (children in
            # their orders' order) and makes each day contiguous.
            order = np.argsort(days, kind="stable")
            days = days[order]
            groups = groups[order]
            table = table.take(order)
        else:
            # Already in day order (live traffic: one day). Copied all the same:
            # the staged rows are views that keep the core's whole result alive
            # (spans, rejects, spare capacity: ~1.6x their own size), and the
            # copy makes the buffer's size the memory it holds.
            table = table.combine_chunks()
        nbytes = table.nbytes
        cuts = (np.flatnonzero(days[1:] != days[:-1]) + 1).tolist()
        starts, ends = [0, *cuts], [*cuts, len(days)]
        chunk = _Chunk(nbytes, len(days), [s.token for s in staged if s.token is not None])
        del staged
        # The copy replaces the staged views (whose memory goes with them).
        self.held_bytes += nbytes - staged_bytes
        self._budget.adjust(nbytes - staged_bytes)
        now = time.monotonic()
        config = self.config
        for start, end in zip(starts, ends, strict=True):
            day = int(days[start])
            # A day's rows go in pieces of about a row group (never cutting a
            # batch's rows), so a file is checked against roll_bytes after each
            # piece and the rest of the rows start the next file.
            while start < end:
                pf = self._files.get((dest, day))
                if pf is None:
                    pf = self._files[(dest, day)] = self._new_file(dest, day, now)
                stop = start + min(end - start, config.row_group_rows - pf.pending_rows)
                if self._publish_log is not None and stop < end and groups[stop - 1] == groups[stop]:
                    # Rows of one batch stay in one file: take the rest of its rows
                    # too (groups are sorted within a day).
                    stop = start + int(np.searchsorted(groups[start:end], groups[stop - 1], side="right"))
                rows = stop - start
                first, last = tokens[groups[start]], tokens[groups[stop - 1]]
                pf.tokens = (first if pf.tokens is None else pf.tokens[0], last)
                pf.slices.append(table.slice(start, rows))
                pf.slice_chunks.append(chunk)
                chunk.unencoded += 1
                pf.pending_rows += rows
                pf.pending_bytes += nbytes * rows // max(1, chunk.rows)
                if not pf.chunks or pf.chunks[-1] is not chunk:
                    pf.chunks.append(chunk)
                    self._durability.add_file(chunk)
                start += rows
                if pf.pending_rows >= config.row_group_rows:
                    self._guard(pf, self._encode)
                if not pf.closed and pf.written_bytes + pf.pending_bytes * self._ratio[dest] >= config.roll_bytes:
                    self._guard(pf, self._roll)
        self._release_chunk(chunk)  # the distribution holds, memory and durability
        self._durability.release([chunk])

    def _new_file(self, dest: str, day: int, now: float) -> _PartitionFile:
        utc = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"part-{utc}-{self._name_prefix}-{next(self._seq):06d}.parquet"
        return _PartitionFile(dest, day, f"{partition_path(dest, day)}/{name}", now)

    # -- rows out

    def _guard(self, pf: _PartitionFile, step: Callable[[_PartitionFile], None]) -> None:
        """Run a file step; a local I/O error abandons that file (loudly) and fails the sink."""
        if pf.closed:
            return
        try:
            step(pf)
        except OSError as exc:
            self._abandon(pf, classify_os_error(exc, f"writing {self._store.url(pf.key)}"))

    def _encode(self, pf: _PartitionFile) -> None:
        if not pf.slices:
            return
        table = pa.concat_tables(pf.slices)
        if pf.writer is None:
            self._open(pf, table.schema)
        assert pf.writer is not None and pf.sink is not None
        pf.writer.write_table(table, row_group_size=self.config.row_group_rows)
        written = pf.sink.tell()
        if pf.pending_bytes:
            observed = (written - pf.written_bytes) / pf.pending_bytes
            self._ratio[pf.dest] = 0.8 * self._ratio[pf.dest] + 0.2 * observed
        pf.written_bytes = written
        pf.rows += pf.pending_rows
        self._drop_slices(pf)

    def _drop_slices(self, pf: _PartitionFile) -> None:
        for chunk in pf.slice_chunks:
            self._release_chunk(chunk)
        pf.slices.clear()
        pf.slice_chunks.clear()
        pf.pending_rows = pf.pending_bytes = 0

    def _release_chunk(self, chunk: _Chunk) -> None:
        chunk.unencoded -= 1
        if chunk.unencoded == 0:
            self.held_bytes -= chunk.nbytes
            self._budget.adjust(-chunk.nbytes)

    def _open(self, pf: _PartitionFile, schema: pa.Schema) -> None:
        while len(self._writers) >= self.config.max_open_files:
            oldest = next(iter(self._writers.values()))
            self._guard(oldest, self._roll)
        pf.spool_path = self._store.spool_path(pf.key)
        if self._publish_log is not None:
            self._publish_log.opened(pf.key)
        pf.sink = pa.OSFile(pf.spool_path, "wb")
        pf.writer = pq.ParquetWriter(
            pf.sink, schema, **parquet_options(schema, self.config.compression, self.config.compression_level)
        )
        self._writers[(pf.dest, pf.day)] = pf

    def _roll(self, pf: _PartitionFile) -> None:
        """Close the file and hand it to the committer."""
        self._encode(pf)
        pf.closed = True
        self._files.pop((pf.dest, pf.day), None)
        self._writers.pop((pf.dest, pf.day), None)
        if pf.writer is None:
            return
        assert pf.sink is not None and pf.spool_path is not None
        pf.writer.close()
        pf.written_bytes = pf.sink.tell()
        pf.sink.close()
        # A closed writer still holds the file's whole footer (schema, row
        # group metadata): ~15 KiB a file, and a roll of every open file can
        # seal thousands at once.
        pf.writer = pf.sink = None
        self._sealed.append(
            _Sealed(pf.dest, pf.key, pf.spool_path, pf.rows, pf.written_bytes, pf.chunks, pf.day, pf.tokens)
        )

    def _submit_sealed(self) -> None:
        """Record the intents of the files rolled in this turn (one fsync for
        all of them), then hand the files to the committer."""
        if not self._sealed:
            return
        sealed, self._sealed = self._sealed, []
        if self._publish_log is not None:
            try:
                self._publish_log.intend(
                    [FileIntent(f.key, f.dest, f.day, *f.tokens)  # type: ignore[arg-type, misc]
                     for f in sealed if f.tokens is not None and None not in f.tokens]
                )
            except OSError as exc:
                err = classify_os_error(exc, "recording the files about to be published")
                log.error(
                    "bronze: could not record files before publishing them; they are NOT published and the sink is failed",
                    extra={"files": len(sealed), "rows_lost": sum(f.rows for f in sealed), "error": err.message},
                )
                for f in sealed:
                    try:
                        self._store.discard(f.spool_path)
                    except OSError:
                        pass
                # Their chunks are never released: their tokens never become durable.
                self._fail(err)
                return
        for f in sealed:
            self._committer.submit(f)

    def _abandon(self, pf: _PartitionFile, err: IngestError) -> None:
        lost = pf.rows + pf.pending_rows
        log.error(
            "bronze: file abandoned after a local I/O error; its rows are NOT in Bronze and the sink is failed",
            extra={"key": self._store.url(pf.key), "rows_lost": lost, "error": err.message},
        )
        pf.closed = True
        self._files.pop((pf.dest, pf.day), None)
        self._writers.pop((pf.dest, pf.day), None)
        for closable in (pf.writer, pf.sink):
            try:
                if closable is not None:
                    closable.close()
            except Exception:
                pass
        if pf.spool_path is not None:
            try:
                self._store.discard(pf.spool_path)
            except OSError:
                pass
        pf.writer = pf.sink = None
        self._drop_slices(pf)
        # pf.chunks are never released: their tokens never become durable.
        self._fail(err)

    def _roll_all(self) -> None:
        for dest in list(self._staged):
            self._distribute(dest)
        for pf in list(self._files.values()):
            self._guard(pf, self._roll)

    def _roll_aged(self, now: float) -> None:
        for dest in list(self._staged):
            self._distribute(dest)
        deadline = now - self.config.roll_age_s
        for pf in [pf for pf in self._files.values() if pf.created_s <= deadline]:
            self._guard(pf, self._roll)

    def _relieve_memory(self, target: float) -> None:
        """Free buffers, oldest partitions first, down to `target` bytes: a file
        with an open writer encodes its rows as a row group, any other rolls."""
        for dest in list(self._staged):
            self._distribute(dest)
        for pf in sorted((pf for pf in self._files.values() if pf.slices), key=lambda pf: pf.created_s):
            if self.held_bytes <= target:
                break
            self._guard(pf, self._encode if pf.writer is not None else self._roll)


# --------------------------------------------------------------------------
# Public API


class BronzeSink:
    """Writes batches to Bronze. See the module docstring for layout, threads and failures.

    `on_durable(tokens)` is called on the event loop with the tokens passed to
    `write()` whose rows are all in published files (renamed locally, uploaded
    to S3). Tokens of rows that were lost (the sink failed) are never reported.
    `publish_log` (optional) records each file before it is published, with the
    tokens it holds; see "Exactly once across a crash" in the module docstring.
    """

    def __init__(
        self,
        config: BronzeConfig,
        metrics: Any = None,
        *,
        on_durable: Callable[[list[Hashable]], None] | None = None,
        publish_log: PublishLog | None = None,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._on_durable = on_durable
        self._publish_log = publish_log
        self._budget = _ByteBudget(config.max_buffered_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fatal: IngestError | None = None
        self._error_event: asyncio.Event | None = None
        self._store: ObjectStore | None = None
        self._committer: _Committer | None = None
        self._writer: _Writer | None = None
        self._durability = _Durability(self._notify_durable)
        self._state = "new"  # new -> running -> stopping -> stopped

    # -- lifecycle

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"BronzeSink.start() called when {self._state}")
        self._loop = asyncio.get_running_loop()
        self._error_event = asyncio.Event()
        self._budget.bind(self._loop, lambda: self._writer.wake() if self._writer else None)
        config = self.config
        # boto3 client creation, the bucket check and the spool scan block.
        self._store = await asyncio.to_thread(
            lambda: open_store(
                config.uri,
                endpoint_url=config.s3_endpoint_url,
                spool_dir=config.spool_dir,
                **(
                    dict(
                        multipart_threshold_bytes=config.multipart_threshold_bytes,
                        multipart_chunk_bytes=config.multipart_chunk_bytes,
                        max_attempts=config.s3_max_attempts,
                        connect_timeout_s=config.s3_connect_timeout_s,
                        read_timeout_s=config.s3_read_timeout_s,
                        max_pool_connections=max(10, config.commit_threads * 4),
                        sse_kms_key_id=config.s3_sse_kms_key_id,
                    )
                    if config.uri.startswith("s3://")
                    else {}
                ),
            )
        )
        await asyncio.to_thread(self._store.check)
        leftovers = await asyncio.to_thread(_describe_leftovers, self._store)
        self._committer = _Committer(
            self._store, config, self._durability, self._metrics, self._signal_error, self._publish_log
        )
        self._writer = _Writer(
            config, self._store, self._budget, self._durability, self._committer, self._set_fatal, self._publish_log
        )
        for sealed in leftovers:
            log.warning("bronze: publishing a file left by an earlier run", extra={"key": self._store.url(sealed.key)})
            self._committer.submit(sealed, bounded=False)
        self._writer.thread.start()
        self._state = "running"
        log.info("bronze: sink started", extra={"uri": config.uri, "leftovers": len(leftovers)})

    async def write(self, batch: Batch, *, token: Hashable | None = None) -> None:
        """Hand the batch's accepted rows and rejects to the writer; returns once
        the writer owns them (buffered, not yet durable). Waits while the
        writer's buffers are full. Raises SinkUnavailable / SinkFailed when the
        sink cannot take rows, ShuttingDown after stop() began."""
        self._check_writable()
        await self.write_rows(BronzeRows.from_batch(batch, token))

    async def write_rows(self, rows: BronzeRows) -> None:
        """`write()` for rows already in the writer's input form (e.g. replayed from a WAL)."""
        nbytes = rows.nbytes
        await self._budget.acquire(nbytes, self._check_writable)
        try:
            self._check_writable()
        except IngestError:
            self._budget.adjust(-nbytes)
            raise
        assert self._writer is not None
        self._writer.queue.put(rows)

    async def flush(self) -> None:
        """Roll every open file now and wait until every file is published.
        Raises the sink's error if publishing is failing (it keeps retrying in
        the background) or the writer failed."""
        self._check_writable()
        assert self._writer is not None and self._committer is not None
        rolled = self._request_roll(stop=False)
        await self._wait_done([rolled], timeout_s=None, raise_on_error=True)
        if rolled.exception() is not None:
            raise rolled.exception()  # type: ignore[misc]
        await self._wait_done(self._committer.pending(), timeout_s=None, raise_on_error=True)
        self._check_writable()

    def relieve_memory(self) -> None:
        """Memory pressure (the server's memory limit reached): roll every open
        file now instead of at its age or size, so the rows buffered for them
        are encoded and freed. Returns at once; smaller files are the cost."""
        if self._state != "running" or self._writer is None:
            return
        self._request_roll(stop=False).add_done_callback(lambda f: f.exception())

    async def stop(self, timeout_s: float | None = None) -> None:
        """Take no more rows, roll every file, and wait up to `timeout_s`
        (default stop_timeout_s) for them to be published. After a clean stop
        every row written is in a visible file. Files not published in time
        stay in the spool (S3) for the next start; stop() then raises
        SinkUnavailable naming them."""
        if self._state in ("stopping", "stopped"):
            return
        if self._state == "new":
            self._state = "stopped"
            return
        self._state = "stopping"
        assert self._writer is not None and self._committer is not None
        timeout_s = self.config.stop_timeout_s if timeout_s is None else max(0.0, timeout_s)
        deadline = time.monotonic() + timeout_s

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        # 1. The writer rolls every file and exits (at once if it has died).
        finished = self._writer.dead or await self._wait_done([self._request_roll(stop=True)], timeout_s=left())
        # 2. The committers publish what was rolled.
        finished = finished and await self._wait_done(self._committer.pending(), timeout_s=left())
        if not finished:
            # 3. Publishing still failing at the deadline: stop retrying; what is
            # unpublished stays in the spool for the next start.
            self._committer.abort.set()
        # The writer exits once it has rolled everything (with abort set, the
        # committer no longer holds it back), then the committers drain.
        await asyncio.to_thread(self._writer.thread.join, timeout_s + 5.0)
        if self._writer.thread.is_alive():
            self._set_fatal(SinkFailed("bronze: the writer thread did not stop; buffered rows are lost"))
            log.error("bronze: writer thread still running at stop")
        await asyncio.to_thread(self._committer.shutdown)
        self._state = "stopped"
        kept = self._committer.kept
        if kept:
            raise SinkUnavailable(
                f"bronze: {len(kept)} file(s) not published within {timeout_s:g}s, "
                f"kept for the next start: {', '.join(kept[:10])}{' ...' if len(kept) > 10 else ''}"
            )
        if self._fatal is not None:
            raise self._fatal
        log.info("bronze: sink stopped", extra={"files": self._committer.files, "rows": self._committer.rows})

    # -- state

    @property
    def store(self) -> ObjectStore:
        """Where files land (after start()): for resolving a crash's files."""
        assert self._store is not None, "BronzeSink.start() was not called"
        return self._store

    @property
    def error(self) -> IngestError | None:
        """What is wrong now, if anything: a failed writer (sticky) or files
        failing to publish (clears when they go through). For health checks."""
        if self._fatal is not None:
            return self._fatal
        return self._committer.error if self._committer is not None else None

    def stats(self) -> dict[str, int]:
        """A snapshot for logs, tests and benchmarks."""
        writer, committer = self._writer, self._committer
        return {
            "buffered_bytes": self._budget.used,
            "open_files": writer.open_files if writer else 0,
            "open_writers": writer.open_writers if writer else 0,
            "pending_files": len(committer.pending()) if committer else 0,
            "files_published": committer.files if committer else 0,
            "bytes_published": committer.bytes if committer else 0,
            "rows_published": committer.rows if committer else 0,
            "tokens_tracked": self._durability.tracked,
        }

    # -- internals

    def _check_writable(self) -> None:
        if self._state != "running":
            if self._state == "new":
                raise RuntimeError("BronzeSink.start() was not called")
            raise ShuttingDown("bronze: the sink is stopping")
        err = self.error
        if err is not None:
            raise err

    def _request_roll(self, *, stop: bool) -> concurrent.futures.Future[None]:
        """Ask the writer to roll every file (and exit, with stop); done when it has."""
        assert self._writer is not None
        rolled: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer.queue.put(_Flush(rolled, stop=stop))
        return rolled

    async def _wait_done(
        self, futures: list[concurrent.futures.Future[None]], *, timeout_s: float | None, raise_on_error: bool = False
    ) -> bool:
        """Wait until `futures` are done; False if timeout_s passes first. With
        raise_on_error, raise the sink's error as soon as it reports one."""
        assert self._error_event is not None
        waiting = {self._watch(f) for f in futures}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while waiting:
            self._error_event.clear()
            if raise_on_error and (err := self.error) is not None:
                raise err
            # Wakes for: a future done, the sink's error state changing, the deadline.
            error_changed = asyncio.ensure_future(self._error_event.wait())
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(
                waiting | {error_changed}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            error_changed.cancel()
            waiting -= done
            if not done:
                return False
        return True

    def _watch(self, future: concurrent.futures.Future[None]) -> asyncio.Future[None]:
        """An asyncio future done when `future` is. One way only: unlike
        asyncio.wrap_future, cancelling the waiter never cancels the work."""
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()

        def done(_: concurrent.futures.Future[None]) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))

        future.add_done_callback(done)
        return waiter

    def _set_fatal(self, err: IngestError) -> None:
        if self._fatal is None:
            self._fatal = err
        self._signal_error()
        self._budget.wake_all()

    def _signal_error(self) -> None:
        loop, event = self._loop, self._error_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def _notify_durable(self, tokens: list[Hashable]) -> None:
        loop, callback = self._loop, self._on_durable
        if callback is None or loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(callback, tokens)


def _describe_leftovers(store: ObjectStore) -> list[_Sealed]:
    sealed = []
    for path, key in store.leftovers():
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:  # not a complete Parquet file: keep it for an operator, do not publish
            log.error("bronze: unreadable spool file left in place", extra={"path": path, "error": str(exc)})
            continue
        sealed.append(_Sealed(key.split("/", 1)[0], key, path, rows, os.path.getsize(path), []))
    return sealed
