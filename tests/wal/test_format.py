"""The write-ahead log's record format and the scan that recovery relies on:
what comes back is what went in, and a damaged tail or record is found exactly."""

from __future__ import annotations

import dataclasses
import struct
import types

import numpy as np
import pyarrow as pa
import pytest
from walutil import Batches

from keystone_ingest.server.sinks.bronze import QUARANTINE
from keystone_ingest.server.wal import (
    SEGMENT_MAGIC,
    _RECORD_HEADER,
    _SEGMENT_HEADER,
    decode_record,
    encode_record,
    scan_segment,
)


def record_bytes(seq: int, record, compression: str = "none") -> bytes:
    return b"".join(bytes(p) for p in encode_record(seq, record, compression))


def segment(*records: bytes, first_seq: int = 1) -> bytes:
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, first_seq) + b"".join(records)


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_a_record_round_trips_every_table_its_partition_days_and_the_window_state(compression):
    batches = Batches(seed=3, invalid_ratio=0.1)
    record = batches.record(300)
    assert set(record.rows.tables) == {"orders", "order_items", "order_payments", "customers", QUARANTINE}
    data = record_bytes(7, record, compression)
    back = decode_record(7, memoryview(data)[_RECORD_HEADER.size :])
    assert (back.batch_id, back.accepted, back.duplicates, back.rejected) == (
        record.batch_id, record.accepted, record.duplicates, record.rejected)  # fmt: skip
    assert (back.received_ns, back.dedup_ms, back.dedup_keys) == (record.received_ns, record.dedup_ms, record.dedup_keys)
    assert len(back.dedup_keys) == 16 * record.accepted
    assert back.rows.token == 7
    for dest, rows in record.rows.tables.items():
        assert back.rows.tables[dest].equals(rows)
        assert back.rows.tables[dest].schema.equals(rows.schema)
        assert np.array_equal(back.rows.days[dest], record.rows.days[dest])


def test_a_record_from_before_the_producer_column_decodes_with_null_producers():
    # A log left by a server from before lineage existed: the same rows without
    # the `producer` column. Upgrading over it must not lose its acked rows.
    batches = Batches(seed=5, invalid_ratio=0.1)
    record = batches.record(200)
    old_tables = {dest: rows.drop_columns(["producer"]) for dest, rows in record.rows.tables.items()}
    # (encode_record only reads .tables and .days; BronzeRows would refuse the old schema)
    old = dataclasses.replace(record, rows=types.SimpleNamespace(tables=old_tables, days=record.rows.days))
    back = decode_record(9, memoryview(record_bytes(9, old))[_RECORD_HEADER.size :])
    for dest, rows in record.rows.tables.items():
        assert back.rows.tables[dest].schema.equals(rows.schema)
        assert back.rows.tables[dest].column("producer").null_count == rows.num_rows
        assert back.rows.tables[dest].drop_columns(["producer"]).equals(old_tables[dest])


def test_a_record_with_a_column_bronze_does_not_know_is_refused_by_name():
    batches = Batches(seed=6)
    record = batches.record(20)
    orders = record.rows.tables["orders"]
    odd = {**record.rows.tables, "orders": orders.append_column("surprise", pa.nulls(orders.num_rows, pa.int8()))}
    data = record_bytes(3, dataclasses.replace(record, rows=types.SimpleNamespace(tables=odd, days=record.rows.days)))
    with pytest.raises(ValueError, match=r"record 3: orders has columns Bronze does not know: \['surprise'\]"):
        decode_record(3, memoryview(data)[_RECORD_HEADER.size :])


def test_a_batch_without_rows_is_a_record_too():
    batches = Batches(seed=4, invalid_ratio=0.0, duplicate_ratio=0.0)
    raw = batches.raw(20)
    batches.record(raw=raw)
    all_duplicates = batches.record(raw=raw)  # the same orders again: all duplicates
    assert all_duplicates.accepted == 0 and not any(t.num_rows for t in all_duplicates.rows.tables.values())
    data = record_bytes(1, all_duplicates)
    back = decode_record(1, memoryview(data)[_RECORD_HEADER.size :])
    assert back.rows.tables == {} and back.duplicates == 20 and back.dedup_keys == b""


def three_records() -> tuple[bytes, list[int]]:
    """A segment of three records (the last one small); the records' start offsets."""
    batches = Batches(seed=5)
    records = [record_bytes(1, batches.record(100)), record_bytes(2, batches.record(100)),
               record_bytes(3, batches.record(1))]  # fmt: skip
    starts = [_SEGMENT_HEADER.size]
    for r in records[:-1]:
        starts.append(starts[-1] + len(r))
    return segment(*records), starts


def test_scan_finds_every_record_of_an_intact_segment():
    data, starts = three_records()
    scan = scan_segment(data)
    assert [(seq, offset) for seq, offset, _ in scan.records] == [(1, starts[0]), (2, starts[1]), (3, starts[2])]
    assert scan.good_end == len(data) and scan.tail is None and scan.corrupt == []


def test_cut_at_every_byte_of_the_last_record_keeps_exactly_the_complete_records():
    data, starts = three_records()
    last = starts[2]
    assert len(data) - last > 5_000  # five Arrow schemas even for one order: thousands of cut points
    for cut in range(last, len(data)):
        scan = scan_segment(data[:cut])
        assert [seq for seq, _, _ in scan.records] == [1, 2], cut
        assert scan.good_end == last, cut
        assert scan.tail == ("torn" if cut > last else None), cut
        assert scan.corrupt == [], cut


def test_a_flipped_byte_anywhere_in_the_last_record_cuts_the_log_there():
    data, starts = three_records()
    last = starts[2]
    # Every header byte, then payload bytes spread over the record (metadata, keys, Arrow).
    positions = [*range(last, last + _RECORD_HEADER.size), *range(last + _RECORD_HEADER.size, len(data), 97)]
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        scan = scan_segment(bytes(damaged))
        assert [seq for seq, _, _ in scan.records] == [1, 2], pos
        assert scan.good_end == last, pos
        assert scan.tail in ("corrupt", "torn"), pos  # a damaged length field can look like a cut


def test_a_corrupt_record_inside_the_log_is_skipped_and_the_records_after_it_kept():
    data, starts = three_records()
    damaged = bytearray(data)
    damaged[starts[1] + _RECORD_HEADER.size + 200] ^= 0xFF  # inside record 2's payload
    scan = scan_segment(bytes(damaged))
    assert [seq for seq, _, _ in scan.records] == [1, 3]
    assert scan.corrupt == [(starts[1], starts[2])]
    assert scan.tail is None and scan.good_end == len(data)


def test_a_record_whose_length_field_says_too_much_is_a_torn_tail():
    data, starts = three_records()
    damaged = bytearray(data)
    struct.pack_into("<I", damaged, starts[2] + 4, 1 << 30)
    scan = scan_segment(bytes(damaged))
    assert [seq for seq, _, _ in scan.records] == [1, 2] and scan.good_end == starts[2] and scan.tail == "torn"
