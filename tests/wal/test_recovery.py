"""Exactly once into Bronze across a crash, with the real log, the real Bronze
sink and real stores (local files, moto S3 over HTTP): the files a crash left
half-way are resolved one by one and only the rows not in Bronze are written."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import zlib

import pyarrow.dataset as ds
import pytest
from s3util import AWS_ENV, start_s3
from walutil import Batches, bronze_table, crash, run, segment_paths

from keystone_ingest.core import Core
from keystone_ingest.server.errors import SinkUnavailable
from keystone_ingest.server.idempotency import BatchIdWindow
from keystone_ingest.server.metrics import Metrics
from keystone_ingest.server.sinks.bronze import QUARANTINE, BronzeConfig, BronzeSink
from keystone_ingest.server.wal import BronzeFeed, Manifest, WalConfig, Windows, WriteAheadLog, scan_segment


class Node:
    """The log, the windows, the Bronze sink and the feed, wired as app.py does."""

    def __init__(self, wal_dir, bronze: BronzeConfig, core: Core | None = None) -> None:
        self.wal = WriteAheadLog(WalConfig(dir=str(wal_dir), snapshot_interval_s=0), Metrics())
        self.bronze_config = bronze
        self.core = core or Core()

    async def start(self) -> Node:
        self.recovery = await self.wal.open()
        Windows(self.core, BatchIdWindow()).restore(self.recovery)
        self.wal.attach(Windows(self.core, BatchIdWindow()))
        self.bronze = BronzeSink(self.bronze_config, on_durable=self.wal.mark_durable, publish_log=self.wal.manifest)
        await self.bronze.start()
        self.feed = BronzeFeed(self.wal, self.bronze)
        self.feed.start()
        return self

    async def idle(self) -> None:
        await asyncio.wait_for(self.feed._idle.wait(), 20)
        await asyncio.sleep(0)


def expected(records) -> dict[str, collections.Counter]:
    """What Bronze must hold: each accepted order, item and rejected order once."""
    out = {"orders": collections.Counter(), "order_items": collections.Counter(), QUARANTINE: collections.Counter()}
    for r in records:
        rows = r.rows.tables
        out["orders"].update(rows["orders"].column("event_id").to_pylist())
        items = rows["order_items"]
        out["order_items"].update(zip(items.column("order_id").to_pylist(), items.column("order_item_id").to_pylist()))
        if QUARANTINE in rows:
            q = rows[QUARANTINE]
            out[QUARANTINE].update(zip(q.column("batch_id").to_pylist(), q.column("index").to_pylist()))
    return out


def found(table_of) -> dict[str, collections.Counter]:
    def values(table: str, *columns: str) -> collections.Counter:
        rows = table_of(table)
        if rows is None or rows.num_rows == 0:  # no file (left) in the table
            return collections.Counter()
        lists = [rows.column(c).to_pylist() for c in columns]
        return collections.Counter(lists[0] if len(lists) == 1 else zip(*lists, strict=True))

    return {
        "orders": values("orders", "event_id"),
        "order_items": values("order_items", "order_id", "order_item_id"),
        QUARANTINE: values(QUARANTINE, "batch_id", "index"),
    }


def manifest_entries(wal_dir) -> list[dict]:
    with open(os.path.join(wal_dir, Manifest.NAME), "rb") as f:
        return [json.loads(line.split(b" ", 1)[1]) for line in f.read().splitlines()]


def rewrite_manifest(wal_dir, keep) -> None:
    path = os.path.join(wal_dir, Manifest.NAME)
    entries = [e for e in manifest_entries(wal_dir) if keep(e)]
    with open(path, "wb") as f:
        for e in entries:
            text = json.dumps(e, separators=(",", ":")).encode()
            f.write(b"%08x %s\n" % (zlib.crc32(text), text))


def test_files_cut_off_by_a_crash_are_rewritten_and_nothing_else(tmp_path, caplog):
    """Phase 1 commits 20 batches (spread over many purchase days, so many
    files), publishes them, then commits 5 more that Bronze never sees. The
    crash is made exact: three published files are turned back into "intent
    recorded, publish never happened" (file gone, its `p` mark gone, a spool
    file left). Phase 2 must write those three files' rows again, the 5 unseen
    batches, and nothing else."""
    caplog.set_level(logging.INFO, logger="keystone_ingest.server.wal")
    wal_dir, root = tmp_path / "wal", tmp_path / "bronze"
    config = BronzeConfig(uri=str(root), roll_age_s=600)
    batches = Batches(seed=11, invalid_ratio=0.05)
    records = [batches.record(60) for _ in range(25)]

    async def phase1():
        node = await Node(wal_dir, config, batches.core).start()
        for r in records[:20]:
            await node.wal.append(r)
        await node.idle()
        await node.bronze.flush()
        await node.feed.stop(5)  # the next batches are committed but never reach Bronze
        for r in records[20:]:
            await node.wal.append(r)
        await node.bronze.stop()
        crash(node.wal)

    run(phase1())
    intents = [e for e in manifest_entries(wal_dir) if "i" in e]
    published = {e["p"] for e in manifest_entries(wal_dir) if "p" in e}
    assert len(intents) > 50 and {e["i"] for e in intents} == published
    undone = [next(e for e in intents if e["d"] == table) for table in ("orders", "order_items", QUARANTINE)]
    for e in undone:
        final = root / e["i"]
        os.unlink(final)
        (final.parent / f".{final.name}.tmp").write_bytes(b"half a parquet file")
    undone_keys = {e["i"] for e in undone}
    rewrite_manifest(wal_dir, lambda e: e.get("p") not in undone_keys)
    assert found(lambda t: bronze_table(str(root), t)) != expected(records)

    async def phase2():
        node = await Node(wal_dir, config).start()
        assert node.recovery.records_total == 25
        await node.idle()
        assert node.feed.resolution.checked == 3 and node.feed.resolution.replayed_files == 3
        await node.bronze.stop()
        await node.wal.close()
        return node

    node = run(phase2())
    assert found(lambda t: bronze_table(str(root), t)) == expected(records)  # every row exactly once
    assert not [p for p in root.rglob(".*.tmp")]  # the spool files of the unpublished ones are gone
    # Everything is in Bronze: no record is left in the log. (A segment opened
    # for the next append may remain, holding its header and nothing else.)
    assert [p for p in segment_paths(str(wal_dir)) if scan_segment(open(p, "rb").read()).records] == []
    assert node.feed.replayed == 25  # every record read back; 20 were only partly written again
    assert any(r.getMessage() == "wal: resolved the Bronze files of the last run" for r in caplog.records)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_files_left_complete_in_the_s3_spool_are_uploaded_not_rewritten_and_hold_their_segments(tmp_path, aws_env):
    """S3 goes down while files are being published and the server stops: the
    complete files stay in the spool. At the next start (S3 still down) they
    count as written: nothing is replayed, but the log keeps the segments until
    the uploads complete once S3 is back."""
    s3 = start_s3()
    wal_dir = tmp_path / "wal"
    config = BronzeConfig(uri=s3.uri("bronze"), s3_endpoint_url=s3.endpoint_url, spool_dir=str(tmp_path / "spool"),
                          roll_age_s=600, stop_timeout_s=1.0, commit_attempts=1, retry_base_s=0.05, retry_max_s=0.3,
                          s3_max_attempts=1, s3_connect_timeout_s=0.5)  # fmt: skip
    batches = Batches(seed=12)
    records = [batches.record(40) for _ in range(8)]

    async def phase1():
        node = await Node(wal_dir, config, batches.core).start()
        for r in records:
            await node.wal.append(r)
        await node.idle()
        s3.stop()
        with pytest.raises(SinkUnavailable, match="kept for the next start"):
            await node.bronze.stop()
        crash(node.wal)

    async def phase2():
        node = await Node(wal_dir, config).start()
        await node.idle()
        assert node.feed.replayed == 8 and node.wal.backlog == 0  # every record found already written
        assert node.feed.resolution.awaiting  # ... in files waiting for their upload
        await asyncio.sleep(0.5)
        assert len(segment_paths(str(wal_dir))) >= 2  # so the segments stay
        s3.restart()
        for _ in range(200):
            if not node.wal._awaiting:
                break
            await asyncio.sleep(0.05)
        assert not node.wal._awaiting
        await node.bronze.stop()
        await node.wal.close()

    try:
        run(phase1())
        spooled = [p for p in (tmp_path / "spool").rglob("*.parquet") if not p.name.startswith(".")]
        assert spooled
        run(phase2(), timeout_s=60)
        assert segment_paths(str(wal_dir)) == []

        def table_of(name):
            return ds.dataset(f"{s3.bucket}/bronze/{name}", filesystem=s3.filesystem(), format="parquet",
                              partitioning="hive").to_table()  # fmt: skip

        assert found(table_of) == expected(records)
    finally:
        s3.stop()
