"""Write-ahead log: an acked batch's Bronze rows survive a crash.

    wal = WriteAheadLog(WalConfig(dir="./data/wal"), metrics)
    recovery = await wal.open()                    # cut a torn tail, index the segments, read the snapshot
    windows = Windows(core, batch_ids)
    windows.restore(recovery)                      # the dedup and batch_id windows as they were
    wal.attach(windows)
    bronze = BronzeSink(config, on_durable=wal.mark_durable, publish_log=wal.manifest)
    await bronze.start()
    feed = BronzeFeed(wal, bronze)
    feed.start()                                   # replay what is not in Parquet yet, then follow the log

    wal.check_budget()                             # before Kafka: SinkUnavailable once the disk budget is used
    seq = await wal.append(record, on_commit=...)  # returns once the record is fsynced: the commit point

    await feed.stop(timeout_s); await bronze.stop(timeout_s); await wal.close()

The commit point. A batch is committed once its record is fsynced here: the
pipeline acks it then, and from then on its rows reach Bronze whatever happens
to the process. Kafka comes before the log (a batch the log never saw was never
acked, so its resend is the only copy that counts); Bronze after, fed from the
log in sequence order by `BronzeFeed`, normally from memory, from disk when it
has fallen behind or after a restart.

On disk, in `dir`:
  00000000000000000001.wal ...   segments named by their first seq: a 16-byte header
                                  (b"KSWALSG1", first seq) and records back to back
  bronze-files.log                the manifest: the Bronze files written from the log
  snapshot                        the windows as of a seq, so segments can be deleted
  LOCK                            flock'd by the one process using the directory

A record: a 24-byte header (magic b"KWAL", payload length u32, crc32 u32, kind
u16, flags u16, seq u64; little-endian; the crc, zlib's crc32, covers every
header field but magic and crc, then the payload) and the payload: u32 length
and JSON metadata (batch_id, ack counts, received time, the dedup keys' insert
time, each table's row count and IPC length), the batch's dedup keys (16 bytes
each), then one Arrow IPC stream per Bronze destination holding that table's
rows plus a `__day` int32 column (the row's partition). So a record is exactly a
`BronzeRows` plus what the windows need.

Group commit: one writer thread takes every append queued since its last
fsync, writes them all, and fsyncs once; appends arriving meanwhile wait for the
next round. Under load many batches share an fsync without any timer
(`commit_delay_ms` can add one for slow disks).

Exactly once into Bronze across a crash. A batch's rows span many Parquet files
and a crash can leave some published and some not, so replaying whole records
would duplicate rows. The feed hands records to the Bronze sink in seq order
and the sink keeps that order per (table, day) partition and never splits one
batch's rows of a partition between files (bronze.py, "Exactly once"). Before a
file is published the sink records an intent here, fsynced: "file F holds all
rows of (table, day) for seqs a..b". At the next start every intent not marked
published is checked (one existence check each: os.path.exists or an S3 HEAD),
and replay skips, per (table, day), the seqs of files that exist; a file still
complete in the S3 spool counts too (it is uploaded at start) and holds back the
deletion of its segments until it is. Published files are marked in the manifest
(not fsynced: a lost mark only costs a lookup). Files that do not exist have
their spool leftovers removed and their rows are replayed.

Deleting segments: only once every record in the segment is in durable Parquet
(renamed locally, upload complete on S3; `mark_durable` from the sink), and only
after a snapshot of both windows as of a seq at or past the segment's last
record is on disk, because the windows are rebuilt from the snapshot plus the
records after it. Snapshots are written at most every `snapshot_interval_s`
(sooner when the log is over half its budget) and at a clean stop.

Recovery at start (never a refusal, never a manual step):
  - a record that is cut short or fails its checksum at the end of the log is a
    torn tail: the segment is truncated at the last good record (warning log);
  - a bad record followed by good ones is corruption: it is skipped and the
    seqs lost are logged as an error; good records after it are kept;
  - records are indexed; those after the snapshot rebuild the windows
    (`Windows.restore`); the feed replays every record not yet in Bronze.

The disk budget: `check_budget()` raises SinkUnavailable (with a retry delay)
while the segments hold `max_bytes` or more, e.g. while S3 is down and nothing
can be deleted. The pipeline calls it before Kafka, so a refused batch was not
published. Batches already past the check still commit, so the log can exceed
the budget by the batches in flight.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import fcntl
import json
import logging
import os
import queue
import random
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from keystone_ingest.core import BatchResult, Core
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.errors import IngestError, ShuttingDown, SinkFailed, SinkUnavailable
from keystone_ingest.server.idempotency import BatchIdWindow
from keystone_ingest.server.sinks.bronze import DESTINATIONS, SCHEMAS, BronzeRows, BronzeSink, FileIntent
from keystone_ingest.server.sinks.storage import ObjectStore

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30

SEGMENT_MAGIC = b"KSWALSG1"
_SEGMENT_HEADER = struct.Struct("<8sQ")  # magic, first seq
RECORD_MAGIC = b"KWAL"
_RECORD_HEADER = struct.Struct("<4sIIHHQ")  # magic, payload length, crc32, kind, flags, seq
_CRC_FIELDS = struct.Struct("<IHHQ")  # what the crc covers of the header: length, kind, flags, seq
KIND_BATCH = 1
MAX_PAYLOAD_BYTES = (1 << 32) - 1

SNAPSHOT_MAGIC = b"KSWALSN1"
_SNAPSHOT_HEADER = struct.Struct("<8sIQQQ")  # magic, version, seq, dedup bytes, batch_id bytes
_SNAPSHOT_VERSION = 1

_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
_DAY_COLUMN = "__day"
_KEY_DTYPE = np.dtype([("lo", "<u8"), ("hi", "<u8")])
_ENTRY_DTYPE = np.dtype([("lo", "<u8"), ("hi", "<u8"), ("ms", "<i8")])
_COMPRESSIONS = {"none": None, "lz4": "lz4", "zstd": "zstd"}


@dataclass(frozen=True)
class WalConfig:
    dir: str = "./data/wal"
    max_bytes: int = 4 * GiB
    """Disk budget: while the segments hold this much, new batches are refused (retriable)."""
    segment_bytes: int = 64 * MiB
    """A segment is closed and a new one started past this size."""
    commit_delay_ms: float = 0.0
    """How long the writer waits for more appends before an fsync when it has
    few. 0: appends arriving during an fsync share the next one, no timer."""
    compression: str = "none"
    """Arrow IPC buffer compression of the rows: none, lz4 or zstd (CPU for disk)."""
    feed_memory_bytes: int = 64 * MiB
    """Rows of committed records kept in memory for the Bronze feed; beyond
    this the feed reads them back from the log."""
    snapshot_interval_s: float = 10.0
    """Least time between two snapshots (and so between two rounds of segment deletion)."""
    retry_after_s: float = 2.0
    """The retry delay given to clients while the disk budget is used up."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "segment_bytes", "feed_memory_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"WalConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.commit_delay_ms < 0 or self.snapshot_interval_s < 0 or self.retry_after_s < 0:
            raise ValueError("WalConfig delays must not be negative")
        if self.compression not in _COMPRESSIONS:
            raise ValueError(f"WalConfig.compression must be one of {sorted(_COMPRESSIONS)}, got {self.compression!r}")


# --------------------------------------------------------------------------
# Records


@dataclass(eq=False)
class WalRecord:
    """One committed batch: its ack counts, its dedup keys (16 bytes each,
    inserted at `dedup_ms`) and its Bronze rows (None when only the metadata
    was decoded)."""

    batch_id: str
    accepted: int
    duplicates: int
    rejected: int
    received_ns: int
    dedup_ms: int
    dedup_keys: bytes
    rows: BronzeRows | None
    seq: int = 0

    @classmethod
    def of(cls, batch: Batch, rows: BronzeRows, dedup_ms: int) -> WalRecord:
        r = batch.result
        return cls(r.batch_id, r.accepted, r.duplicates, r.rejected, batch.received_ns, dedup_ms, r.dedup_keys, rows)


def encode_record(seq: int, record: WalRecord, compression: str = "none") -> list[Any]:
    """The record as buffers to write back to back (header first)."""
    assert record.rows is not None
    options = pa.ipc.IpcWriteOptions(compression=_COMPRESSIONS[compression])
    sink = pa.BufferOutputStream()
    tables = []
    for dest in DESTINATIONS:
        rows = record.rows.tables.get(dest)
        if rows is None or not rows.num_rows:
            continue
        start = sink.tell()
        with_day = rows.append_column(_DAY_COLUMN, pa.array(record.rows.days[dest], pa.int32()))
        with pa.ipc.new_stream(sink, with_day.schema, options=options) as writer:
            writer.write_batch(with_day)
        tables.append([dest, rows.num_rows, sink.tell() - start])
    ipc = sink.getvalue()
    meta = json.dumps(
        {
            "batch_id": record.batch_id,
            "accepted": record.accepted,
            "duplicates": record.duplicates,
            "rejected": record.rejected,
            "received_ns": record.received_ns,
            "dedup_ms": record.dedup_ms,
            "keys": len(record.dedup_keys) // _KEY_DTYPE.itemsize,
            "tables": tables,
        },
        separators=(",", ":"),
    ).encode()
    pieces = [struct.pack("<I", len(meta)), meta, record.dedup_keys, ipc]
    length = sum(len(p) if isinstance(p, bytes) else p.size for p in pieces)
    if length > MAX_PAYLOAD_BYTES:
        raise SinkFailed(f"wal: batch {record.batch_id!r} makes a record of {length} bytes, over 4 GiB")
    crc = zlib.crc32(_CRC_FIELDS.pack(length, KIND_BATCH, 0, seq))
    for p in pieces:
        crc = zlib.crc32(p, crc)
    return [_RECORD_HEADER.pack(RECORD_MAGIC, length, crc, KIND_BATCH, 0, seq), *pieces]


def decode_record(seq: int, payload: Any, *, with_rows: bool = True) -> WalRecord:
    """A record from its payload (bytes-like; the rows share its memory)."""
    view = memoryview(payload)
    (meta_len,) = struct.unpack_from("<I", view, 0)
    meta = json.loads(bytes(view[4 : 4 + meta_len]))
    keys_end = 4 + meta_len + meta["keys"] * _KEY_DTYPE.itemsize
    keys = bytes(view[4 + meta_len : keys_end])
    rows = None
    if with_rows:
        buffer = pa.py_buffer(payload)
        tables: dict[str, pa.RecordBatch] = {}
        days: dict[str, np.ndarray] = {}
        offset = keys_end
        for dest, num_rows, ipc_len in meta["tables"]:
            batch = pa.ipc.open_stream(buffer.slice(offset, ipc_len)).read_next_batch()
            offset += ipc_len
            if batch.num_rows != num_rows or batch.schema.names[-1] != _DAY_COLUMN:
                raise ValueError(f"record {seq}: {dest} holds {batch.num_rows} rows, metadata says {num_rows}")
            days[dest] = batch.column(batch.num_columns - 1).to_numpy().astype(np.int32, copy=False)
            tables[dest] = _as_current_schema(seq, dest, batch)
        rows = BronzeRows(tables, days, seq)
    return WalRecord(meta["batch_id"], meta["accepted"], meta["duplicates"], meta["rejected"], meta["received_ns"],
                     meta["dedup_ms"], keys, rows, seq)  # fmt: skip


def _as_current_schema(seq: int, dest: str, batch: pa.RecordBatch) -> pa.RecordBatch:
    """A logged table (its day column dropped) in today's Bronze schema. A log
    written by an older server lacks the columns added since (all nullable,
    e.g. `producer`): they come back as nulls, so an upgrade over a non-empty
    log loses no acked row. A column the schema no longer has is an error."""
    schema = SCHEMAS[dest]
    logged = {name: batch.column(i) for i, name in enumerate(batch.schema.names[:-1])}
    unknown = set(logged) - set(schema.names)
    if unknown:
        raise ValueError(f"record {seq}: {dest} has columns Bronze does not know: {sorted(unknown)}")
    columns = [logged[f.name] if f.name in logged else pa.nulls(batch.num_rows, f.type) for f in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _parse_record(data: Any, pos: int) -> tuple[str, int, int]:
    """("ok", seq, payload length), ("torn", 0, 0) when the record runs past the
    end of `data`, or ("bad", 0, 0) when its magic or checksum is wrong."""
    end = len(data)
    if pos + _RECORD_HEADER.size > end:
        return "torn", 0, 0
    magic, length, crc, kind, flags, seq = _RECORD_HEADER.unpack_from(data, pos)
    if magic != RECORD_MAGIC:
        return "bad", 0, 0
    start = pos + _RECORD_HEADER.size
    if start + length > end:
        return "torn", 0, 0
    if zlib.crc32(memoryview(data)[start : start + length], zlib.crc32(_CRC_FIELDS.pack(length, kind, flags, seq))) != crc:
        return "bad", 0, 0
    return "ok", seq, length


@dataclass
class SegmentScan:
    """What is in a segment's bytes: the good records, where the good part ends,
    and the corrupt regions skipped inside it."""

    records: list[tuple[int, int, int]]  # (seq, offset of the header, payload length)
    good_end: int
    tail: str | None  # None, "torn" (cut short) or "corrupt" (bad bytes) past good_end
    corrupt: list[tuple[int, int]] = field(default_factory=list)  # [start, end) byte ranges skipped


def scan_segment(data: Any) -> SegmentScan:
    """Walk a segment's bytes record by record. A bad record followed by a good
    one (found by searching for the next magic whose record checks out) is a
    corrupt region; a bad record with nothing good after it is the tail."""
    records: list[tuple[int, int, int]] = []
    corrupt: list[tuple[int, int]] = []
    pos = _SEGMENT_HEADER.size
    end = len(data)
    raw = bytes(data) if not isinstance(data, bytes) else data
    while pos < end:
        status, seq, length = _parse_record(raw, pos)
        if status == "ok":
            records.append((seq, pos, length))
            pos += _RECORD_HEADER.size + length
            continue
        resync = _next_good_record(raw, pos + 1)
        if resync is None:
            return SegmentScan(records, pos, "torn" if status == "torn" else "corrupt", corrupt)
        corrupt.append((pos, resync))
        pos = resync
    return SegmentScan(records, pos, None, corrupt)


def _next_good_record(data: bytes, pos: int) -> int | None:
    while True:
        pos = data.find(RECORD_MAGIC, pos)
        if pos < 0:
            return None
        if _parse_record(data, pos)[0] == "ok":
            return pos
        pos += 1


# --------------------------------------------------------------------------
# The windows: what must survive a restart besides the rows


@dataclass
class WindowState:
    """Both windows as of WAL seq `seq`: every batch committed at or before it, no other."""

    seq: int
    dedup: list[bytes | memoryview]  # Core.dedup_snapshot() entries, 24 bytes each, in pieces (oldest first)
    batch_ids: list[tuple[str, float, tuple[int, int, int]]]


class Windows:
    """The dedup window (in the core) and the batch_id window, exported consistently with the log.

    The core's window also holds keys of batches still in flight (processed,
    not committed) and a snapshot must not: a batch that later fails is resent,
    or given up, and its orders must not be taken for duplicates after a
    restart. So the pipeline `track`s every `core.process` future from the
    moment it is submitted until its batch commits (`untrack` in `on_commit`,
    which runs in the same event-loop callback that advances
    `wal.committed_seq`) or fails. An export reads `committed_seq`, the tracked
    set and both windows in one synchronous step on the event loop (no new
    process call can be submitted meanwhile), then waits for the tracked calls
    to return and removes their keys.
    """

    def __init__(self, core: Core, batch_ids: BatchIdWindow) -> None:
        self.core = core
        self.batch_ids = batch_ids
        self._in_flight: set[asyncio.Future[BatchResult]] = set()

    def track(self, future: asyncio.Future[BatchResult]) -> None:
        self._in_flight.add(future)

    def untrack(self, future: asyncio.Future[BatchResult]) -> None:
        self._in_flight.discard(future)

    async def export(self, committed_seq: int) -> WindowState:
        pending = list(self._in_flight)
        dedup = self.core.dedup_snapshot()
        batch_ids = [(b, t, tuple(c)) for b, t, c in self.batch_ids.export()]
        if pending:
            results = await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)
            exclude = b"".join(r.dedup_keys for r in results if isinstance(r, BatchResult))
            return WindowState(committed_seq, _without_keys(dedup, exclude), batch_ids)  # type: ignore[arg-type]
        return WindowState(committed_seq, [dedup], batch_ids)  # type: ignore[arg-type]

    def restore(self, recovery: Recovery) -> None:
        """Snapshot first, then the records after it, in seq order."""
        snap = recovery.snapshot
        if snap is not None:
            for piece in snap.dedup:
                self.core.dedup_restore(piece)
            self.batch_ids.restore(snap.batch_ids)
        entries = [_entries(r.dedup_keys, r.dedup_ms) for r in recovery.records]
        if entries:
            self.core.dedup_restore(b"".join(entries))
        self.batch_ids.restore(
            (r.batch_id, r.received_ns / 1e9, (r.accepted, r.duplicates, r.rejected)) for r in recovery.records
        )


def _entries(keys: bytes, ms: int) -> bytes:
    k = np.frombuffer(keys, dtype=_KEY_DTYPE)
    out = np.empty(len(k), dtype=_ENTRY_DTYPE)
    out["lo"], out["hi"], out["ms"] = k["lo"], k["hi"], ms
    return out.tobytes()


def _without_keys(entries: bytes, keys: bytes) -> list[bytes | memoryview]:
    """`entries` without those whose key is in `keys`, as pieces of `entries`
    (views, not copies). `entries` is the whole window (1,000,000 entries: 24
    MB) and `keys` those of the batches in flight (thousands), so it looks the
    entries up in the keys, sorted, a slice at a time: np.isin over the whole
    window, then a filtered copy, held five times its size at each snapshot."""
    if not keys or not entries:
        return [entries]
    e = np.frombuffer(entries, dtype=_ENTRY_DTYPE)
    k = np.frombuffer(keys, dtype=_KEY_DTYPE)
    lows = np.sort(k["lo"])
    excluded = set(zip(k["lo"].tolist(), k["hi"].tolist(), strict=True))
    drop: list[int] = []
    for start in range(0, len(e), _SLICE_ENTRIES):
        lo = e["lo"][start : start + _SLICE_ENTRIES]
        at = np.searchsorted(lows, lo)
        np.minimum(at, len(lows) - 1, out=at)
        for i in np.flatnonzero(lows[at] == lo).tolist():
            if (int(lo[i]), int(e["hi"][start + i])) in excluded:
                drop.append(start + i)
    view, size = memoryview(entries), _ENTRY_DTYPE.itemsize
    pieces, start = [], 0
    for i in drop:
        if i > start:
            pieces.append(view[start * size : i * size])
        start = i + 1
    if start < len(e):
        pieces.append(view[start * size :])
    return pieces if drop else [entries]


_SLICE_ENTRIES = 1 << 16


def write_snapshot(directory: str, state: WindowState) -> int:
    """Atomically: tmp file, fsync, rename, fsync the directory. Returns its size."""
    ids = json.dumps(state.batch_ids, separators=(",", ":")).encode()
    dedup_len = sum(len(piece) for piece in state.dedup)
    header = _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, _SNAPSHOT_VERSION, state.seq, dedup_len, len(ids))
    crc = zlib.crc32(header)
    for piece in state.dedup:
        crc = zlib.crc32(piece, crc)
    crc = zlib.crc32(ids, crc)
    path = os.path.join(directory, "snapshot")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        for piece in state.dedup:
            f.write(piece)
        f.write(ids)
        f.write(struct.pack("<I", crc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)
    return len(header) + dedup_len + len(ids) + 4


def read_snapshot(directory: str) -> WindowState | None:
    """The snapshot, or None if there is none or it is unreadable (logged)."""
    path = os.path.join(directory, "snapshot")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        magic, version, seq, dedup_len, ids_len = _SNAPSHOT_HEADER.unpack_from(data, 0)
        body_end = _SNAPSHOT_HEADER.size + dedup_len + ids_len
        if magic != SNAPSHOT_MAGIC or version != _SNAPSHOT_VERSION or len(data) != body_end + 4:
            raise ValueError("bad header or length")
        (crc,) = struct.unpack_from("<I", data, body_end)
        if zlib.crc32(memoryview(data)[:body_end]) != crc:
            raise ValueError("checksum mismatch")
        dedup = data[_SNAPSHOT_HEADER.size : _SNAPSHOT_HEADER.size + dedup_len]
        ids = json.loads(data[_SNAPSHOT_HEADER.size + dedup_len : body_end])
        return WindowState(seq, [dedup], [(b, t, tuple(c)) for b, t, c in ids])
    except (ValueError, struct.error) as exc:
        log.error(
            "wal: the snapshot is unreadable and is ignored; the windows are rebuilt from the log's records only, "
            "so batches and orders of deleted segments are not remembered",
            extra={"path": path, "error": str(exc)},
        )
        return None


# --------------------------------------------------------------------------
# The manifest: Bronze files written from the log


@dataclass
class Resolution:
    """What a crash left in Bronze, from the manifest's unconfirmed files."""

    ranges: dict[tuple[str, int], list[tuple[int, int]]]  # (dest, day) -> seq ranges already in Bronze
    awaiting: dict[str, int]  # spooled files the sink will upload at start -> their first seq
    checked: int = 0
    replayed_files: int = 0
    max_seq: int = 0  # no file holds a seq past this one

    def covered_days(self, dest: str, seq: int, days: Iterable[int]) -> list[int]:
        found = []
        for day in days:
            for a, b in self.ranges.get((dest, day), ()):
                if a <= seq <= b:
                    found.append(day)
                    break
        return found


class Manifest:
    """`bronze-files.log`: one line per event, `<crc32 hex> <json>`, about Bronze files:
    opened (`o`, a hint), intended (`i`, fsynced before the file is published),
    published (`p`, a hint) and gone (`g`: checked after a crash and not there).
    Implements bronze.PublishLog. Thread-safe: the sink's writer and committer
    threads write here; the log trims it when segments are deleted."""

    NAME = "bronze-files.log"

    def __init__(self, directory: str, on_published: Callable[[str], None] = lambda key: None) -> None:
        self.path = os.path.join(directory, self.NAME)
        self._dir = directory
        self._lock = threading.Lock()
        self._intents: dict[str, tuple[str, int, int, int]] = {}  # key -> (dest, day, first seq, last seq)
        self._published: set[str] = set()
        self._open: set[str] = set()  # opened, not yet intended
        self._unconfirmed: list[str] = []  # left by an earlier run: intended or opened, never published
        self._on_published = on_published
        self._fd = -1
        self.max_seq = 0

    def load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):
            # A line torn by a crash: cut it, or the next line appended would
            # be glued to it and lost with it.
            data = data[: data.rfind(b"\n") + 1]
            os.truncate(self.path, len(data))
        lines = data.split(b"\n")
        skipped = 0
        for line in lines:
            if not line:
                continue
            try:
                crc, text = line.split(b" ", 1)
                if int(crc, 16) != zlib.crc32(text):
                    raise ValueError
                entry = json.loads(text)
            except ValueError:
                skipped += 1  # a torn last line (its file was never published), or damage
                continue
            self._apply(entry)
        if skipped:
            log.warning("wal: skipped unreadable manifest lines", extra={"path": self.path, "lines": skipped})
        self._unconfirmed = [k for k in self._intents if k not in self._published] + sorted(self._open)
        self.max_seq = max((v[3] for v in self._intents.values()), default=0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _apply(self, entry: dict) -> None:
        if "i" in entry:
            self._intents[entry["i"]] = (entry["d"], entry["y"], entry["a"], entry["b"])
            self._open.discard(entry["i"])
        elif "o" in entry:
            self._open.add(entry["o"])
        elif "p" in entry:
            if entry["p"] in self._intents:
                self._published.add(entry["p"])
        elif "g" in entry:
            self._intents.pop(entry["g"], None)
            self._open.discard(entry["g"])

    @staticmethod
    def _lines(entries: list[dict]) -> bytes:
        return b"".join(
            b"%08x %s\n" % (zlib.crc32(text), text)
            for text in (json.dumps(e, separators=(",", ":")).encode() for e in entries)
        )

    def _write(self, entries: list[dict], *, sync: bool) -> None:
        _write_all(self._fd, [self._lines(entries)])
        if sync:
            os.fdatasync(self._fd)

    # -- bronze.PublishLog

    def opened(self, key: str) -> None:
        with self._lock:
            self._open.add(key)
            try:
                self._write([{"o": key}], sync=False)
            except OSError as exc:  # a hint only
                log.warning("wal: could not note a Bronze file in the manifest", extra={"error": str(exc)})

    def intend(self, files: list[FileIntent]) -> None:
        if not files:
            return
        entries = [{"i": f.key, "d": f.dest, "y": f.day, "a": int(f.first_token), "b": int(f.last_token)}
                   for f in files]  # fmt: skip
        with self._lock:
            self._write(entries, sync=True)
            for f in files:
                self._intents[f.key] = (f.dest, f.day, int(f.first_token), int(f.last_token))
                self._open.discard(f.key)

    def published(self, key: str) -> None:
        with self._lock:
            if key in self._intents:
                self._published.add(key)
                try:
                    self._write([{"p": key}], sync=False)
                except OSError as exc:  # a hint only: the next start looks the file up instead
                    log.warning("wal: could not mark a Bronze file published", extra={"error": str(exc)})
        self._on_published(key)

    # -- after a crash

    def resolve(self, store: ObjectStore, pool_size: int = 16) -> Resolution:
        """Check each file an earlier run left unconfirmed; the store's errors
        propagate (classified) and the caller retries."""
        with self._lock:
            unconfirmed = list(self._unconfirmed)
            intents = dict(self._intents)
            published = set(self._published)

        def check(key: str) -> tuple[str, str]:
            if key not in intents:
                return key, "gone"  # opened, never intended: never published
            if store.spooled(key):
                return key, "spooled"
            return key, "exists" if store.exists(key) else "gone"

        with concurrent.futures.ThreadPoolExecutor(pool_size, thread_name_prefix="wal-check") as pool:
            outcomes = dict(pool.map(check, unconfirmed))
        awaiting: dict[str, int] = {}
        gone = []
        for key, outcome in outcomes.items():
            if outcome == "gone":
                store.discard_key(key)
                gone.append(key)
            elif outcome == "spooled":
                awaiting[key] = intents[key][2]
        ranges: dict[tuple[str, int], list[tuple[int, int]]] = collections.defaultdict(list)
        for key, (dest, day, a, b) in intents.items():
            if key in published or outcomes.get(key) in ("exists", "spooled"):
                ranges[(dest, day)].append((a, b))
        with self._lock:
            entries: list[dict] = []
            for key in gone:
                self._intents.pop(key, None)
                self._open.discard(key)
                entries.append({"g": key})
            for key, outcome in outcomes.items():
                if outcome == "exists" and key in self._intents:
                    self._published.add(key)
                    entries.append({"p": key})
            self._unconfirmed = []
            if entries:
                self._write(entries, sync=True)
        replayed = sum(1 for k in gone if k in intents)
        max_seq = max((b for spans in ranges.values() for _, b in spans), default=0)
        return Resolution(dict(ranges), awaiting, len(unconfirmed), replayed, max_seq)

    def trim(self, first_live_seq: int) -> None:
        """Rewrite without the files whose rows are all in deleted segments."""
        with self._lock:
            self._intents = {k: v for k, v in self._intents.items() if v[3] >= first_live_seq}
            self._published &= self._intents.keys()
            entries: list[dict] = [{"o": k} for k in sorted(self._open)]
            for key, (dest, day, a, b) in self._intents.items():
                entries.append({"i": key, "d": dest, "y": day, "a": a, "b": b})
                if key in self._published:
                    entries.append({"p": key})
            tmp = self.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, [self._lines(entries)])
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self._dir)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


# --------------------------------------------------------------------------
# The log


@dataclass
class Recovery:
    snapshot: WindowState | None
    records: list[WalRecord]  # after the snapshot, in seq order, without rows
    segments: int = 0
    records_total: int = 0
    truncated_bytes: int = 0
    corrupt_regions: int = 0


class _Segment:
    __slots__ = ("path", "first_seq", "last_seq", "size", "records")

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.size = size
        self.records = 0


@dataclass(eq=False)
class _Append:
    record: WalRecord
    future: asyncio.Future[int]
    on_commit: Callable[[int], None] | None


_STOP = object()


class WriteAheadLog:
    """See the module docstring. Public methods run on the event loop."""

    def __init__(self, config: WalConfig, metrics: Any = None) -> None:
        self.config = config
        self.dir = os.path.abspath(config.dir)
        self._metrics = metrics
        self.manifest = Manifest(self.dir, on_published=self._published_from_thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd = -1
        self._segments: list[_Segment] = []  # oldest first; the last one is written to
        self._segments_lock = threading.Lock()
        self._index: dict[int, tuple[_Segment, int, int]] = {}  # seq -> (segment, offset, payload length)
        self._next_seq = 1  # writer thread only, once open
        self.committed_seq = 0
        """The highest seq committed (fsynced), or recovered at start."""
        self._backlog: collections.deque[int] = collections.deque()  # committed, not yet in durable Parquet
        self._durable: set[int] = set()  # durable, out of order, still behind the backlog's head
        self._awaiting: dict[str, int] = {}  # spooled files from a crash -> first seq they hold
        self._memory: dict[int, BronzeRows] = {}
        self._memory_bytes = 0
        self._feed: collections.deque[int] = collections.deque()  # seqs for the Bronze feed, in order
        self._feed_event = asyncio.Event()
        self._snapshot_seq = 0
        self._last_snapshot = 0.0
        self._windows: Windows | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._fatal: IngestError | None = None
        self._maintenance: asyncio.Task | None = None
        self._maintenance_wake = asyncio.Event()
        self._closed = False
        self.fsyncs = 0
        self.records_appended = 0

    # -- lifecycle

    async def open(self) -> Recovery:
        self._loop = asyncio.get_running_loop()
        recovery = await asyncio.to_thread(self._recover)
        self._start_segment()
        self._thread = threading.Thread(target=self._run_writer, name="wal-writer", daemon=True)
        self._thread.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="wal-maintenance")
        self._maintenance.add_done_callback(_log_crash("wal: maintenance task"))
        self._update_gauges()
        return recovery

    @property
    def windows(self) -> Windows:
        assert self._windows is not None, "WriteAheadLog.attach() was not called"
        return self._windows

    def attach(self, windows: Windows) -> None:
        """The windows to snapshot; needed before segments can be deleted."""
        self._windows = windows
        self._maintenance_wake.set()

    async def close(self, *, timeout_s: float = 30.0) -> None:
        """Stop taking appends, snapshot the windows and delete every segment
        whose rows are all in Bronze. What is not stays for the next start."""
        if self._closed or self._loop is None:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join, timeout_s)
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except (asyncio.CancelledError, Exception):
                pass
        if self._fatal is None and self._windows is not None:
            try:
                await asyncio.wait_for(self._snapshot_and_delete(final=True), timeout_s)
            except Exception as exc:
                log.error("wal: final snapshot failed; the next start replays more of the log",
                          extra={"error": repr(exc)})  # fmt: skip
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.manifest.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
        log.info("wal: closed", extra={"segments": len(self._segments), "bytes": self.bytes,
                                       "backlog": len(self._backlog)})  # fmt: skip

    # -- state

    @property
    def bytes(self) -> int:
        with self._segments_lock:
            return sum(s.size for s in self._segments)

    @property
    def backlog(self) -> int:
        """Committed records not yet entirely in durable Parquet."""
        return len(self._backlog)

    @property
    def error(self) -> IngestError | None:
        """A failure that stops the log for good (an fsync failed); None while healthy."""
        return self._fatal

    @property
    def over_budget(self) -> bool:
        return self.bytes >= self.config.max_bytes

    def check_budget(self) -> None:
        """Raise if a batch cannot be committed now: the log failed, or it holds
        its disk budget (Bronze is behind, e.g. S3 is down)."""
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ShuttingDown("wal: closing")
        held = self.bytes
        if held >= self.config.max_bytes:
            if self._metrics is not None:
                self._metrics.wal_refused_total.inc()
            raise SinkUnavailable(
                f"the write-ahead log holds {held} bytes, its --wal-max-bytes budget: Bronze is behind "
                f"({len(self._backlog)} batches not yet in Parquet); resend later",
                retry_after_s=self.config.retry_after_s,
            )

    # -- appending

    async def append(self, record: WalRecord, on_commit: Callable[[int], None] | None = None) -> int:
        """Commit `record`: returns its seq once it is fsynced. `on_commit(seq)`
        runs on the event loop in the same callback that advances
        `committed_seq`, before this returns (and even if the caller is
        cancelled meanwhile). Raises a classified IngestError if it could not be
        written; the record is then not in the log."""
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ShuttingDown("wal: closing")
        assert self._loop is not None, "WriteAheadLog.open() was not called"
        future: asyncio.Future[int] = self._loop.create_future()
        self._queue.put(_Append(record, future, on_commit))
        return await asyncio.shield(future)

    def _run_writer(self) -> None:
        try:
            while True:
                # Wakes for: an append (or the stop sentinel). Everything queued
                # by then is written and shares one fsync: the group commit.
                first = self._queue.get()
                group = [first]
                if self.config.commit_delay_ms > 0 and first is not _STOP:
                    deadline = time.monotonic() + self.config.commit_delay_ms / 1000
                    while len(group) < 64 and (left := deadline - time.monotonic()) > 0:
                        try:
                            group.append(self._queue.get(timeout=left))
                        except queue.Empty:
                            break
                        if group[-1] is _STOP:
                            break
                while group[-1] is not _STOP and len(group) < 4096:
                    try:
                        group.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = group[-1] is _STOP
                appends = [a for a in group if a is not _STOP]
                if appends:
                    self._post(self._write_group(appends))
                if stop:
                    return
        except BaseException as exc:  # a bug: fail what waits rather than hang it
            log.exception("wal: writer thread died")
            self._set_fatal(SinkFailed(f"wal: writer stopped after an internal error ({type(exc).__name__}: {exc})"))
            self._drain_failed()

    def _write_group(self, appends: list[_Append]) -> list[tuple[_Append, int, _Segment | None, int, int, IngestError | None]]:
        results: list[tuple[_Append, int, _Segment | None, int, int, IngestError | None]] = []
        if self._fatal is not None:
            return [(a, 0, None, 0, 0, self._fatal) for a in appends]
        written = 0
        for a in appends:
            seq = self._next_seq
            try:
                pieces = encode_record(seq, a.record, self.config.compression)
            except IngestError as err:
                results.append((a, 0, None, 0, 0, err))
                continue
            except Exception as exc:
                results.append((a, 0, None, 0, 0, SinkFailed(f"wal: cannot encode batch {a.record.batch_id!r}: {exc!r}")))
                continue
            size = sum(len(p) if isinstance(p, bytes) else p.size for p in pieces)
            segment = self._segments[-1]
            if segment.records and segment.size + size > self.config.segment_bytes:
                try:
                    self._roll_segment()
                except OSError as exc:
                    # The fsync of the full segment failed, or no new one could be made.
                    err = SinkUnavailable(f"wal: cannot start a new segment ({exc}); the log is stopped, restart the server")
                    self._set_fatal(err)
                    return [(a, 0, None, 0, 0, e or err) for a, _, _, _, _, e in results] + [
                        (b, 0, None, 0, 0, err) for b in appends[len(results):]]  # fmt: skip
                segment = self._segments[-1]
            try:
                offset = segment.size
                _write_all(self._fd, pieces)
            except OSError as exc:
                err = _classify(exc, "appending to the write-ahead log")
                self._cut_back(segment)
                results.append((a, 0, None, 0, 0, err))
                continue
            with self._segments_lock:
                segment.size += size
            segment.records += 1
            self._next_seq += 1
            written += size
            results.append((a, seq, segment, offset, size - _RECORD_HEADER.size, None))
        if written:
            started = time.perf_counter()
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                # After a failed fsync the kernel may have dropped the dirty
                # pages: nothing written since the last good fsync can be
                # trusted, and retrying would lie. Stop the log.
                err = SinkUnavailable(f"wal: fsync failed ({exc}); the log is stopped, restart the server")
                self._set_fatal(err)
                return [(a, 0, None, 0, 0, e or err) for a, _, _, _, _, e in results]
            self._observe_fsync(time.perf_counter() - started)
            self.records_appended += sum(1 for r in results if r[5] is None)
        return results

    def _cut_back(self, segment: _Segment) -> None:
        """A failed write may have left part of a record: cut it off, so the
        next record follows the last good one."""
        try:
            os.ftruncate(self._fd, segment.size)
        except OSError as exc:
            self._set_fatal(SinkUnavailable(f"wal: cannot cut a failed write ({exc}); the log is stopped"))

    def _roll_segment(self) -> None:
        started = time.perf_counter()
        os.fdatasync(self._fd)  # the records already written to it belong to this commit
        self._observe_fsync(time.perf_counter() - started)
        os.close(self._fd)
        self._fd = -1
        self._start_segment()

    def _start_segment(self) -> None:
        path = os.path.join(self.dir, f"{self._next_seq:020d}.wal")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, [_SEGMENT_HEADER.pack(SEGMENT_MAGIC, self._next_seq)])
            os.fdatasync(fd)
            _fsync_dir(self.dir)  # the new name must survive a power cut with its records
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        with self._segments_lock:
            self._segments.append(_Segment(path, _SEGMENT_HEADER.size))

    def _observe_fsync(self, seconds: float) -> None:
        self.fsyncs += 1
        if self._metrics is not None:
            self._metrics.wal_fsync_seconds.observe(seconds)

    def _post(self, results: list) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._committed, results)

    def _committed(self, results: list) -> None:
        """On the event loop: the outcome of one group commit, in seq order."""
        appended_bytes = 0
        for a, seq, segment, offset, length, err in results:
            if err is not None:
                if not a.future.done():
                    a.future.set_exception(err)
                continue
            self._index[seq] = (segment, offset, length)
            if segment.first_seq is None:
                segment.first_seq = seq
            segment.last_seq = seq
            self.committed_seq = seq
            self._backlog.append(seq)
            self._feed.append(seq)
            rows = a.record.rows
            if rows is not None and self._memory_bytes + rows.nbytes <= self.config.feed_memory_bytes:
                self._memory[seq] = rows
                self._memory_bytes += rows.nbytes
            appended_bytes += _RECORD_HEADER.size + length
            if a.on_commit is not None:
                try:
                    a.on_commit(seq)
                except Exception:
                    log.exception("wal: on_commit callback failed")
            if not a.future.done():
                a.future.set_result(seq)
        self._feed_event.set()
        m = self._metrics
        if m is not None:
            m.wal_records_total.inc(sum(1 for r in results if r[5] is None))
            m.wal_appended_bytes_total.inc(appended_bytes)
            self._update_gauges()

    def _set_fatal(self, err: IngestError) -> None:
        if self._fatal is None:
            self._fatal = err
            log.critical("wal: the write-ahead log stopped; no batch can be acked until the server restarts",
                         extra={"error": err.message})  # fmt: skip

    def _drain_failed(self) -> None:
        err = self._fatal
        failed = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                failed.append((item, 0, None, 0, 0, err))
        if failed:
            self._post(failed)

    # -- the Bronze side

    def mark_durable(self, tokens: list[Hashable]) -> None:
        """Bronze's `on_durable`: these seqs' rows are all in published files."""
        self._durable.update(t for t in tokens if isinstance(t, int))
        backlog, durable = self._backlog, self._durable
        while backlog and backlog[0] in durable:
            durable.discard(backlog.popleft())
        if self._metrics is not None:
            self._metrics.wal_backlog_records.set(len(backlog))
        if self._deletable():
            self._maintenance_wake.set()

    def take_rows(self, seq: int) -> BronzeRows | None:
        """The rows of `seq` if still in memory (each seq at most once)."""
        rows = self._memory.pop(seq, None)
        if rows is not None:
            self._memory_bytes -= rows.nbytes
        return rows

    def relieve_memory(self) -> None:
        """Memory pressure (the server's memory limit reached): let go of the
        rows kept for the Bronze feed. They are views that keep each batch's
        whole core result alive; the feed reads them back from the log instead,
        compact, as it does after falling behind."""
        self._memory.clear()
        self._memory_bytes = 0

    def read_record(self, seq: int) -> WalRecord:
        """Read a record back from its segment, checksum verified. Blocking: call in a thread."""
        segment, offset, length = self._index[seq]
        with open(segment.path, "rb") as f:
            f.seek(offset)
            data = f.read(_RECORD_HEADER.size + length)
        status, found, _ = _parse_record(data, 0)
        if status != "ok" or found != seq:
            raise SinkFailed(f"wal: record {seq} in {segment.path} at byte {offset} is damaged ({status})")
        return decode_record(seq, memoryview(data)[_RECORD_HEADER.size :])

    def next_for_feed(self) -> int | None:
        return self._feed.popleft() if self._feed else None

    async def wait_for_records(self) -> None:
        while not self._feed:
            self._feed_event.clear()
            await self._feed_event.wait()

    def set_awaiting(self, awaiting: dict[str, int]) -> None:
        """Spooled files from a crash that the sink uploads at start: their
        records' segments stay until they are published."""
        self._awaiting.update(awaiting)

    def _published_from_thread(self, key: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._file_published, key)

    def _file_published(self, key: str) -> None:
        if self._awaiting.pop(key, None) is not None and self._deletable():
            self._maintenance_wake.set()

    # -- deleting segments

    def _durable_upto(self) -> int:
        """Every record at or before this seq is in durable Parquet."""
        limit = self._backlog[0] - 1 if self._backlog else self.committed_seq
        if self._awaiting:
            limit = min(limit, min(self._awaiting.values()) - 1)
        return limit

    def _deletable(self, *, final: bool = False, upto: int | None = None) -> list[_Segment]:
        limit = self._durable_upto() if upto is None else min(upto, self._durable_upto())
        with self._segments_lock:
            segments = self._segments if final else self._segments[:-1]
            return [s for s in segments if s.last_seq is None or s.last_seq <= limit]

    async def _maintain(self) -> None:
        while True:
            # Wakes when: segments may have become deletable (mark_durable, a
            # spooled file published, the windows attached).
            await self._maintenance_wake.wait()
            self._maintenance_wake.clear()
            if self._windows is None or not self._deletable():
                continue
            wait_s = self._last_snapshot + self.config.snapshot_interval_s - time.monotonic()
            if wait_s > 0 and self.bytes < self.config.max_bytes // 2:
                await asyncio.sleep(wait_s)
            try:
                await self._snapshot_and_delete()
            except Exception as exc:
                log.error("wal: snapshot or segment deletion failed; will retry", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                self._maintenance_wake.set()

    async def _snapshot_and_delete(self, *, final: bool = False) -> None:
        assert self._windows is not None
        state = await self._windows.export(self.committed_seq)
        size = await asyncio.to_thread(write_snapshot, self.dir, state)
        self._snapshot_seq = state.seq
        self._last_snapshot = time.monotonic()
        victims = self._deletable(final=final, upto=state.seq)
        if victims:
            await asyncio.to_thread(self._delete, victims)
            with self._segments_lock:
                self._segments = [s for s in self._segments if s not in victims]
                remaining = [s.first_seq for s in self._segments if s.first_seq is not None]
            for s in victims:
                if s.first_seq is not None:
                    for seq in range(s.first_seq, s.last_seq + 1):  # type: ignore[operator]
                        self._index.pop(seq, None)
            first_live = min(remaining, default=self.committed_seq + 1)
            await asyncio.to_thread(self.manifest.trim, first_live)
        log.debug("wal: snapshot written", extra={"seq": state.seq, "bytes": size, "deleted_segments": len(victims)})
        self._update_gauges()

    def _delete(self, victims: list[_Segment]) -> None:
        for s in victims:
            try:
                os.unlink(s.path)
            except FileNotFoundError:
                pass
        _fsync_dir(self.dir)

    def _update_gauges(self) -> None:
        m = self._metrics
        if m is not None:
            with self._segments_lock:
                m.wal_bytes.set(sum(s.size for s in self._segments))
                m.wal_segments.set(len(self._segments))
            m.wal_backlog_records.set(len(self._backlog))

    # -- recovery

    def _recover(self) -> Recovery:
        os.makedirs(self.dir, exist_ok=True)
        self._take_lock()
        for name in os.listdir(self.dir):
            if name.endswith(".tmp"):
                _unlink(os.path.join(self.dir, name))  # a snapshot or manifest rewrite cut short
        snapshot = read_snapshot(self.dir)
        snapshot_seq = snapshot.seq if snapshot is not None else 0
        self._snapshot_seq = snapshot_seq
        self.manifest.load()
        names = sorted(n for n in os.listdir(self.dir) if _SEGMENT_NAME.match(n))
        recovery = Recovery(snapshot, [])
        last_seq = 0
        for i, name in enumerate(names):
            path = os.path.join(self.dir, name)
            with open(path, "rb") as f:
                data = f.read()
            scan = scan_segment(data)
            last_segment = i == len(names) - 1
            if len(data) < _SEGMENT_HEADER.size or data[:8] != SEGMENT_MAGIC:
                if scan.records:
                    log.error("wal: a segment's header is damaged; its records are read all the same",
                              extra={"segment": path})  # fmt: skip
            for start, end in scan.corrupt:
                recovery.corrupt_regions += 1
                log.error(
                    "wal: corrupt bytes inside the log skipped; the batches they held are LOST from Bronze",
                    extra={"segment": path, "offset": start, "bytes": end - start},
                )
            if scan.tail is not None:
                cut = len(data) - scan.good_end
                recovery.truncated_bytes += cut
                what = ("a record cut short by the crash (torn write)" if scan.tail == "torn"
                        else "a record that fails its checksum")  # fmt: skip
                level = logging.WARNING if last_segment else logging.ERROR
                log.log(
                    level,
                    f"wal: cut the log at the last good record: {what}",
                    extra={"segment": path, "offset": scan.good_end, "bytes_cut": cut,
                           "records_kept": len(scan.records), "last_segment": last_segment},
                )  # fmt: skip
                if self._metrics is not None and scan.tail == "corrupt":
                    self._metrics.wal_corrupt_records_total.inc()
            if not scan.records:
                _unlink(path)
                continue
            if scan.tail is not None:
                os.truncate(path, scan.good_end)
                _fsync_file(path)
            segment = _Segment(path, scan.good_end)
            for seq, offset, length in scan.records:
                if seq <= last_seq:
                    log.error("wal: a record out of sequence is ignored", extra={"segment": path, "seq": seq})
                    continue
                if last_seq and seq != last_seq + 1:
                    log.error("wal: records missing from the log (corruption); their batches are LOST from Bronze",
                              extra={"first_missing": last_seq + 1, "last_missing": seq - 1})  # fmt: skip
                last_seq = seq
                self._index[seq] = (segment, offset, length)
                self._backlog.append(seq)
                self._feed.append(seq)
                segment.first_seq = seq if segment.first_seq is None else segment.first_seq
                segment.last_seq = seq
                segment.records += 1
                if seq > snapshot_seq:
                    start = offset + _RECORD_HEADER.size
                    # What the windows need: the metadata and dedup keys, not the rows.
                    recovery.records.append(decode_record(seq, memoryview(data)[start : start + length], with_rows=False))
            self._segments.append(segment)
        _fsync_dir(self.dir)
        recovery.segments = len(self._segments)
        recovery.records_total = len(self._index)
        self.committed_seq = max(last_seq, snapshot_seq)
        self._next_seq = max(last_seq, snapshot_seq, self.manifest.max_seq) + 1
        if self._metrics is not None:
            self._metrics.wal_truncated_bytes_total.inc(recovery.truncated_bytes)
        log.info(
            "wal: recovered",
            extra={"dir": self.dir, "segments": recovery.segments, "records": recovery.records_total,
                   "snapshot_seq": snapshot_seq, "records_after_snapshot": len(recovery.records),
                   "truncated_bytes": recovery.truncated_bytes, "corrupt_regions": recovery.corrupt_regions,
                   "next_seq": self._next_seq},
        )  # fmt: skip
        return recovery

    def _take_lock(self) -> None:
        fd = os.open(os.path.join(self.dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise SinkFailed(f"wal: {self.dir} is in use by another running server; give each server its own --wal-dir") from None
            raise
        self._lock_fd = fd


# --------------------------------------------------------------------------
# From the log to Bronze


class BronzeFeed:
    """Hands committed records to the Bronze sink, in seq order, each once.

    After a crash it first resolves the files the last run left unconfirmed
    (retrying while the store cannot answer, e.g. S3 down) and then replays
    every record left in the log, without the rows already in Bronze. From
    then on it follows the log: rows from memory, or read back from disk when
    the feed fell behind. While the sink refuses rows (S3 down, memory full) it
    retries with backoff; the log keeps them meanwhile.
    """

    def __init__(self, wal: WriteAheadLog, bronze: BronzeSink, metrics: Any = None) -> None:
        self._wal = wal
        self._bronze = bronze
        self._metrics = metrics
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self.resolution: Resolution | None = None
        self.replayed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wal-bronze-feed")
        self._task.add_done_callback(_log_crash("wal: Bronze feed"))

    async def stop(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every committed record to be handed to the
        sink, then stop. False if some were not (they stay in the log)."""
        if self._task is None:
            return True
        caught_up = True
        if not self._task.done():
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
            except TimeoutError:
                caught_up = False
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        return caught_up

    async def _run(self) -> None:
        self.resolution = resolution = await self._resolve()
        wal = self._wal
        while True:
            seq = wal.next_for_feed()
            if seq is None:
                self._idle.set()
                await wal.wait_for_records()
                self._idle.clear()
                continue
            rows = wal.take_rows(seq)
            if rows is None:
                try:
                    record = await asyncio.to_thread(wal.read_record, seq)
                except (OSError, IngestError, ValueError) as exc:
                    log.error("wal: a record cannot be read back; its batch is LOST from Bronze",
                              extra={"seq": seq, "error": repr(exc)})  # fmt: skip
                    wal.mark_durable([seq])
                    continue
                rows = record.rows
                self.replayed += 1
                if self._metrics is not None:
                    self._metrics.wal_replayed_records_total.inc()
            assert rows is not None
            if seq <= resolution.max_seq:
                rows = _uncovered(rows, seq, resolution)
            else:
                rows = BronzeRows(rows.tables, rows.days, seq) if rows.token != seq else rows
            if not any(t.num_rows for t in rows.tables.values()):
                wal.mark_durable([seq])
                continue
            await self._hand_off(rows)

    async def _resolve(self) -> Resolution:
        delay_s = 0.2
        while True:
            try:
                res = await asyncio.to_thread(self._wal.manifest.resolve, self._bronze.store)
            except IngestError as exc:
                log.warning("wal: cannot check Bronze for the files of the last run yet; replay waits",
                            extra={"error": exc.message})  # fmt: skip
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
                delay_s = min(10.0, delay_s * 2)
                continue
            break
        self._wal.set_awaiting(res.awaiting)
        if res.checked:
            log.info("wal: resolved the Bronze files of the last run",
                     extra={"checked": res.checked, "replayed_files": res.replayed_files,
                            "awaiting_upload": len(res.awaiting)})  # fmt: skip
        return res

    async def _hand_off(self, rows: BronzeRows) -> None:
        delay_s = 0.1
        failing = False
        while True:
            try:
                await self._bronze.write_rows(rows)
                if failing:
                    log.warning("wal: Bronze takes rows again")
                return
            except ShuttingDown:
                await asyncio.Event().wait()  # the sink is stopping: wait to be cancelled
            except IngestError as exc:
                if not failing:
                    log.warning("wal: Bronze cannot take rows now; the log keeps them and retries",
                                extra={"error": exc.message, "retriable": exc.retriable})  # fmt: skip
                    failing = True
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
                delay_s = min(5.0, delay_s * 2)


def _uncovered(rows: BronzeRows, seq: int, resolution: Resolution) -> BronzeRows:
    """`rows` without those of partitions whose files already hold `seq`."""
    tables: dict[str, pa.RecordBatch] = {}
    days: dict[str, np.ndarray] = {}
    for dest, batch in rows.tables.items():
        d = rows.days[dest]
        covered = resolution.covered_days(dest, seq, np.unique(d).tolist())
        if covered:
            keep = ~np.isin(d, covered)
            if not keep.any():
                continue
            batch, d = batch.filter(pa.array(keep)), d[keep]
        tables[dest], days[dest] = batch, d
    return BronzeRows(tables, days, seq)


# --------------------------------------------------------------------------
# Small helpers


def _write_all(fd: int, pieces: list[Any]) -> None:
    views = [memoryview(p).cast("B") for p in pieces]
    while views:
        n = os.writev(fd, views[:1024])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _classify(exc: OSError, what: str) -> IngestError:
    # Space may be freed; anything else (permissions, a read-only disk) needs an operator.
    transient = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EINTR, errno.EAGAIN)
    return (SinkUnavailable if transient else SinkFailed)(f"wal: {what}: {exc}")


def _log_crash(what: str) -> Callable[[asyncio.Task], None]:
    def done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical(f"{what} died; records stay in the log for the next start", exc_info=task.exception())

    return done
