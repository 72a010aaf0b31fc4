"""The dedup window outliving its process: `BatchResult.dedup_keys`,
`Core.dedup_snapshot()` and `Core.dedup_restore()`, the native half of the
server's crash recovery (its snapshot file and write-ahead log)."""

from __future__ import annotations

import struct

import pytest
from batches import NOW_MS, batch_bytes, process, valid_order

from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import DEDUP_ENTRY_BYTES, DEDUP_KEY_BYTES, Core


def entries(snapshot: bytes) -> list[tuple[bytes, int]]:
    """(16-byte key, inserted_ms) per entry."""
    return [
        (snapshot[i : i + 16], struct.unpack_from("<q", snapshot, i + 16)[0])
        for i in range(0, len(snapshot), DEDUP_ENTRY_BYTES)
    ]


def test_dedup_keys_are_the_keys_a_batch_inserted_in_order():
    core = Core()
    first = process(valid_order(1), valid_order(2), valid_order(2), core=core)
    assert len(first.dedup_keys) == 2 * DEDUP_KEY_BYTES
    second = process(valid_order(2), valid_order(3), core=core, batch_id="batch-2")
    assert len(second.dedup_keys) == DEDUP_KEY_BYTES  # evt-2 was a duplicate: only evt-3 inserted
    snapshot = entries(core.dedup_snapshot())
    assert [key for key, _ in snapshot] == [first.dedup_keys[:16], first.dedup_keys[16:], second.dedup_keys]


def test_snapshot_lists_keys_oldest_first_with_their_times_and_skips_forgotten_ones():
    core = Core()
    results = [core.process(batch_bytes(valid_order(n), batch_id=f"b-{n}"), now_ms=NOW_MS + n) for n in range(5)]
    core.forget(results[2])
    snapshot = entries(core.dedup_snapshot())
    assert snapshot == [(results[n].dedup_keys, NOW_MS + n) for n in (0, 1, 3, 4)]


def test_a_restored_window_dedups_exactly_like_the_original():
    generator = OrderGenerator(seed=5, duplicate_ratio=0.2, invalid_ratio=0.05)
    batches = [generator.batch(200).SerializeToString() for _ in range(6)]
    original = Core(dedup_max_keys=5_000)
    for k, data in enumerate(batches[:3]):
        original.process(data, now_ms=NOW_MS + k)

    restored = Core(dedup_max_keys=5_000)
    assert restored.dedup_restore(original.dedup_snapshot(), now_ms=NOW_MS + 3) == original.dedup_size
    assert restored.dedup_snapshot() == original.dedup_snapshot()
    for k, data in enumerate(batches, start=3):
        a, b = original.process(data, now_ms=NOW_MS + k), restored.process(data, now_ms=NOW_MS + k)
        assert (a.accepted, a.duplicates, a.rejected) == (b.accepted, b.duplicates, b.rejected)
        assert a.dedup_keys == b.dedup_keys


def test_restore_skips_expired_and_held_keys_and_keeps_the_original_ages():
    source = Core(dedup_max_age_s=10)
    old = source.process(batch_bytes(valid_order(1), batch_id="old"), now_ms=NOW_MS)
    new = source.process(batch_bytes(valid_order(2), batch_id="new"), now_ms=NOW_MS + 5_000)
    target = Core(dedup_max_age_s=10)
    target.process(batch_bytes(valid_order(2), batch_id="held"), now_ms=NOW_MS + 6_000)
    # At NOW_MS + 10 s evt-1 has expired; evt-2 is already held.
    assert target.dedup_restore(source.dedup_snapshot(), now_ms=NOW_MS + 10_000) == 0
    assert target.dedup_size == 1
    assert len(old.dedup_keys) == len(new.dedup_keys) == DEDUP_KEY_BYTES

    fresh = Core(dedup_max_age_s=10)
    assert fresh.dedup_restore(source.dedup_snapshot(), now_ms=NOW_MS + 9_999) == 2
    # evt-2 was inserted at NOW_MS + 5 s: a duplicate until NOW_MS + 15 s, new after.
    assert process(valid_order(2), core=fresh, now_ms=NOW_MS + 14_999).duplicates == 1
    assert process(valid_order(2), core=fresh, now_ms=NOW_MS + 15_000, batch_id="later").accepted == 1


def test_restore_into_a_smaller_window_keeps_the_newest_keys():
    source = Core()
    for n in range(10):
        source.process(batch_bytes(valid_order(n), batch_id=f"b-{n}"), now_ms=NOW_MS + n)
    small = Core(dedup_max_keys=4)
    assert small.dedup_restore(source.dedup_snapshot(), now_ms=NOW_MS + 10) == 10
    assert small.dedup_size == 4
    assert [ms for _, ms in entries(small.dedup_snapshot())] == [NOW_MS + n for n in range(6, 10)]


def test_restore_refuses_a_buffer_that_is_not_whole_entries():
    with pytest.raises(ValueError, match="24 bytes per entry"):
        Core().dedup_restore(b"\0" * 25)
    assert Core().dedup_restore(b"") == 0
    assert Core().dedup_snapshot() == b""
