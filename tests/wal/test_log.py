"""The write-ahead log on real files: commit, group commit, recovery after a
crash (torn and corrupt tails), segment deletion only once durable and
snapshotted, the disk budget, and both windows rebuilt after a restart."""

from __future__ import annotations

import asyncio
import os

import pytest
from walutil import Batches, crash, run, segment_paths

from keystone_ingest.core import Core
from keystone_ingest.server.errors import SinkFailed, SinkUnavailable
from keystone_ingest.server.idempotency import AckCounts, BatchIdWindow
from keystone_ingest.server.metrics import Metrics
from keystone_ingest.server.wal import _RECORD_HEADER, WalConfig, Windows, WriteAheadLog


async def open_log(directory, **config) -> tuple[WriteAheadLog, object]:
    wal = WriteAheadLog(WalConfig(dir=str(directory), **config), Metrics())
    recovery = await wal.open()
    return wal, recovery


def test_records_committed_before_a_crash_are_all_there_after_it(tmp_path):
    batches = Batches(seed=1)
    sent = [batches.record(40) for _ in range(12)]

    async def body():
        wal, recovery = await open_log(tmp_path)
        assert recovery.records_total == 0
        seqs = [await wal.append(r) for r in sent]
        assert seqs == list(range(1, 13)) and wal.committed_seq == 12
        crash(wal)
        wal, recovery = await open_log(tmp_path)
        assert recovery.records_total == 12 and recovery.truncated_bytes == 0
        assert [r.batch_id for r in recovery.records] == [r.batch_id for r in sent]
        for seq, record in enumerate(sent, start=1):
            back = await asyncio.to_thread(wal.read_record, seq)
            assert back.rows.tables["orders"].equals(record.rows.tables["orders"])
        assert await wal.append(batches.record(5)) == 13  # numbering goes on
        await wal.close()

    run(body())


def test_concurrent_appends_share_fsyncs(tmp_path):
    batches = Batches(seed=2)
    records = [batches.record(20) for _ in range(300)]

    async def body():
        wal, _ = await open_log(tmp_path)
        seqs = await asyncio.gather(*(wal.append(r) for r in records))
        assert sorted(seqs) == list(range(1, 301))
        # Every append waited for an fsync, yet few were needed: appends that
        # arrive during one fsync share the next.
        assert wal.fsyncs <= 30, wal.fsyncs
        fsyncs_metric = wal._metrics.wal_fsync_seconds.collect()[0]
        assert [s.value for s in fsyncs_metric.samples if s.name.endswith("_count")] == [wal.fsyncs]
        await wal.close()

    run(body())


def test_on_commit_runs_with_the_committed_seq_before_append_returns(tmp_path):
    batches = Batches(seed=3)

    async def body():
        wal, _ = await open_log(tmp_path)
        seen = []
        seq = await wal.append(batches.record(5), on_commit=lambda s: seen.append((s, wal.committed_seq)))
        assert seen == [(seq, seq)]
        await wal.close()

    run(body())


@pytest.mark.parametrize("cut", ["one byte", "inside the header", "inside the payload", "all but one byte"])
def test_a_torn_tail_is_cut_at_the_last_complete_record_and_logged(tmp_path, caplog, cut):
    batches = Batches(seed=4)

    async def body():
        wal, _ = await open_log(tmp_path)
        for _ in range(3):
            await wal.append(batches.record(30))
        crash(wal)
        [path] = segment_paths(str(tmp_path))
        size = os.path.getsize(path)
        last_start = wal._index[3][1]
        keep = {"one byte": last_start + 1, "inside the header": last_start + 10,
                "inside the payload": last_start + _RECORD_HEADER.size + 500, "all but one byte": size - 1}[cut]  # fmt: skip
        os.truncate(path, keep)
        wal, recovery = await open_log(tmp_path)
        assert recovery.records_total == 2
        assert recovery.truncated_bytes == keep - last_start
        assert os.path.getsize(path) == last_start  # cut on disk, not only skipped
        assert any("cut the log at the last good record" in r.getMessage() and "torn" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        assert await wal.append(batches.record(5)) == 3  # the lost seq is reused: it never committed
        await wal.close()

    run(body())


def test_a_corrupt_last_record_is_cut_and_a_corrupt_middle_record_skipped(tmp_path, caplog):
    batches = Batches(seed=5)

    async def body():
        wal, _ = await open_log(tmp_path)
        for _ in range(4):
            await wal.append(batches.record(30))
        offsets = {seq: wal._index[seq][1] for seq in range(1, 5)}
        crash(wal)
        [path] = segment_paths(str(tmp_path))
        with open(path, "r+b") as f:
            for seq in (2, 4):
                f.seek(offsets[seq] + _RECORD_HEADER.size + 100)
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 0x01]))
        wal, recovery = await open_log(tmp_path)
        assert sorted(wal._index) == [1, 3]
        assert recovery.corrupt_regions == 1
        assert os.path.getsize(path) == offsets[4]
        messages = [r.getMessage() for r in caplog.records]
        assert any("fails its checksum" in m for m in messages)
        assert any("corrupt bytes inside the log skipped" in m for m in messages)
        assert any("records missing from the log" in m for m in messages)
        await wal.close()

    run(body())


def attach_windows(wal: WriteAheadLog, core: Core | None = None) -> Windows:
    windows = Windows(core or Core(), BatchIdWindow())
    wal.attach(windows)
    return windows


def test_segments_are_deleted_only_once_every_record_is_durable_and_snapshotted(tmp_path):
    batches = Batches(seed=6)

    async def body():
        # Every record fills a segment: one segment per record.
        wal, _ = await open_log(tmp_path, segment_bytes=1024, snapshot_interval_s=0)
        attach_windows(wal, batches.core)
        for _ in range(6):
            await wal.append(batches.record(20))
        assert len(segment_paths(str(tmp_path))) == 6

        async def settle() -> list[str]:
            for _ in range(50):
                await asyncio.sleep(0.02)
            return [os.path.basename(p) for p in segment_paths(str(tmp_path))]

        wal.mark_durable([2, 4, 5])  # seq 1 is not durable yet: nothing can go
        assert len(await settle()) == 6
        wal.mark_durable([1])
        names = await settle()
        assert names == [f"{seq:020d}.wal" for seq in (3, 4, 5, 6)]
        assert not os.path.exists(tmp_path / "snapshot") or wal._snapshot_seq >= 2
        wal.mark_durable([3, 6])  # 6 is in the segment still written to: it stays until close
        assert await settle() == [f"{6:020d}.wal"]
        await wal.close()
        assert segment_paths(str(tmp_path)) == []  # at a clean stop everything durable goes

    run(body())


def test_the_disk_budget_refuses_batches_until_bronze_catches_up(tmp_path):
    batches = Batches(seed=7)

    async def body():
        wal, _ = await open_log(tmp_path, segment_bytes=4096, max_bytes=60_000, snapshot_interval_s=0,
                                retry_after_s=3.0)  # fmt: skip
        attach_windows(wal, batches.core)
        seq = 0
        while not wal.over_budget:
            wal.check_budget()
            seq = await wal.append(batches.record(30))
        with pytest.raises(SinkUnavailable) as refused:
            wal.check_budget()
        assert refused.value.retriable and refused.value.retry_after_s == 3.0
        assert "--wal-max-bytes" in refused.value.message
        wal.mark_durable(list(range(1, seq + 1)))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not wal.over_budget:
                break
        wal.check_budget()  # room again
        await wal.close()

    run(body())


def test_another_server_cannot_use_the_same_directory(tmp_path):
    async def body():
        wal, _ = await open_log(tmp_path)
        with pytest.raises(SinkFailed, match="in use by another running server"):
            await open_log(tmp_path)
        await wal.close()
        other, _ = await open_log(tmp_path)  # released at close
        await other.close()

    run(body())


def test_snapshot_and_records_rebuild_both_windows_after_a_crash(tmp_path):
    """Batches 0-3 are committed before a snapshot, 4-6 after it, then the
    process dies. A new core and batch_id window built from the snapshot and
    the log take every earlier order as a duplicate and every earlier
    batch_id as acked, with its counts."""
    batches = Batches(seed=8, duplicate_ratio=0.0)
    raws = [batches.raw(50) for _ in range(7)]

    async def body():
        wal, _ = await open_log(tmp_path, segment_bytes=1024, snapshot_interval_s=0)
        windows = attach_windows(wal, batches.core)
        counts = {}
        for i, raw in enumerate(raws):
            record = batches.record(raw=raw)
            seq = await wal.append(record)
            windows.batch_ids.complete(record.batch_id, AckCounts(record.accepted, record.duplicates, record.rejected))
            counts[record.batch_id] = (record.accepted, record.duplicates, record.rejected)
            if i == 3:
                wal.mark_durable(list(range(1, seq + 1)))  # segments 1-3 deletable: a snapshot is taken
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if len(segment_paths(str(tmp_path))) < 4:
                        break
        # Segments 1-3 went; 4 was still being written to, then 5, 6 and 7 followed.
        assert len(segment_paths(str(tmp_path))) == 4
        crash(wal)

        wal, recovery = await open_log(tmp_path)
        assert recovery.snapshot is not None and recovery.snapshot.seq == 4
        assert [r.seq for r in recovery.records] == [5, 6, 7]  # only the records after the snapshot
        core, ids = Core(), BatchIdWindow()
        Windows(core, ids).restore(recovery)
        assert core.dedup_size == batches.core.dedup_size
        assert core.dedup_snapshot() == batches.core.dedup_snapshot()
        for raw in raws:
            again = core.process(raw)
            assert again.accepted == 0 and again.duplicates + again.rejected == 50
        for batch_id, first in counts.items():
            assert tuple(await ids.claim(batch_id)) == first
        await wal.close()

    run(body())


def test_the_snapshot_leaves_out_orders_of_batches_not_yet_committed(tmp_path):
    batches = Batches(seed=9, duplicate_ratio=0.0)

    async def body():
        wal, _ = await open_log(tmp_path)
        windows = attach_windows(wal, batches.core)
        committed = batches.record(30)
        await wal.append(committed)
        # A batch the core has taken but that is still on its way through Kafka.
        loop = asyncio.get_running_loop()
        raw = batches.raw(30)
        in_flight = loop.run_in_executor(None, batches.core.process, raw)
        windows.track(in_flight)
        state = await windows.export(wal.committed_seq)
        assert state.seq == 1
        assert sum(map(len, state.dedup)) == 24 * committed.accepted  # its keys are left out
        assert batches.core.dedup_size == committed.accepted + (await in_flight).accepted
        await wal.close()

    run(body())


def test_leaving_keys_out_of_a_window_of_several_slices_keeps_every_other_entry_in_order():
    import numpy as np

    from keystone_ingest.server.wal import _ENTRY_DTYPE, _KEY_DTYPE, _without_keys

    rng = np.random.default_rng(7)
    entries = np.zeros(200_000, dtype=_ENTRY_DTYPE)  # three slices and a part
    entries["lo"] = rng.integers(0, 2**63, len(entries), dtype=np.uint64)
    entries["hi"] = rng.integers(0, 2**63, len(entries), dtype=np.uint64)
    entries["ms"] = np.arange(len(entries))
    left_out = [0, 65_535, 65_536, 150_000, 199_999]
    keys = np.zeros(len(left_out) + 2, dtype=_KEY_DTYPE)
    keys["lo"][: len(left_out)], keys["hi"][: len(left_out)] = entries["lo"][left_out], entries["hi"][left_out]
    keys["lo"][-2], keys["hi"][-2] = entries["lo"][7], entries["hi"][7] + 1  # same lo, other key: stays
    keys["lo"][-1], keys["hi"][-1] = 12345, 678  # in no entry
    kept = _without_keys(entries.tobytes(), keys.tobytes())
    expected = np.delete(entries, left_out)
    assert b"".join(kept) == expected.tobytes()
    assert len(kept) == 3  # views of the runs between the entries left out
    # Nothing to leave out: the same bytes, not a copy.
    whole = entries.tobytes()
    assert _without_keys(whole, keys[-2:].tobytes())[0] is whole
