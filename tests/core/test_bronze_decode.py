"""Kafka records read back into Bronze: record batches built by the real
`RecordBatchBuilder` from processed batches (every codec) decode to exactly
the ingest side's tables plus `producer`; the log dedup window drops repeats
by its definition, whatever the fetch boundaries; first_offset, batches cut
short, control batches, undecodable values and corrupt fetches; the
dead-letter topic into the quarantine table."""

from __future__ import annotations

import gc
import random
import struct
import sys
import threading
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from batches import NOW_MS, batch_bytes, valid_order
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import (
    TABLES,
    Core,
    CorruptRecords,
    LogDedup,
    RecordBatchBuilder,
    decode_order_records,
    decode_reject_records,
    schema,
)
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.bronze.layout import QUARANTINE_SCHEMA

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
CONTENT_TYPE = b"application/x-protobuf; messageType=keystone.ingest.v1.Order"
PRODUCER = pa.field("producer", pa.string())
WINDOW = dict(window_records=100_000, window_ms=3_600_000)


# -- building the log ------------------------------------------------------------


def processed(seed: int = 1, orders: int = 200, invalid_ratio: float = 0.05, **batch):
    generator = OrderGenerator(seed=seed, invalid_ratio=invalid_ratio, duplicate_ratio=0.05)
    raw = generator.batch(orders, **batch).SerializeToString()
    return raw, Core().process(raw, now_ms=NOW_MS)


def headers(result, producer: str | None) -> list[tuple[str, bytes]]:
    """The common headers the Kafka sink publishes with every record of a batch."""
    common = [
        ("batch_id", result.batch_id.encode()),
        ("source", result.source.encode()),
        ("content-type", CONTENT_TYPE),
    ]
    return common + ([("producer", producer.encode())] if producer is not None else [])


def at_offset(batch: bytes, base_offset: int) -> bytes:
    """The record batch as the broker stores it: the base offset (outside the CRC) assigned."""
    return struct.pack(">q", base_offset) + bytes(batch[8:])


def orders_batch(
    raw: bytes,
    result,
    *,
    base_offset: int,
    codec: str = "zstd",
    timestamp_ms: int = NOW_MS,
    producer: str | None = "svc-a",
) -> bytes:
    builder = RecordBatchBuilder(codec, 0, 1 << 22)
    assert builder.append_orders(result, raw, 0, 1, 0, timestamp_ms, headers(result, producer)) == result.accepted
    return at_offset(builder._build(), base_offset)


def single_order_batch(order: ingest_pb2.Order, *, base_offset: int, timestamp_ms: int, batch_id: str = "b-1") -> bytes:
    raw = batch_bytes(order, batch_id=batch_id)
    return orders_batch(
        raw, Core().process(raw, now_ms=NOW_MS), base_offset=base_offset, timestamp_ms=timestamp_ms, codec="none"
    )


def records_batch(
    records: list[tuple[bytes, list[tuple[str, bytes]]]], *, base_offset: int, timestamp_ms: int = NOW_MS
) -> bytes:
    """Records of any value and headers, built by aiokafka's own writer."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 22)
    for delta, (value, hs) in enumerate(records):
        builder.append(delta, timestamp_ms, None, value, hs)
    return at_offset(builder.build(), base_offset)


def with_crc(batch: bytearray) -> bytes:
    batch[17:21] = struct.pack(">I", calc_crc32c(bytes(batch[21:])))
    return bytes(batch)


def control_batch(*, base_offset: int) -> bytes:
    """A transaction marker (a control batch: attributes bit 5) of one record."""
    batch = bytearray(records_batch([(b"\x00\x00\x00\x00\x00\x00", [])], base_offset=base_offset))
    batch[22] |= 0x20
    return with_crc(batch)


# -- reading it back -------------------------------------------------------------


def tables(decoded) -> dict[str, pa.RecordBatch]:
    return {name: pa.record_batch(table) for name, table in decoded.tables.items()}


def expected_tables(result, producer: str | None) -> dict[str, pa.RecordBatch]:
    """The ingest side's tables of `result` with the producer column Bronze adds."""
    out = {}
    for name in TABLES:
        rows = pa.record_batch(result.table(name))
        column = pa.array([producer] * rows.num_rows, pa.string())
        out[name] = rows.append_column(PRODUCER, column)
    return out


def concat(*parts: dict[str, pa.RecordBatch]) -> dict[str, pa.RecordBatch]:
    return {name: pa.concat_batches([p[name] for p in parts]) for name in TABLES}


def assert_tables_equal(got: dict[str, pa.RecordBatch], expected: dict[str, pa.RecordBatch]) -> None:
    for name in TABLES:
        assert got[name].schema == expected[name].schema, name
        assert got[name].to_pylist() == expected[name].to_pylist(), name


def kept_event_ids(decoded) -> list[str]:
    return pa.record_batch(decoded.tables["orders"]).column("event_id").to_pylist()


# -- the orders topic ------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_decodes_back_to_the_ingest_tables_plus_producer(codec: str):
    raw, result = processed(seed=11)
    assert result.rejected > 0 and result.duplicates > 0  # the log holds accepted orders only
    fetch = orders_batch(raw, result, base_offset=500, codec=codec, timestamp_ms=NOW_MS + 7)
    decoded = decode_order_records(fetch, first_offset=500, dedup=LogDedup(**WINDOW))

    assert (decoded.records, decoded.orders, decoded.duplicates, decoded.quarantined) == (
        result.accepted,
        result.accepted,
        0,
        0,
    )
    assert (decoded.next_offset, decoded.consumed) == (500 + result.accepted, len(fetch))
    assert (decoded.last_offset, decoded.max_timestamp_ms) == (500 + result.accepted - 1, NOW_MS + 7)
    got = tables(decoded)
    assert_tables_equal(got, expected_tables(result, "svc-a"))
    for name in TABLES:  # Bronze's schemas: the core's, then producer
        assert got[name].schema == pa.schema(schema(name)).append(PRODUCER)
    assert got["_quarantine"].schema == QUARANTINE_SCHEMA and got["_quarantine"].num_rows == 0
    spans = pa.record_batch(result.order_spans)
    counts = pa.record_batch(decoded.child_counts)
    assert counts.schema.names == ["item_count", "payment_count", "customer_count"]
    for column in counts.schema.names:
        assert counts.column(column).to_pylist() == spans.column(column).to_pylist()


def test_without_authentication_the_producer_column_is_null():
    raw, result = processed(seed=12, orders=50)
    decoded = decode_order_records(orders_batch(raw, result, base_offset=0, producer=None), first_offset=0, dedup=None)
    got = tables(decoded)
    assert_tables_equal(got, expected_tables(result, None))
    assert got["order_items"].column("producer").null_count == got["order_items"].num_rows > 0


def test_each_order_carries_the_lineage_of_its_own_record():
    first_raw, first = processed(seed=13, orders=40, batch_id="batch-a", source="east")
    second_raw, second = processed(seed=14, orders=40, batch_id="batch-b", source="west")
    fetch = orders_batch(first_raw, first, base_offset=0) + orders_batch(
        second_raw, second, base_offset=first.accepted, producer=None, codec="lz4"
    )
    decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert_tables_equal(tables(decoded), concat(expected_tables(first, "svc-a"), expected_tables(second, None)))
    assert decoded.next_offset == first.accepted + second.accepted


def test_an_event_id_published_again_at_a_later_offset_is_dropped():
    raw, result = processed(seed=15, orders=100)
    again = Core().process(raw, now_ms=NOW_MS)  # the server's window forgot it: the log holds it twice
    fetch = orders_batch(raw, result, base_offset=0) + orders_batch(raw, again, base_offset=result.accepted)
    decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert (decoded.records, decoded.orders, decoded.duplicates) == (
        2 * result.accepted,
        result.accepted,
        result.accepted,
    )
    assert_tables_equal(tables(decoded), expected_tables(result, "svc-a"))
    undeduped = decode_order_records(fetch, first_offset=0, dedup=None)
    assert undeduped.orders == 2 * result.accepted


@pytest.mark.parametrize(
    ("gap_records", "gap_ms", "duplicate"),
    [
        (10, 500, True),  # exactly at both bounds
        (11, 500, False),  # one record too far
        (10, 501, False),  # one millisecond too late
        (1, -60_000, True),  # an earlier timestamp is inside the window
    ],
)
def test_the_window_ends_exactly_at_window_records_and_window_ms(gap_records: int, gap_ms: int, duplicate: bool):
    order = valid_order(1)
    fetch = single_order_batch(order, base_offset=100, timestamp_ms=NOW_MS) + single_order_batch(
        order, base_offset=100 + gap_records, timestamp_ms=NOW_MS + gap_ms, batch_id="b-2"
    )
    decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(window_records=10, window_ms=500))
    assert decoded.duplicates == int(duplicate)
    assert pa.record_batch(decoded.tables["orders"]).column("batch_id").to_pylist() == (
        ["b-1"] if duplicate else ["b-1", "b-2"]
    )


def reference_decisions(log: list[tuple[int, int, str]], window_records: int, window_ms: int) -> list[bool]:
    """The window's definition, directly: the previous occurrence of the key at
    o' with o - window_records <= o' < o and ts - ts' <= window_ms."""
    latest: dict[str, tuple[int, int]] = {}
    out = []
    for offset, ts, key in log:
        previous = latest.get(key)
        out.append(previous is not None and offset - window_records <= previous[0] and ts - previous[1] <= window_ms)
        latest[key] = (offset, ts)
    return out


def test_decisions_follow_the_definition_whatever_the_fetch_boundaries():
    rng = random.Random(7)
    batches, log, offset, ts = [], [], 0, NOW_MS
    for b in range(60):
        orders = [valid_order(rng.randrange(40)) for _ in range(rng.randrange(1, 6))]
        orders = list({o.event_id: o for o in orders}.values())  # one batch's own repeats stop at ingest
        raw = batch_bytes(*orders, batch_id=f"b-{b}")
        result = Core().process(raw, now_ms=NOW_MS)
        ts += rng.randrange(-50, 400)
        batches.append(orders_batch(raw, result, base_offset=offset, timestamp_ms=ts, codec="snappy"))
        log += [(offset + k, ts, o.event_id) for k, o in enumerate(orders)]
        offset += len(orders) + rng.randrange(3)  # compaction and markers leave gaps
    expected = [key for (_, _, key), dup in zip(log, reference_decisions(log, 25, 700), strict=True) if not dup]
    whole = decode_order_records(b"".join(batches), first_offset=0, dedup=LogDedup(window_records=25, window_ms=700))
    assert kept_event_ids(whole) == expected and whole.duplicates == len(log) - len(expected)
    window, kept, position = LogDedup(window_records=25, window_ms=700), [], 0
    for k in range(0, len(batches), 7):  # fetches of 7 batches, the last cut short
        fetch = b"".join(batches[k : k + 8])[: -5 if k + 8 <= len(batches) else None]
        decoded = decode_order_records(fetch, first_offset=position, dedup=window)
        kept += kept_event_ids(decoded)
        position = decoded.next_offset
    assert kept == expected
    assert len(window) <= 25 and window.last_offset == log[-1][0]


def test_first_offset_in_the_middle_of_a_batch_skips_the_records_before_it():
    raw, result = processed(seed=16, orders=30, invalid_ratio=0.0)
    fetch = orders_batch(raw, result, base_offset=1000)
    window = LogDedup(**WINDOW)
    decoded = decode_order_records(fetch, first_offset=1010, dedup=window)
    assert (decoded.records, decoded.next_offset, decoded.last_offset) == (
        result.accepted - 10,
        1000 + result.accepted,
        999 + result.accepted,
    )
    # The ingest tables without the first 10 orders and their children.
    spans = pa.record_batch(result.order_spans)
    skipped = {
        table: sum(spans.column(column).to_pylist()[:10])
        for table, column in (
            ("order_items", "item_count"),
            ("order_payments", "payment_count"),
            ("customers", "customer_count"),
        )
    }
    skipped["orders"] = 10
    expected = {name: rows.slice(skipped[name]) for name, rows in expected_tables(result, "svc-a").items()}
    assert_tables_equal(tables(decoded), expected)
    assert window.last_offset == 999 + result.accepted


def test_end_offset_inside_a_batch_reads_only_the_records_before_it_and_the_window_goes_on_from_there():
    # How a worker warms a partition's window on the offsets before where it
    # starts writing: read up to the bound, then on from it with the same window.
    raw, result = processed(seed=17, orders=30, invalid_ratio=0.0)
    fetch = orders_batch(raw, result, base_offset=1000)
    window = LogDedup(**WINDOW)
    before = decode_order_records(fetch, first_offset=1000, end_offset=1012, dedup=window)
    assert (before.records, before.next_offset, before.last_offset, window.last_offset) == (12, 1012, 1011, 1011)
    after = decode_order_records(fetch, first_offset=before.next_offset, dedup=window)
    assert (after.records, after.next_offset) == (result.accepted - 12, 1000 + result.accepted)
    assert kept_event_ids(before) + kept_event_ids(after) == kept_event_ids(
        decode_order_records(fetch, first_offset=1000, dedup=None)
    )
    # A bound before the batch reads nothing and stays where it was asked to start.
    nothing = decode_order_records(fetch, first_offset=900, end_offset=950, dedup=LogDedup(**WINDOW))
    assert (nothing.records, nothing.next_offset) == (0, 900)
    rejects = decode_reject_records(fetch, first_offset=1000, end_offset=1005, dedup=None)
    assert (rejects.records, rejects.next_offset) == (5, 1005)


def test_a_batch_cut_short_at_the_end_is_left_for_the_next_fetch():
    raw, result = processed(seed=17, orders=30)
    first = orders_batch(raw, result, base_offset=0)
    second = orders_batch(raw, Core().process(raw), base_offset=result.accepted)
    window = LogDedup(**WINDOW)
    decoded = decode_order_records(first + second[: len(second) // 2], first_offset=0, dedup=window)
    assert (decoded.consumed, decoded.next_offset, decoded.records) == (len(first), result.accepted, result.accepted)
    nothing = decode_order_records(second[:60], first_offset=decoded.next_offset, dedup=window)
    assert (nothing.consumed, nothing.next_offset, nothing.records) == (0, result.accepted, 0)
    assert (nothing.max_timestamp_ms, nothing.last_offset) == (None, None)
    rest = decode_order_records(second, first_offset=decoded.next_offset, dedup=window)
    assert (rest.duplicates, rest.orders) == (result.accepted, 0)


def test_a_control_batch_is_skipped_but_moves_next_offset():
    raw, result = processed(seed=18, orders=20)
    fetch = orders_batch(raw, result, base_offset=0) + control_batch(base_offset=result.accepted)
    decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert (decoded.records, decoded.orders) == (result.accepted, result.accepted)
    assert (decoded.next_offset, decoded.consumed) == (result.accepted + 1, len(fetch))
    only_marker = decode_order_records(control_batch(base_offset=7), first_offset=7, dedup=None)
    assert (only_marker.records, only_marker.next_offset, only_marker.last_offset) == (0, 8, None)


def test_an_undecodable_value_is_quarantined_with_its_kafka_offset():
    good = valid_order(1).SerializeToString()
    broken = b"\x0f" + good[1:]  # field 1 with wire type 7
    hs = [("event_id", b"evt-9"), ("batch_id", b"b-1"), ("source", b"tests"), ("producer", b"svc-a")]
    fetch = records_batch(
        [(good, [("event_id", b"evt-1"), *hs[1:]]), (broken, hs)], base_offset=41, timestamp_ms=NOW_MS + 3
    )
    decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert (decoded.orders, decoded.quarantined) == (1, 1)
    assert pa.record_batch(decoded.tables["_quarantine"]).to_pylist() == [
        {
            "batch_id": "b-1",
            "source": "tests",
            "producer": "svc-a",
            "index": -1,
            "event_id": "evt-9",
            "reason": "undecodable",
            "message": "Kafka offset 42: the value is not an Order: "
            "invalid wire type at byte 0 in Order (bad_wire_type)",
            "raw": broken,
            "received_at": datetime.fromtimestamp((NOW_MS + 3) / 1000, UTC),
        }
    ]


def test_orders_the_rules_or_the_lineage_refuse_are_quarantined_in_log_order():
    no_customer = valid_order(2)
    no_customer.customer_id = ""
    hs = [("event_id", b"e"), ("batch_id", b"b-1"), ("source", b"tests")]
    fetch = records_batch(
        [
            (valid_order(1).SerializeToString(), hs),
            (valid_order(3).SerializeToString(), [("event_id", b"e3"), ("source", b"tests")]),  # no batch_id
            (no_customer.SerializeToString(), [("event_id", b"e2"), *hs[1:]]),
            (valid_order(4).SerializeToString(), [*hs, ("producer", b"\xff")]),  # not UTF-8
        ],
        base_offset=0,
    )
    decoded = decode_order_records(fetch, first_offset=0, dedup=None)
    assert kept_event_ids(decoded) == ["evt-1"]
    rows = pa.record_batch(decoded.tables["_quarantine"]).to_pylist()
    assert [(r["reason"], r["message"], r["batch_id"], r["producer"]) for r in rows] == [
        ("batch_id_empty", "Kafka offset 1: batch_id is empty; every batch needs an id of 1 to 128 bytes", "", None),
        ("customer_id_empty", "Kafka offset 2: customer_id is empty", "b-1", None),
        ("invalid_utf8", "Kafka offset 3: the producer header is not valid UTF-8", "b-1", None),
    ]


def test_a_duplicate_is_dropped_even_when_it_would_be_quarantined():
    hs = [("event_id", b"evt-1"), ("batch_id", b"b-1"), ("source", b"tests")]
    fetch = records_batch([(valid_order(1).SerializeToString(), hs), (b"\xff", hs)], base_offset=0)
    decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert (decoded.orders, decoded.duplicates, decoded.quarantined) == (1, 1, 0)


def test_a_corrupt_fetch_raises_with_its_byte_offset_and_leaves_the_window_alone():
    raw, result = processed(seed=19, orders=20)
    good = orders_batch(raw, result, base_offset=0)
    bad = bytearray(orders_batch(raw, result, base_offset=result.accepted))
    bad[-1] ^= 1
    window = LogDedup(**WINDOW)
    with pytest.raises(CorruptRecords, match="CRC32C does not match") as caught:
        decode_order_records(good + bytes(bad), first_offset=0, dedup=window)
    assert (caught.value.code, caught.value.offset, caught.value.retriable) == (
        "corrupt_record_batch",
        len(good) + 17,
        True,
    )
    assert isinstance(caught.value, ValueError)
    assert (len(window), window.last_offset) == (0, None)
    with pytest.raises(CorruptRecords) as caught:
        decode_reject_records(bytes(bad), first_offset=0, dedup=None)
    assert caught.value.code == "corrupt_record_batch"


def test_reading_offsets_again_needs_a_reset_and_then_decides_the_same():
    raw, result = processed(seed=20, orders=50)
    fetch = orders_batch(raw, result, base_offset=0) + orders_batch(raw, Core().process(raw), base_offset=100)
    window = LogDedup(window_records=1000, window_ms=60_000)
    first = decode_order_records(fetch, first_offset=0, dedup=window)
    with pytest.raises(ValueError, match=r"record offset 0 is not after \d+, the last offset the dedup window"):
        decode_order_records(fetch, first_offset=0, dedup=window)
    window.reset()
    assert (len(window), window.last_offset) == (0, None)
    again = decode_order_records(fetch, first_offset=0, dedup=window)
    assert (again.orders, again.duplicates) == (first.orders, first.duplicates) == (result.accepted, result.accepted)


def test_log_dedup_arguments_are_checked():
    with pytest.raises(ValueError, match="window_records must be between 0 and 2\\*\\*30"):
        LogDedup(window_records=-1, window_ms=0)
    with pytest.raises(ValueError, match="window_ms must not be negative"):
        LogDedup(window_records=1, window_ms=-1)
    window = LogDedup(window_records=5, window_ms=10)
    assert (window.window_records, window.window_ms, len(window), window.last_offset) == (5, 10, 0, None)
    with pytest.raises(ValueError, match="first_offset must not be negative"):
        decode_order_records(b"", first_offset=-1, dedup=None)
    empty = decode_order_records(b"", first_offset=3, dedup=window)
    assert (empty.next_offset, empty.consumed, empty.records) == (3, 0, 0)


def test_the_tables_outlive_the_input_and_the_result():
    raw, result = processed(seed=21, orders=30)
    fetch = bytearray(orders_batch(raw, result, base_offset=0, codec="none"))
    decoded = decode_order_records(fetch, first_offset=0, dedup=None)
    got = tables(decoded)
    del decoded
    fetch[:] = b"\x00" * len(fetch)
    gc.collect()
    assert_tables_equal(got, expected_tables(result, "svc-a"))


def test_decoding_releases_the_gil():
    # With a switch interval far longer than the test, the counter thread can
    # only run during the decode if the decode released the GIL.
    raw, result = processed(seed=24, orders=5000, invalid_ratio=0.0)
    fetch = b"".join(orders_batch(raw, result, base_offset=k * result.accepted) for k in range(8))
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            stop.wait(0.0005)  # sleeping releases the GIL between ticks

    old_interval = sys.getswitchinterval()
    counter = threading.Thread(target=count)
    sys.setswitchinterval(100.0)
    try:
        counter.start()
        before = ticks
        decoded = decode_order_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
        after = ticks
    finally:
        stop.set()
        counter.join()
        sys.setswitchinterval(old_interval)
    assert (decoded.orders, decoded.duplicates) == (result.accepted, 7 * result.accepted)
    assert after > before


# -- the dead-letter topic -------------------------------------------------------


def rejects_batch(
    raw: bytes,
    result,
    *,
    base_offset: int,
    codec: str = "zstd",
    timestamp_ms: int = NOW_MS,
    producer: str | None = "svc-a",
) -> bytes:
    builder = RecordBatchBuilder(codec, 0, 1 << 22)
    assert builder.append_rejects(result, raw, 0, timestamp_ms, headers(result, producer)) == result.rejected
    return at_offset(builder._build(), base_offset)


def expected_quarantine(raw: bytes, result, producer: str | None, timestamp_ms: int) -> list[dict]:
    """The quarantine rows of the rejects of `result` (server/bronze/layout.py's QUARANTINE_SCHEMA)."""
    return [
        {
            "batch_id": result.batch_id,
            "source": result.source,
            "producer": producer,
            "index": x["index"],
            "event_id": x["event_id"],
            "reason": x["reason"],
            "message": x["message"],
            "raw": raw[x["offset"] : x["offset"] + x["length"]],
            "received_at": datetime.fromtimestamp(timestamp_ms / 1000, UTC),
        }
        for x in pa.record_batch(result.rejects).to_pylist()
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_dead_letter_records_decode_to_the_quarantine_rows_of_their_rejects(codec: str):
    raw, result = processed(seed=22, orders=300, invalid_ratio=0.2)
    assert result.rejected > 20
    fetch = rejects_batch(raw, result, base_offset=70, codec=codec, timestamp_ms=NOW_MS + 9)
    decoded = decode_reject_records(fetch, first_offset=70, dedup=LogDedup(**WINDOW))
    assert list(decoded.tables) == ["_quarantine"]
    quarantine = pa.record_batch(decoded.tables["_quarantine"])
    assert quarantine.schema == QUARANTINE_SCHEMA == pa.schema(schema("_quarantine"))
    assert quarantine.to_pylist() == expected_quarantine(raw, result, "svc-a", NOW_MS + 9)
    assert (decoded.records, decoded.quarantined, decoded.orders, decoded.next_offset) == (
        result.rejected,
        result.rejected,
        0,
        70 + result.rejected,
    )
    assert decoded.child_counts.num_rows == 0


def test_a_batch_published_twice_to_the_dead_letter_topic_is_quarantined_once():
    raw, result = processed(seed=23, orders=100, invalid_ratio=0.2)
    again = Core().process(raw, now_ms=NOW_MS)
    fetch = rejects_batch(raw, result, base_offset=0, producer=None) + rejects_batch(
        raw, again, base_offset=result.rejected, producer=None
    )
    decoded = decode_reject_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert (decoded.records, decoded.duplicates, decoded.quarantined) == (
        2 * result.rejected,
        result.rejected,
        result.rejected,
    )
    assert pa.record_batch(decoded.tables["_quarantine"]).to_pylist() == expected_quarantine(raw, result, None, NOW_MS)


def test_dead_letter_records_without_the_headers_keep_what_they_have():
    fetch = records_batch([(b"\x01\x02", [("error.index", b"x7"), ("error.reason", b"money_negative")])], base_offset=5)
    decoded = decode_reject_records(fetch, first_offset=0, dedup=LogDedup(**WINDOW))
    assert pa.record_batch(decoded.tables["_quarantine"]).to_pylist() == [
        {
            "batch_id": "",
            "source": "",
            "producer": None,
            "index": -1,
            "event_id": "",
            "reason": "money_negative",
            "message": "",
            "raw": b"\x01\x02",
            "received_at": datetime.fromtimestamp(NOW_MS / 1000, UTC),
        }
    ]
