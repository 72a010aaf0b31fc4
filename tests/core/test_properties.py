"""Property tests: on random OrderBatch messages the native core and the
pure-Python reference agree on everything (counts, errors, tables, dedup), and
the side tables point at the right bytes of the input."""

from __future__ import annotations

import pyarrow as pa
from aiokafka.partitioner import murmur2
from batches import (
    END_OF_RANGE_S,
    FIRST_VALID_S,
    INT32_MAX,
    MONEY_MAX_CENTS,
    NOW_MS,
    assert_same_outcome,
    assert_same_result,
    field_len,
    outcome,
    process_both,
    rows,
)
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core, InvalidBatch
from keystone_ingest.proto.v1 import ingest_pb2

from benchmarks.reference.core import ReferenceCore

# Fixed and derandomized so CI runs the same examples every time.
PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT32_MIN = -(2**31)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX = 2**32 - 1

# -- field values: "fine" passes validation, "any" may break it -------------------------

# Characters of 1 to 4 UTF-8 bytes, so byte lengths straddle the limits.
_WIDE_CHARS = st.sampled_from(["a", "Z", "0", "é", "ß", "€", "中", "😀", "\x00"])
fine_text = st.text(st.characters(codec="utf-8"), max_size=12)  # at most 48 bytes
fine_id = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)  # 1..64 bytes


@st.composite
def text_of_about(draw, limits_bytes: tuple[int, ...]):
    """A string whose UTF-8 length is within 4 bytes of one of `limits_bytes`."""
    target = max(0, draw(st.sampled_from(limits_bytes)) + draw(st.integers(-4, 4)))
    char = draw(_WIDE_CHARS)
    text = char * (target // len(char.encode()))
    return text + "a" * (target - len(text.encode()))


any_text = st.one_of(st.just(""), fine_text, text_of_about((64, 128, 256)))
# A small pool makes repeated event_ids (in-batch and cross-batch duplicates) common.
event_id_pool = st.sampled_from(["", "", "evt-1", "evt-2", "evt-ß", "😀"])
fine_event_id = st.one_of(event_id_pool, st.uuids().map(str), fine_text)
any_event_id = st.one_of(fine_event_id, text_of_about((128,)))

fine_status = st.integers(1, 8)
any_status = st.one_of(st.integers(0, 10), st.sampled_from([-1, INT32_MIN, INT32_MAX, 1000]))
fine_payment_type = st.integers(1, 5)
any_payment_type = st.one_of(st.integers(0, 7), st.sampled_from([-1, INT32_MIN, INT32_MAX]))

fine_seconds = st.one_of(
    st.sampled_from([FIRST_VALID_S, END_OF_RANGE_S - 1, 1_500_000_000]),
    st.integers(FIRST_VALID_S, END_OF_RANGE_S - 1),
)
any_seconds = st.one_of(
    fine_seconds,
    st.sampled_from([FIRST_VALID_S - 1, END_OF_RANGE_S, 0, -1, INT64_MIN, INT64_MAX]),
    st.integers(INT64_MIN, INT64_MAX),
)
fine_nanos = st.one_of(st.sampled_from([0, 1, 999, 1000, 999_999_999]), st.integers(0, 999_999_999))
any_nanos = st.one_of(fine_nanos, st.sampled_from([-1, 1_000_000_000, INT32_MIN, INT32_MAX]))

fine_cents = st.one_of(st.sampled_from([0, 1, 99, 100, MONEY_MAX_CENTS]), st.integers(0, 10_000_000))
any_cents = st.one_of(
    fine_cents, st.sampled_from([-1, MONEY_MAX_CENTS + 1, INT64_MIN, INT64_MAX]), st.integers(INT64_MIN, INT64_MAX)
)
fine_counter = st.one_of(st.sampled_from([0, 1, INT32_MAX]), st.integers(0, 20))
any_counter = st.one_of(fine_counter, st.sampled_from([INT32_MAX + 1, UINT32_MAX]))


def timestamp(seconds, nanos):
    return st.builds(Timestamp, seconds=seconds, nanos=nanos)


# -- messages -------------------------------------------------------------------------------


# The parts of an order a test example may break; the rest stay valid, so
# every rule (not only the first few) gets to be the first one failing.
BREAKABLE = (
    "event_id",
    "order_id",
    "customer_id",
    "order_status",
    "purchase_timestamp",
    "other_timestamps",
    "item_ids",
    "item_text",
    "shipping_limit_date",
    "item_money",
    "payment_counters",
    "payment_type",
    "payment_money",
    "customer",
)


@st.composite
def orders(draw):
    """An Order valid in every part except (often) one or two parts drawn from BREAKABLE."""
    broken = draw(st.sets(st.sampled_from(BREAKABLE), max_size=2))

    def strategy(part, fine, anything):
        return st.one_of(fine, anything) if part in broken else fine

    def value(part, fine, anything):
        return draw(strategy(part, fine, anything))

    def optional(present):
        return draw(st.none() | present)

    order = ingest_pb2.Order(
        event_id=value("event_id", fine_event_id, any_event_id),
        order_id=value("order_id", fine_id, any_text),
        customer_id=value("customer_id", fine_id, any_text),
        order_status=value("order_status", fine_status, any_status),
    )
    fine_ts = timestamp(fine_seconds, fine_nanos)
    any_ts = timestamp(any_seconds, any_nanos)
    if "purchase_timestamp" in broken:
        purchase = draw(st.none() | any_ts)
    else:
        purchase = draw(fine_ts)
    if purchase is not None:
        order.order_purchase_timestamp.CopyFrom(purchase)
    for name in (
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    ):
        ts = optional(strategy("other_timestamps", fine_ts, any_ts))
        if ts is not None:
            getattr(order, name).CopyFrom(ts)

    item_count = draw(st.integers(0, 4))
    if "item_ids" in broken:
        item_ids = draw(st.lists(st.one_of(st.integers(0, 3), any_counter), min_size=item_count, max_size=item_count))
    else:
        item_ids = draw(st.lists(st.integers(1, INT32_MAX), min_size=item_count, max_size=item_count, unique=True))
    for item_id in item_ids:
        item = order.items.add(
            order_item_id=item_id,
            product_id=value("item_text", fine_text, any_text),
            seller_id=value("item_text", fine_text, any_text),
            price_cents=value("item_money", fine_cents, any_cents),
            freight_value_cents=value("item_money", fine_cents, any_cents),
        )
        shipping_limit = optional(strategy("shipping_limit_date", fine_ts, any_ts))
        if shipping_limit is not None:
            item.shipping_limit_date.CopyFrom(shipping_limit)

    for _ in range(draw(st.integers(0, 3))):
        order.payments.add(
            payment_sequential=value("payment_counters", fine_counter, any_counter),
            payment_type=value("payment_type", fine_payment_type, any_payment_type),
            payment_installments=value("payment_counters", fine_counter, any_counter),
            payment_value_cents=value("payment_money", fine_cents, any_cents),
        )

    if draw(st.booleans()):
        customer = order.customer
        customer.SetInParent()
        customer.customer_unique_id = value("customer", fine_text, any_text)
        customer.customer_zip_code_prefix = value("customer", fine_text, any_text)
        customer.customer_city = value("customer", fine_text, any_text)
        customer.customer_state = value("customer", fine_text, any_text)
    return order


@st.composite
def order_lists(draw, max_size=8):
    """Orders with some exact copies mixed in (same bytes, so duplicates even without event_id)."""
    result = draw(st.lists(orders(), max_size=max_size))
    if result:
        for _ in range(draw(st.integers(0, 3))):
            copy = ingest_pb2.Order()
            copy.CopyFrom(result[draw(st.integers(0, len(result) - 1))])
            result.insert(draw(st.integers(0, len(result))), copy)
    return result


@st.composite
def batch_ids(draw):
    """Mostly valid; about one batch in ten breaks a batch rule (empty, or around the 128-byte limit)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.just("") | text_of_about((128,)))
    return draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=20))


@st.composite
def batches(draw):
    return ingest_pb2.OrderBatch(
        batch_id=draw(batch_ids()),
        source=draw(st.one_of(st.just(""), fine_text, text_of_about((256,)))),
        orders=draw(order_lists()),
    )


# -- properties -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(batches())
def test_native_and_reference_agree_on_any_batch(batch):
    native, reference = process_both(batch.SerializeToString())
    assert_same_outcome(native, reference)


@PROPERTY_SETTINGS
@given(batches())
def test_order_spans_slice_out_exactly_the_accepted_orders(batch):
    data = batch.SerializeToString()
    native = outcome(Core(), data)
    if isinstance(native, InvalidBatch):
        return
    reference = ReferenceCore().process(data, now_ms=NOW_MS)
    spans = rows(native.order_spans)
    assert len(spans) == native.accepted == len(rows(native.orders))
    accepted = [batch.orders[i] for i in reference.accepted_indices]
    assert [data[s["offset"] : s["offset"] + s["length"]] for s in spans] == [
        order.SerializeToString() for order in accepted
    ]
    # aiokafka's murmur2 is an independent copy of the Java client's.
    assert [s["key_hash"] for s in spans] == [murmur2(o.order_id.encode()) & 0x7FFFFFFF for o in accepted]
    assert [(s["item_count"], s["payment_count"], s["customer_count"]) for s in spans] == [
        (len(o.items), len(o.payments), int(o.HasField("customer"))) for o in accepted
    ]


@PROPERTY_SETTINGS
@given(batches())
def test_rejects_rows_carry_index_event_id_reason_and_the_orders_bytes(batch):
    data = batch.SerializeToString()
    native = outcome(Core(), data)
    if isinstance(native, InvalidBatch):
        return
    rejects = rows(native.rejects)
    assert [(r["index"], r["event_id"], r["reason"], r["message"]) for r in rejects] == [
        (e.index, e.event_id, e.reason, e.message) for e in native.errors()
    ]
    for r in rejects:
        assert data[r["offset"] : r["offset"] + r["length"]] == batch.orders[r["index"]].SerializeToString()
        assert r["event_id"] == batch.orders[r["index"]].event_id


@st.composite
def batch_sequences(draw):
    """A pool of orders sent as several batches (so orders recur across batches), with a clock
    that moves forward and, between batches, sometimes a `forget` of an earlier result."""
    pool = draw(order_lists(max_size=10))
    steps = []
    now_ms = NOW_MS
    for k in range(draw(st.integers(1, 6))):
        now_ms += draw(st.sampled_from([0, 1, 999, 1000, 1001, 2500]))
        picked = draw(st.lists(st.sampled_from(pool), max_size=6)) if pool else []
        batch = ingest_pb2.OrderBatch(batch_id=f"batch-{k}", source="prop", orders=picked)
        forget = draw(st.none() | st.integers(0, k - 1)) if k else None
        steps.append((batch.SerializeToString(), now_ms, forget))
    return steps


@PROPERTY_SETTINGS
@given(
    steps=batch_sequences(),
    max_keys=st.integers(1, 8),
    max_age_s=st.sampled_from([1.0, 2.0, 3600.0]),
)
def test_native_and_reference_agree_across_a_sequence_of_batches(steps, max_keys, max_age_s):
    native_core = Core(dedup_max_keys=max_keys, dedup_max_age_s=max_age_s)
    reference_core = ReferenceCore(dedup_max_keys=max_keys, dedup_max_age_s=max_age_s)
    native_results, reference_results = [], []
    for data, now_ms, forget in steps:
        if forget is not None:
            assert native_core.forget(native_results[forget]) == reference_core.forget(reference_results[forget])
        native = native_core.process(data, now_ms=now_ms)
        reference = reference_core.process(data, now_ms=now_ms)
        assert_same_outcome(native, reference)
        assert native_core.dedup_size == reference_core.dedup_size
        native_results.append(native)
        reference_results.append(reference)


@PROPERTY_SETTINGS
@given(st.lists(orders(), min_size=1, max_size=6))
def test_tables_hold_decimal_money_and_microsecond_timestamps(order_list):
    # An independent reading of the value rules, not via the reference.
    data = ingest_pb2.OrderBatch(batch_id="values", orders=order_list).SerializeToString()
    native = outcome(Core(), data)
    reference = ReferenceCore().process(data, now_ms=NOW_MS)
    accepted = [order_list[i] for i in reference.accepted_indices]
    items = pa.record_batch(native.order_items).to_pydict()
    expected_items = [item for order in accepted for item in order.items]
    assert [int(d.scaleb(2)) for d in items["price"]] == [i.price_cents for i in expected_items]
    assert [int(d.scaleb(2)) for d in items["freight_value"]] == [i.freight_value_cents for i in expected_items]
    purchase = pa.record_batch(native.orders).column("order_purchase_timestamp").cast(pa.int64()).to_pylist()
    assert purchase == [
        o.order_purchase_timestamp.seconds * 1_000_000 + o.order_purchase_timestamp.nanos // 1000 for o in accepted
    ]


def test_generated_batches_match_the_reference_batch_by_batch():
    generator = OrderGenerator(seed=31, duplicate_ratio=0.05, invalid_ratio=0.05)
    native_core, reference_core = Core(), ReferenceCore()
    for k in range(3):
        data = generator.batch(3000).SerializeToString()
        now_ms = NOW_MS + k * 1000
        assert_same_result(native_core.process(data, now_ms=now_ms), reference_core.process(data, now_ms=now_ms))


# Whole and broken UTF-8 sequences, so strings straddle the 8-byte words the
# native check reads at a time with every kind of malformation.
_UTF8_PIECES = [
    b"a",
    b"0123456",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xf0\x9f\x98\x80",
    b"\xc2\x80",
    b"\xdf\xbf",
    b"\xef\xbf\xbf",
    b"\xf4\x8f\xbf\xbf",
    b"\xc0",
    b"\xc1\xbf",
    b"\x80",
    b"\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xe0\x80\x80",
    b"\xe0\x9f\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xff",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]
utf8_like_bytes = st.one_of(
    st.lists(st.sampled_from(_UTF8_PIECES), max_size=12).map(b"".join),
    st.binary(max_size=40),
)


@PROPERTY_SETTINGS
@given(utf8_like_bytes)
def test_strings_are_refused_exactly_when_they_are_not_utf8(content):
    try:
        content.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    batch_id = field_len(1, b"b-1")
    for data, content_offset in (
        (batch_id + field_len(3, field_len(2, content)), 9),  # order_id
        (batch_id + field_len(3, field_len(12, field_len(3, content))), 11),  # customer.customer_city
    ):
        native = outcome(Core(), data)
        if valid:
            assert not isinstance(native, InvalidBatch), native
            assert native.rejected == 1
        else:
            assert (native.code, native.offset) == ("invalid_utf8", content_offset)
