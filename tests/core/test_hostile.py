"""Hostile and unusual input: truncations, bit flips, a corpus of malformed
wire bytes with the exact error code and offset each must give, and the
forward-compatible encodings (unknown fields, repeated singular fields, split
messages) that must decode to the same values as the canonical ones."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from batches import (
    EGROUP,
    I32,
    I64,
    LEN,
    NOW_MS,
    PURCHASE_S,
    SGROUP,
    VARINT,
    assert_same_result,
    batch_bytes,
    field_len,
    field_varint,
    outcome,
    rows,
    tag,
    valid_order,
    varint,
)
from google.protobuf.message import DecodeError
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import BATCH_ERRORS, Core, InvalidBatch, RecordError
from keystone_ingest.proto.v1 import ingest_pb2

from benchmarks.reference.core import ReferenceCore

BATCH_ID = field_len(1, b"b-1")  # bytes 0..4; whatever follows starts at offset 5
BATCH_LEVEL_CODES = {"batch_id_empty", "batch_id_too_long", "source_too_long"}
PURCHASE_AT = datetime.fromtimestamp(PURCHASE_S, UTC)


def official_parse(data: bytes) -> ingest_pb2.OrderBatch | None:
    try:
        return ingest_pb2.OrderBatch.FromString(data)
    except DecodeError:
        return None


def assert_well_formed_refusal(error: InvalidBatch, data: bytes) -> None:
    assert error.code in BATCH_ERRORS
    if error.code in BATCH_LEVEL_CODES:
        assert error.offset is None
    else:
        assert 0 <= error.offset <= len(data)
        assert str(error.offset) in error.message


def top_level_fields(data: bytes) -> list[tuple[int, int, int]]:
    """(tag offset, offset after the length varint, end) of each field of a canonical OrderBatch."""
    fields = []
    pos = 0
    while pos < len(data):
        start = pos
        pos += 1  # batch_id, source and orders all have one-byte tags
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        fields.append((start, pos, pos + length))
        pos += length
    return fields


@pytest.fixture(scope="module")
def generated_batch() -> bytes:
    batch = OrderGenerator(seed=5, duplicate_ratio=0.1, invalid_ratio=0.1).batch(16)
    batch.orders[3].event_id = ""  # one order keyed by its bytes
    return batch.SerializeToString()


# -- truncation and bit flips ------------------------------------------------------


def test_every_truncation_is_refused_at_the_cut_field_or_accepted_as_a_shorter_batch(generated_batch):
    data = generated_batch
    fields = top_level_fields(data)
    for size in range(len(data)):
        prefix = data[:size]
        native = outcome(Core(), prefix)
        official = official_parse(prefix)
        cut = [(start, body, end) for start, body, end in fields if start < size < end]
        if size == 0:
            assert (native.code, native.offset) == ("batch_id_empty", None)
        elif cut:
            start, body, _ = cut[0]
            expected_code = "truncated" if size < body else "length_past_end"
            assert isinstance(native, InvalidBatch), size
            assert (native.code, native.offset) == (expected_code, start + 1), size
            assert str(start + 1) in native.message
            assert official is None
        else:
            assert official is not None
            assert_same_result(native, ReferenceCore().process(prefix, now_ms=NOW_MS))


def test_bit_flips_give_a_result_or_invalid_batch_and_accepted_flips_match_the_reference(generated_batch):
    rng = random.Random(20240601)
    accepted = 0
    for _ in range(3000):
        flipped = bytearray(generated_batch)
        bit = rng.randrange(len(flipped) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        data = bytes(flipped)
        native = outcome(Core(dedup_max_keys=1024), data)
        if isinstance(native, InvalidBatch):
            assert_well_formed_refusal(native, data)
            continue
        accepted += 1
        parsed = official_parse(data)
        assert parsed is not None, f"native accepted what protobuf refuses: {data.hex()}"
        reference = ReferenceCore(dedup_max_keys=1024).process(data, now_ms=NOW_MS)
        if keyless_orders_look_alike_once_reserialised(parsed, reference):
            assert native.errors() == reference.errors
            assert native.accepted + native.duplicates == reference.accepted + reference.duplicates
        else:
            assert_same_result(native, reference)
    assert accepted > 100  # most flips land in values and must still decode


def keyless_orders_look_alike_once_reserialised(batch: ingest_pb2.OrderBatch, reference) -> bool:
    """Whether two valid orders without event_id re-serialise to the same bytes.

    The reference keys such orders by their re-serialised bytes, the native core
    by the bytes as sent; a flip can make two orders differ only in encoding
    (a field repeated, fields out of order), so only then may their dedup differ.
    """
    rejected = {error.index for error in reference.errors}
    keyless = [o.SerializeToString() for i, o in enumerate(batch.orders) if not o.event_id and i not in rejected]
    return len(set(keyless)) < len(keyless)


# -- hand-made corpus: exact code and offset ------------------------------------------

ORDER_ID_O = field_len(2, b"o")
BAD_UTF8 = {
    "overlong NUL": b"\xc0\x80",
    "surrogate": b"\xed\xa0\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "lone continuation byte": b"\x80",
    "truncated sequence": b"\xe2\x82",
    "five-byte form": b"\xf8\x88\x80\x80\x80",
    "0xff": b"\xff",
    "bad byte after valid text": "ok €".encode() + b"\xc0\xaf",
}

CORPUS = {
    # varints
    "11-byte varint": (BATCH_ID + tag(15, VARINT) + b"\xff" * 10 + b"\x01", "varint_too_long", 6),
    "11-byte varint in an order": (
        BATCH_ID + field_len(3, tag(4, VARINT) + b"\x80" * 10 + b"\x00"),
        "varint_too_long",
        8,  # order tag at 5, its length at 6, the status tag at 7
    ),
    "11-byte length varint": (BATCH_ID + tag(3, LEN) + b"\xff" * 10 + b"\x01", "varint_too_long", 6),
    "tag of 2**32": (BATCH_ID + b"\x80\x80\x80\x80\x10" + b"\x00", "invalid_field_number", 5),
    "tag of 2**35": (BATCH_ID + b"\x80\x80\x80\x80\x80\x01" + b"\x00", "invalid_field_number", 5),
    "truncated tag": (BATCH_ID + b"\x80", "truncated", 5),
    "truncated varint value": (BATCH_ID + tag(15, VARINT) + b"\x80\x80", "truncated", 6),
    "varint running past its order": (
        BATCH_ID + field_len(3, tag(4, VARINT) + b"\x80") + field_len(2, b"more bytes follow"),
        "truncated",
        8,
    ),
    "truncated fixed64": (BATCH_ID + tag(15, I64) + b"\x00" * 7, "truncated", 6),
    "truncated fixed32": (BATCH_ID + tag(15, I32) + b"\x00" * 3, "truncated", 6),
    "fixed32 running past its customer": (
        BATCH_ID + field_len(3, field_len(12, tag(9, I32) + b"\x00\x00")) + b"\x10\x00\x00\x00",
        "truncated",
        10,
    ),
    # lengths
    "length past the end": (BATCH_ID + tag(3, LEN) + varint(100) + b"x" * 5, "length_past_end", 6),
    "length past the enclosing order": (
        BATCH_ID + field_len(3, tag(2, LEN) + varint(10) + b"abc") + field_len(2, b"s" * 20),
        "length_past_end",
        8,
    ),
    "length 0xFFFFFFFF": (BATCH_ID + tag(3, LEN) + varint(0xFFFFFFFF) + b"x" * 8, "length_past_end", 6),
    "length 2**63": (BATCH_ID + tag(3, LEN) + varint(2**63) + b"x" * 8, "length_past_end", 6),
    "length 2**64-1": (BATCH_ID + tag(2, LEN) + varint(2**64 - 1) + b"x" * 8, "length_past_end", 6),
    "unknown field length past the end": (BATCH_ID + tag(99, LEN) + varint(3) + b"ab", "length_past_end", 7),
    # wire types and field numbers
    "order_id as varint": (BATCH_ID + field_len(3, field_varint(2, 5)), "bad_wire_type", 7),
    "orders as fixed32": (BATCH_ID + tag(3, I32) + b"\x00" * 4, "bad_wire_type", 5),
    "batch_id as varint": (field_varint(1, 7) + BATCH_ID, "bad_wire_type", 0),
    "order_item_id as LEN": (BATCH_ID + field_len(3, field_len(10, field_len(1, b"x"))), "bad_wire_type", 9),
    "order_status as fixed64": (BATCH_ID + field_len(3, tag(4, I64) + b"\x00" * 8), "bad_wire_type", 7),
    "customer as varint": (BATCH_ID + field_len(3, ORDER_ID_O + field_varint(12, 1)), "bad_wire_type", 10),
    "Timestamp.seconds as LEN": (BATCH_ID + field_len(3, field_len(5, field_len(1, b""))), "bad_wire_type", 9),
    "price_cents as a group": (
        BATCH_ID + field_len(3, field_len(10, tag(5, SGROUP) + tag(5, EGROUP))),
        "bad_wire_type",
        9,
    ),
    "wire type 6": (BATCH_ID + tag(15, 6) + b"\x00", "bad_wire_type", 5),
    "wire type 7": (BATCH_ID + tag(15, 7) + b"\x00", "bad_wire_type", 5),
    "wire type 7 in an order": (BATCH_ID + field_len(3, ORDER_ID_O + tag(20, 7)), "bad_wire_type", 10),
    "field number 0": (BATCH_ID + tag(0, VARINT) + b"\x01", "invalid_field_number", 5),
    "field number 0 as LEN": (BATCH_ID + tag(0, LEN) + b"\x00", "invalid_field_number", 5),
    "field number 0 in a customer": (
        BATCH_ID + field_len(3, field_len(12, tag(0, VARINT) + b"\x01")),
        "invalid_field_number",
        9,
    ),
    # groups
    "end-group without start": (BATCH_ID + tag(15, EGROUP), "bad_wire_type", 5),
    "end-group without start in an item": (
        BATCH_ID + field_len(3, field_len(10, field_varint(1, 1) + tag(7, EGROUP))),
        "bad_wire_type",
        11,
    ),
    "end-group of another field": (BATCH_ID + tag(15, SGROUP) + tag(16, EGROUP), "bad_wire_type", 6),
    "unterminated group": (BATCH_ID + tag(15, SGROUP) + field_varint(1, 1), "truncated", 8),
    "group running past its order": (
        BATCH_ID + field_len(3, tag(15, SGROUP) + field_varint(1, 1)) + tag(15, EGROUP),
        "truncated",
        10,
    ),
    "10000 nested groups": (BATCH_ID + tag(15, SGROUP) * 10_000, "nesting_too_deep", 5 + 32),
    "33 nested groups": (BATCH_ID + tag(15, SGROUP) * 33 + tag(15, EGROUP) * 33, "nesting_too_deep", 5 + 32),
    "33 nested groups in an order": (
        BATCH_ID + field_len(3, ORDER_ID_O + tag(15, SGROUP) * 33 + tag(15, EGROUP) * 33),
        "nesting_too_deep",
        5 + 2 + 3 + 32,
    ),
    # strings
    **{
        f"invalid UTF-8 in batch_id: {name}": (field_len(1, bad) + BATCH_ID, "invalid_utf8", 2)
        for name, bad in BAD_UTF8.items()
    },
    **{
        f"invalid UTF-8 in source: {name}": (BATCH_ID + field_len(2, bad), "invalid_utf8", 7)
        for name, bad in BAD_UTF8.items()
    },
    **{
        f"invalid UTF-8 in order_id: {name}": (BATCH_ID + field_len(3, field_len(2, bad)), "invalid_utf8", 9)
        for name, bad in BAD_UTF8.items()
    },
    **{
        f"invalid UTF-8 in customer_city: {name}": (
            BATCH_ID + field_len(3, field_len(12, field_len(3, bad))),
            "invalid_utf8",
            11,
        )
        for name, bad in BAD_UTF8.items()
    },
    "invalid UTF-8 in product_id": (
        BATCH_ID + field_len(3, ORDER_ID_O + field_len(10, field_len(2, b"\xed\xbf\xbf"))),
        "invalid_utf8",
        14,
    ),
}


@pytest.mark.parametrize("name", CORPUS)
def test_malformed_input_is_refused_with_exact_code_and_offset(name):
    data, code, offset = CORPUS[name]
    with pytest.raises(InvalidBatch) as raised:
        Core().process(data, now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == (code, offset)
    assert str(offset) in raised.value.message
    assert raised.value.retriable is False


def test_32_nested_groups_are_skipped():
    for body in (b"", ORDER_ID_O):
        nested = tag(15, SGROUP) * 32 + field_varint(1, 1) + tag(15, EGROUP) * 32
        data = BATCH_ID + nested + field_len(3, body + nested)
        result = Core().process(data, now_ms=NOW_MS)
        assert (result.batch_id, result.accepted + result.rejected) == ("b-1", 1)
        assert official_parse(data) is not None


def _order_with_items(item_count: int) -> tuple[bytes, int]:
    """An order's bytes with `item_count` items, and the offset of the last item's tag within them."""
    head = valid_order(1)
    del head.items[:]
    head_bytes = head.SerializeToString()
    item = field_len(10, ingest_pb2.OrderItem(order_item_id=1, product_id="p").SerializeToString())
    return head_bytes + item * item_count, len(head_bytes) + len(item) * (item_count - 1)


def test_more_orders_than_the_limit_is_refused_at_the_first_order_over():
    orders = [valid_order(n) for n in range(4)]
    data = batch_bytes(*orders)
    fourth_order_tag = top_level_fields(data)[-1][0]
    core = Core(max_orders_per_batch=3)
    with pytest.raises(InvalidBatch) as raised:
        core.process(data, now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("too_many_orders", fourth_order_tag)
    assert str(fourth_order_tag) in raised.value.message
    assert core.process(batch_bytes(*orders[:3]), now_ms=NOW_MS).accepted == 3


def test_more_items_than_the_limit_is_refused_at_the_first_item_over():
    order, third_item = _order_with_items(3)
    data = BATCH_ID + field_len(3, order)
    order_body = len(BATCH_ID) + 1 + len(varint(len(order)))
    with pytest.raises(InvalidBatch) as raised:
        Core(max_items_per_order=2).process(data, now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("too_many_items", order_body + third_item)
    two_items, _ = _order_with_items(2)
    assert Core(max_items_per_order=2).process(BATCH_ID + field_len(3, two_items), now_ms=NOW_MS).rejected == 1


def test_more_payments_than_the_limit_is_refused_at_the_first_payment_over():
    payment = field_len(11, field_varint(2, 1))
    order = ORDER_ID_O + payment * 3
    data = BATCH_ID + field_len(3, order)
    third_payment = len(BATCH_ID) + 2 + len(ORDER_ID_O) + 2 * len(payment)
    with pytest.raises(InvalidBatch) as raised:
        Core(max_payments_per_order=2).process(data, now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("too_many_payments", third_payment)


# -- forward compatibility ---------------------------------------------------------------

# One unknown field of every wire type, a group holding a nested group, and the
# largest field number; none is a field of any message in the schema.
UNKNOWN_FIELDS = (
    field_varint(1000, 2**64 - 1)
    + tag(1001, I64)
    + b"\x01" * 8
    + field_len(1002, b"\xff\xfe unknown bytes need not be UTF-8")
    + tag(1003, I32)
    + b"\x02" * 4
    + tag(1004, SGROUP)
    + field_varint(1, 7)
    + tag(1005, SGROUP)
    + field_len(2, b"\xc0")
    + tag(1005, EGROUP)
    + tag(1004, EGROUP)
    + field_varint(2**29 - 1, 1)
)


def encode(message, filler_in: set[str] = frozenset(), filler: bytes = UNKNOWN_FIELDS) -> bytes:
    """Canonical protobuf encoding of `message`, with `filler` before every field and at the
    end of every message whose type name is in `filler_in`."""
    pad = filler if message.DESCRIPTOR.name in filler_in else b""
    out = bytearray()
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for v in values:
            out += pad
            if field.type == field.TYPE_MESSAGE:
                out += field_len(field.number, encode(v, filler_in, filler))
            elif field.type == field.TYPE_STRING:
                out += field_len(field.number, v.encode())
            else:
                out += field_varint(field.number, v)
    return bytes(out + pad)


def _forward_compat_batch() -> ingest_pb2.OrderBatch:
    orders = [valid_order(n) for n in range(3)]
    orders[1].order_purchase_timestamp.nanos = 123_456_789
    orders[1].payments.add(payment_sequential=2, payment_type=3, payment_installments=1, payment_value_cents=1)
    orders[2].items[0].price_cents = -1  # rejected, and must stay rejected
    return ingest_pb2.OrderBatch(batch_id="fwd", source="tests", orders=orders)


def test_encoder_without_filler_is_the_canonical_encoding():
    batch = _forward_compat_batch()
    assert encode(batch) == batch.SerializeToString()


@pytest.mark.parametrize(
    "levels",
    [
        {"OrderBatch"},
        {"Order"},
        {"OrderItem"},
        {"OrderPayment"},
        {"Customer"},
        {"Timestamp"},
        {"OrderBatch", "Order", "OrderItem", "OrderPayment", "Customer", "Timestamp"},
    ],
    ids=lambda levels: "+".join(sorted(levels)),
)
def test_unknown_fields_of_every_wire_type_are_skipped_at_every_depth(levels):
    batch = _forward_compat_batch()
    plain = Core().process(batch.SerializeToString(), now_ms=NOW_MS)
    data = encode(batch, levels)
    padded = Core().process(data, now_ms=NOW_MS)
    assert (padded.batch_id, padded.source) == ("fwd", "tests")
    assert (padded.accepted, padded.duplicates, padded.rejected) == (2, 0, 1)
    assert padded.errors() == plain.errors()
    for name in ("orders", "order_items", "order_payments", "customers"):
        assert rows(padded.table(name)) == rows(plain.table(name)), name
    spans = rows(padded.order_spans)
    assert [data[s["offset"] : s["offset"] + s["length"]] for s in spans] == [
        encode(batch.orders[i], levels) for i in (0, 1)
    ]


def test_repeated_singular_fields_keep_the_last_value():
    order = valid_order(1).SerializeToString()
    order += field_len(1, b"evt-later") + field_len(2, b"order-later")
    order += field_varint(4, ingest_pb2.ORDER_STATUS_SHIPPED)
    data = field_len(1, b"first") + field_len(3, order) + field_len(1, b"second") + field_len(2, b"src")
    result = Core().process(data, now_ms=NOW_MS)
    assert (result.batch_id, result.source) == ("second", "src")
    [row] = rows(result.orders)
    assert (row["event_id"], row["order_id"], row["order_status"], row["batch_id"]) == (
        "evt-later",
        "order-later",
        "shipped",
        "second",
    )
    parsed = ingest_pb2.OrderBatch.FromString(data)
    assert (parsed.batch_id, parsed.orders[0].order_id) == ("second", "order-later")


def test_a_later_empty_string_overrides_an_earlier_value():
    order = valid_order(1).SerializeToString() + field_len(2, b"")
    result = Core().process(BATCH_ID + field_len(3, order), now_ms=NOW_MS)
    assert result.errors() == [RecordError(0, "evt-1", "order_id_empty", "order_id is empty")]


def test_repeated_item_and_payment_scalars_keep_the_last_value():
    order = valid_order(1)
    del order.items[:]
    del order.payments[:]
    item = ingest_pb2.OrderItem(order_item_id=1, price_cents=100).SerializeToString() + field_varint(5, 250)
    payment = ingest_pb2.OrderPayment(payment_type=1).SerializeToString() + field_varint(2, 2)
    data = BATCH_ID + field_len(3, order.SerializeToString() + field_len(10, item) + field_len(11, payment))
    result = Core().process(data, now_ms=NOW_MS)
    assert [str(r["price"]) for r in rows(result.order_items)] == ["2.50"]
    assert [r["payment_type"] for r in rows(result.order_payments)] == ["boleto"]


def test_customer_sent_in_two_parts_is_merged():
    order = valid_order(1)
    order.ClearField("customer")
    first = field_len(1, b"unique-1") + field_len(3, b"first city")
    second = field_len(3, b"second city") + field_len(4, b"RJ")
    data = BATCH_ID + field_len(3, order.SerializeToString() + field_len(12, first) + field_len(12, second))
    result = Core().process(data, now_ms=NOW_MS)
    assert rows(result.customers) == [
        {
            "customer_id": "cust-1",
            "customer_unique_id": "unique-1",
            "customer_zip_code_prefix": "",
            "customer_city": "second city",
            "customer_state": "RJ",
            "batch_id": "b-1",
            "source": "",
        }
    ]
    assert_same_result(result, ReferenceCore().process(data, now_ms=NOW_MS))


def test_timestamp_sent_in_two_parts_is_merged():
    order = valid_order(1)
    order.ClearField("order_purchase_timestamp")
    order.items[0].ClearField("shipping_limit_date")
    head = order.SerializeToString()
    purchase = field_len(5, field_varint(1, PURCHASE_S)) + field_len(5, field_varint(2, 500_000))
    shipping = field_len(4, field_varint(2, 7_000)) + field_len(4, field_varint(1, PURCHASE_S + 1))
    item = field_len(10, ingest_pb2.OrderItem(order_item_id=2).SerializeToString() + shipping)
    data = BATCH_ID + field_len(3, head + purchase + item)
    result = Core().process(data, now_ms=NOW_MS)
    [row] = rows(result.orders)
    assert row["order_purchase_timestamp"] == PURCHASE_AT + timedelta(microseconds=500)
    shipping_limits = [r["shipping_limit_date"] for r in rows(result.order_items)]
    assert shipping_limits[1] == PURCHASE_AT + timedelta(seconds=1, microseconds=7)
    assert_same_result(result, ReferenceCore().process(data, now_ms=NOW_MS))


def test_enum_and_uint32_fields_take_the_low_32_bits_of_the_varint():
    order = valid_order(1)
    del order.items[:]
    del order.payments[:]
    item = field_varint(1, 2**32 + 7) + field_len(4, field_varint(1, PURCHASE_S) + field_varint(2, 2**32 + 5))
    payment = field_varint(1, 2**40 + 2) + field_varint(2, 2**32 + 1) + field_varint(3, 2**33 + 4)
    body = order.SerializeToString() + field_varint(4, 2**32 + 3) + field_len(10, item) + field_len(11, payment)
    data = BATCH_ID + field_len(3, body)
    result = Core().process(data, now_ms=NOW_MS)
    assert rows(result.orders)[0]["order_status"] == "invoiced"
    [item_row] = rows(result.order_items)
    assert item_row["order_item_id"] == 7
    assert item_row["shipping_limit_date"] == PURCHASE_AT  # 5 ns round down to 0 us
    [payment_row] = rows(result.order_payments)
    assert (payment_row["payment_sequential"], payment_row["payment_type"], payment_row["payment_installments"]) == (
        2,
        "credit_card",
        4,
    )
    assert_same_result(result, ReferenceCore().process(data, now_ms=NOW_MS))


def test_ten_byte_varint_overflowing_64_bits_is_truncated_not_refused():
    # 0xFF * 9 + 0x7F: 70 bits of ones; the low 64 as int32 give -1.
    body = ORDER_ID_O + field_len(3, b"c") + tag(4, VARINT) + b"\xff" * 9 + b"\x7f"
    body += field_len(5, field_varint(1, PURCHASE_S))
    data = BATCH_ID + field_len(3, body)
    result = Core().process(data, now_ms=NOW_MS)
    assert result.errors() == [RecordError(0, "", "order_status_unknown", "order_status -1 is not a known OrderStatus")]
    assert official_parse(data).orders[0].order_status == -1


@pytest.mark.parametrize("status", [9, 12345, 2**31 - 1, -7])
def test_unknown_order_status_on_the_wire_rejects_the_order_not_the_batch(status):
    body = valid_order(1).SerializeToString() + field_varint(4, status)
    data = BATCH_ID + field_len(3, body) + field_len(3, valid_order(2).SerializeToString())
    result = Core().process(data, now_ms=NOW_MS)
    assert result.errors() == [
        RecordError(0, "evt-1", "order_status_unknown", f"order_status {status} is not a known OrderStatus")
    ]
    assert result.accepted == 1


def test_unknown_payment_type_on_the_wire_rejects_the_order_not_the_batch():
    order = valid_order(1)
    payment = ingest_pb2.OrderPayment(payment_sequential=1, payment_value_cents=5).SerializeToString()
    body = order.SerializeToString() + field_len(11, payment + field_varint(2, 99))
    result = Core().process(BATCH_ID + field_len(3, body), now_ms=NOW_MS)
    assert result.errors() == [
        RecordError(0, "evt-1", "payment_type_unknown", "payments[1].payment_type 99 is not a known PaymentType")
    ]


def test_largest_field_number_is_an_ordinary_unknown_field():
    data = BATCH_ID + field_varint(2**29 - 1, 1) + field_len(3, valid_order(1).SerializeToString())
    assert Core().process(data, now_ms=NOW_MS).accepted == 1
    assert official_parse(data) is not None


def test_decode_error_message_names_the_offset_and_the_field_path():
    item = ingest_pb2.OrderItem(order_item_id=1).SerializeToString() + tag(5, VARINT) + b"\x80"
    second_order = field_len(2, b"o") + field_len(10, item)
    data = BATCH_ID + field_len(3, valid_order(0).SerializeToString()) + field_len(3, second_order)
    price_offset = len(data) - 1
    with pytest.raises(InvalidBatch) as raised:
        Core().process(data, now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("truncated", price_offset)
    assert str(price_offset) in raised.value.message
    assert "orders[1].items[0].price_cents" in raised.value.message
