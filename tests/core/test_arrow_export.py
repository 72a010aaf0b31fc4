"""The Arrow side of a result: exact schemas, values as the spec writes them,
zero-copy export through the PyCapsule protocol, data that outlives its
result, and a `process` that lets other Python threads run."""

from __future__ import annotations

import gc
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
from batches import NOW_MS, PURCHASE_S, batch_bytes, field_len, process, rows, valid_order
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import TABLES, Core, batch_id_of, schema
from keystone_ingest.proto.v1 import ingest_pb2

from benchmarks.reference.core import SCHEMAS as REFERENCE_SCHEMAS

TIMESTAMP = pa.timestamp("us", tz="UTC")

# The four Bronze tables as the pure-Python reference (the spec) declares them;
# the core's own tables, exactly.
EXPECTED_SCHEMAS = {
    **REFERENCE_SCHEMAS,
    "order_spans": pa.schema(
        [
            ("offset", pa.int64()),
            ("length", pa.int32()),
            ("key_hash", pa.int32()),
            ("item_count", pa.int32()),
            ("payment_count", pa.int32()),
            ("customer_count", pa.int32()),
            ("event_id_offset", pa.int64()),
            ("event_id_length", pa.int32()),
            ("order_id_offset", pa.int64()),
            ("order_id_length", pa.int32()),
        ]
    ),
    "rejects": pa.schema(
        [
            ("index", pa.int32()),
            ("event_id", pa.utf8()),
            ("reason", pa.utf8()),
            ("message", pa.utf8()),
            ("offset", pa.int64()),
            ("length", pa.int32()),
        ]
    ),
}
ALL_TABLES = (*TABLES, "order_spans", "rejects")
AT = datetime.fromtimestamp(PURCHASE_S, UTC)


@pytest.fixture(scope="module")
def generated_result():
    data = OrderGenerator(seed=21, duplicate_ratio=0.05, invalid_ratio=0.05).batch(500).SerializeToString()
    return Core().process(data, now_ms=NOW_MS)


# -- schemas --------------------------------------------------------------------------


def test_bronze_tables_are_the_four_olist_files():
    assert TABLES == ("orders", "order_items", "order_payments", "customers")


@pytest.mark.parametrize("name", ALL_TABLES)
def test_table_schema_is_exactly_the_spec(name, generated_result):
    table = pa.record_batch(generated_result.table(name))
    assert table.schema == EXPECTED_SCHEMAS[name]
    assert all(field.nullable for field in table.schema)
    assert table.schema.metadata is None


@pytest.mark.parametrize("name", ALL_TABLES)
def test_schema_function_exports_the_same_schema_as_the_tables(name, generated_result):
    assert pa.schema(schema(name)) == pa.record_batch(generated_result.table(name)).schema
    assert schema(name).name == name


def test_schema_of_an_unknown_table_is_a_key_error():
    with pytest.raises(KeyError):
        schema("sellers")


def test_schema_object_carries_no_rows():
    with pytest.raises(TypeError):
        pa.record_batch(schema("orders"))


# -- export -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_TABLES)
def test_each_table_is_exported_without_copying(name, generated_result):
    exported = generated_result.table(name)
    first = pa.record_batch(exported)
    second = pa.record_batch(exported)
    again = pa.record_batch(getattr(generated_result, name))
    assert first.num_rows == len(exported) == exported.num_rows > 0
    assert exported.name == name
    for column in range(first.num_columns):
        addresses = [
            [buffer.address if buffer is not None else None for buffer in table.column(column).buffers()]
            for table in (first, second, again)
        ]
        assert addresses[0] == addresses[1] == addresses[2]
    assert first.equals(second)


def test_a_core_without_bronze_tables_builds_the_same_spans_and_rejects_and_says_what_it_did_not_build():
    raw = OrderGenerator(seed=7, invalid_ratio=0.1, duplicate_ratio=0.05).batch(300).SerializeToString()
    full = Core().process(raw, now_ms=NOW_MS)
    lean = Core(bronze_tables=False).process(raw, now_ms=NOW_MS)
    assert (lean.accepted, lean.duplicates, lean.rejected) == (full.accepted, full.duplicates, full.rejected)
    assert full.rejected > 0 and full.duplicates > 0
    assert pa.record_batch(lean.order_spans).equals(pa.record_batch(full.order_spans))
    assert pa.record_batch(lean.rejects).equals(pa.record_batch(full.rejects))
    assert lean.errors() == full.errors()
    for name in TABLES:
        with pytest.raises(
            ValueError, match=f"the {name} table was not built: this Core was made with bronze_tables=False"
        ):
            lean.table(name)
    with pytest.raises(ValueError, match="the orders table was not built"):
        pa.record_batch(lean.orders)


def test_row_counts_match_the_result_counts(generated_result):
    result = generated_result
    assert len(result.orders) == len(result.order_spans) == result.accepted
    assert len(result.rejects) == result.rejected
    assert result.accepted + result.duplicates + result.rejected == 500


def test_exported_data_outlives_the_result():
    data = OrderGenerator(seed=22).batch(200).SerializeToString()
    result = Core().process(data, now_ms=NOW_MS)
    expected = {name: pa.record_batch(result.table(name)).to_pylist() for name in TABLES}
    imported = {name: pa.record_batch(result.table(name)) for name in TABLES}
    held = result.order_items  # an ArrowBatch not yet imported
    del result
    gc.collect()
    _churn_the_allocator()
    for name in TABLES:
        assert imported[name].to_pylist() == expected[name]
    assert pa.record_batch(held).to_pylist() == expected["order_items"]


def test_tables_do_not_point_into_the_input_buffer():
    data = bytearray(batch_bytes(valid_order(1), valid_order(2)))
    result = Core().process(data, now_ms=NOW_MS)
    data[:] = b"\x00" * len(data)
    assert [r["order_id"] for r in rows(result.orders)] == ["order-1", "order-2"]
    assert [r["customer_city"] for r in rows(result.customers)] == ["sao paulo", "sao paulo"]


def test_process_takes_bytes_bytearray_and_memoryview():
    data = batch_bytes(valid_order(1))
    for buffer in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert rows(Core().process(buffer, now_ms=NOW_MS).orders)[0]["order_id"] == "order-1"


def _churn_the_allocator():
    # Freed memory is likely to be reused by these, so a table that still
    # pointed into its result would read garbage.
    junk = [bytes([n % 251]) * 4096 for n in range(2000)]
    del junk


# -- values ------------------------------------------------------------------------------


def test_orders_row_holds_every_field_with_null_for_absent_timestamps():
    order = valid_order(1)
    order.order_purchase_timestamp.nanos = 999_999_999
    order.ClearField("order_delivered_customer_date")
    order.ClearField("order_delivered_carrier_date")
    result = process(order, batch_id="b-7", source="olist-upstream")
    assert rows(result.orders) == [
        {
            "event_id": "evt-1",
            "order_id": "order-1",
            "customer_id": "cust-1",
            "order_status": "delivered",
            "order_purchase_timestamp": AT + timedelta(microseconds=999_999),
            "order_approved_at": AT + timedelta(seconds=600),
            "order_delivered_carrier_date": None,
            "order_delivered_customer_date": None,
            "order_estimated_delivery_date": AT + timedelta(days=20),
            "batch_id": "b-7",
            "source": "olist-upstream",
        }
    ]


def test_items_payments_and_customers_rows_carry_their_orders_ids():
    order = valid_order(1)
    order.items.add(order_item_id=2, product_id="product-x", seller_id="", price_cents=1, freight_value_cents=0)
    order.payments.add(payment_sequential=2, payment_type=3, payment_installments=1, payment_value_cents=999)
    result = process(order, source="s")
    assert rows(result.order_items) == [
        {
            "order_id": "order-1",
            "order_item_id": 1,
            "product_id": "product-1",
            "seller_id": "seller-1",
            "shipping_limit_date": AT + timedelta(days=6),
            "price": Decimal("59.90"),
            "freight_value": Decimal("15.20"),
            "batch_id": "batch-1",
            "source": "s",
        },
        {
            "order_id": "order-1",
            "order_item_id": 2,
            "product_id": "product-x",
            "seller_id": "",
            "shipping_limit_date": None,
            "price": Decimal("0.01"),
            "freight_value": Decimal("0.00"),
            "batch_id": "batch-1",
            "source": "s",
        },
    ]
    assert rows(result.order_payments) == [
        {
            "order_id": "order-1",
            "payment_sequential": 1,
            "payment_type": "credit_card",
            "payment_installments": 3,
            "payment_value": Decimal("75.10"),
            "batch_id": "batch-1",
            "source": "s",
        },
        {
            "order_id": "order-1",
            "payment_sequential": 2,
            "payment_type": "voucher",
            "payment_installments": 1,
            "payment_value": Decimal("9.99"),
            "batch_id": "batch-1",
            "source": "s",
        },
    ]
    assert rows(result.customers) == [
        {
            "customer_id": "cust-1",
            "customer_unique_id": "unique-1",
            "customer_zip_code_prefix": "01310",
            "customer_city": "sao paulo",
            "customer_state": "SP",
            "batch_id": "batch-1",
            "source": "s",
        }
    ]


def test_largest_money_and_timestamps_convert_exactly():
    order = valid_order(1)
    order.items[0].price_cents = 999_999_999_999
    order.order_estimated_delivery_date.seconds = 4_133_980_799
    order.order_estimated_delivery_date.nanos = 999_999_999
    order.order_approved_at.seconds = 946_684_800
    order.order_approved_at.nanos = 999  # below a microsecond: rounds down to 0
    result = process(order)
    assert rows(result.order_items)[0]["price"] == Decimal("9999999999.99")
    orders = pa.record_batch(result.orders)

    def micros(column: str) -> int:
        return orders.column(column).cast(pa.int64())[0].as_py()

    assert micros("order_estimated_delivery_date") == 4_133_980_799_999_999
    assert micros("order_approved_at") == 946_684_800_000_000


@pytest.mark.parametrize(
    "status, name",
    [
        (1, "created"),
        (2, "approved"),
        (3, "invoiced"),
        (4, "processing"),
        (5, "shipped"),
        (6, "delivered"),
        (7, "unavailable"),
        (8, "canceled"),
    ],
)
def test_order_status_is_written_as_its_olist_name(status, name):
    order = valid_order(1)
    order.order_status = status
    assert rows(process(order).orders)[0]["order_status"] == name


@pytest.mark.parametrize(
    "payment_type, name",
    [(1, "credit_card"), (2, "boleto"), (3, "voucher"), (4, "debit_card"), (5, "not_defined")],
)
def test_payment_type_is_written_as_its_olist_name(payment_type, name):
    order = valid_order(1)
    order.payments[0].payment_type = payment_type
    assert rows(process(order).order_payments)[0]["payment_type"] == name


def test_customers_has_a_row_only_for_orders_with_a_customer_message():
    without = valid_order(2)
    without.ClearField("customer")
    empty = valid_order(3)
    empty.customer.Clear()
    empty.customer.SetInParent()  # present, every field empty
    result = process(valid_order(1), without, empty)
    assert [(r["customer_id"], r["customer_unique_id"], r["customer_city"]) for r in rows(result.customers)] == [
        ("cust-1", "unique-1", "sao paulo"),
        ("cust-3", "", ""),
    ]


def test_empty_strings_stay_empty_not_null():
    order = valid_order(1)
    order.event_id = ""
    order.items[0].product_id = ""
    result = process(order, source="")
    assert rows(result.orders)[0]["event_id"] == ""
    assert rows(result.orders)[0]["source"] == ""
    assert rows(result.order_items)[0]["product_id"] == ""


def test_non_ascii_text_round_trips():
    order = valid_order(1)
    order.customer.customer_city = "São Paulo — 東京 😀"
    order.order_id = "pedido-ção"
    result = process(order)
    assert rows(result.customers)[0]["customer_city"] == "São Paulo — 東京 😀"
    assert rows(result.order_items)[0]["order_id"] == "pedido-ção"


def test_result_with_no_accepted_orders_exports_empty_tables_with_their_schemas():
    order = valid_order(1)
    order.order_status = 0
    result = process(order)
    for name in ALL_TABLES:
        table = pa.record_batch(result.table(name))
        assert table.schema == EXPECTED_SCHEMAS[name]
        assert table.num_rows == (1 if name == "rejects" else 0)


# -- threads -----------------------------------------------------------------------------


def test_process_releases_the_gil():
    # With a switch interval far longer than the test, the only way the
    # counter thread can run while the main thread is inside process() is
    # that process() released the GIL.
    # Without batch_id and source the serialised batch is just its orders field.
    orders_part = OrderGenerator(seed=23).batch(2000, batch_id="", source="").SerializeToString()
    data = field_len(1, b"gil") + orders_part * 40  # 80,000 orders, 2,000 distinct
    core = Core()
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
        result = core.process(data, now_ms=NOW_MS)
        after = ticks
    finally:
        stop.set()
        counter.join()
        sys.setswitchinterval(old_interval)
    assert result.accepted == 2000 and result.duplicates == 78_000
    assert after > before


def test_two_threads_sending_the_same_batch_to_one_core_get_each_order_accepted_once():
    batch = OrderGenerator(seed=24).batch(20_000)
    data = batch.SerializeToString()
    core = Core()
    results = []

    def send():
        results.append(core.process(data, now_ms=NOW_MS))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted_ids = [row["order_id"] for result in results for row in rows(result.orders)]
    assert sorted(accepted_ids) == sorted(order.order_id for order in batch.orders)
    assert sum(result.duplicates for result in results) == 20_000
    assert core.dedup_size == 20_000


def test_batch_id_of_agrees_with_process_without_touching_the_dedup_window():
    gen = OrderGenerator(seed=3)
    data = gen.batch(50, batch_id="peek-me").SerializeToString()
    core = Core()
    assert batch_id_of(data) == "peek-me"
    assert core.dedup_size == 0
    assert core.process(data).batch_id == batch_id_of(memoryview(data)) == batch_id_of(bytearray(data))
    assert batch_id_of(data[:-3]) is None  # process() reports the exact error for a cut batch
    assert batch_id_of(b"") is None
    assert batch_id_of(ingest_pb2.OrderBatch(source="no id").SerializeToString()) is None
    with pytest.raises(TypeError, match="batch_id_of"):
        batch_id_of(memoryview(b"abcd").cast("I"))
