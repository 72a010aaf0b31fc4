"""Builders shared by the core tests: a known-valid order, batches, raw wire
bytes, and the one comparison of a native result against the reference."""

from __future__ import annotations

import pyarrow as pa
from google.protobuf.timestamp_pb2 import Timestamp
from keystone_ingest.core import TABLES, BatchResult, Core, InvalidBatch
from keystone_ingest.proto.v1 import ingest_pb2

from benchmarks.reference.core import ReferenceCore, ReferenceResult

# A fixed clock for the dedup window: tests never depend on the wall clock.
NOW_MS = 1_700_000_000_000
PURCHASE_S = 1_500_000_000  # 2017-07-14T02:40:00Z
FIRST_VALID_S = 946_684_800  # 2000-01-01T00:00:00Z
END_OF_RANGE_S = 4_133_980_800  # 2101-01-01T00:00:00Z, the first second rejected
INT32_MAX = 2**31 - 1
MONEY_MAX_CENTS = 999_999_999_999  # 9,999,999,999.99, the most decimal(12,2) holds


def valid_order(n: int = 0) -> ingest_pb2.Order:
    """An order that passes every rule, with ids ending in `n` (event_id evt-n, order_id order-n, ...)."""
    return ingest_pb2.Order(
        event_id=f"evt-{n}",
        order_id=f"order-{n}",
        customer_id=f"cust-{n}",
        order_status=ingest_pb2.ORDER_STATUS_DELIVERED,
        order_purchase_timestamp=Timestamp(seconds=PURCHASE_S),
        order_approved_at=Timestamp(seconds=PURCHASE_S + 600),
        order_delivered_carrier_date=Timestamp(seconds=PURCHASE_S + 2 * 86400),
        order_delivered_customer_date=Timestamp(seconds=PURCHASE_S + 7 * 86400),
        order_estimated_delivery_date=Timestamp(seconds=PURCHASE_S + 20 * 86400),
        items=[
            ingest_pb2.OrderItem(
                order_item_id=1,
                product_id=f"product-{n}",
                seller_id="seller-1",
                shipping_limit_date=Timestamp(seconds=PURCHASE_S + 6 * 86400),
                price_cents=5990,
                freight_value_cents=1520,
            )
        ],
        payments=[
            ingest_pb2.OrderPayment(
                payment_sequential=1,
                payment_type=ingest_pb2.PAYMENT_TYPE_CREDIT_CARD,
                payment_installments=3,
                payment_value_cents=7510,
            )
        ],
        customer=ingest_pb2.Customer(
            customer_unique_id=f"unique-{n}",
            customer_zip_code_prefix="01310",
            customer_city="sao paulo",
            customer_state="SP",
        ),
    )


def batch_bytes(*orders: ingest_pb2.Order, batch_id: str = "batch-1", source: str = "tests") -> bytes:
    return ingest_pb2.OrderBatch(batch_id=batch_id, source=source, orders=orders).SerializeToString()


def process(*orders: ingest_pb2.Order, core: Core | None = None, now_ms: int = NOW_MS, **batch) -> BatchResult:
    """Run `orders` as one batch through `core` (a fresh default Core if None)."""
    return (core or Core()).process(batch_bytes(*orders, **batch), now_ms=now_ms)


def rows(arrow_batch) -> list[dict]:
    return pa.record_batch(arrow_batch).to_pylist()


# -- raw wire bytes, for inputs the official library will not write ------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = range(6)


def varint(value: int) -> bytes:
    """Base-128 varint; negative values as their 64-bit two's complement, like int64 fields."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field_number: int, wire_type: int) -> bytes:
    return varint(field_number << 3 | wire_type)


def field_len(field_number: int, payload: bytes) -> bytes:
    return tag(field_number, LEN) + varint(len(payload)) + payload


def field_varint(field_number: int, value: int) -> bytes:
    return tag(field_number, VARINT) + varint(value)


# -- native against reference ---------------------------------------------------


def outcome(core, data: bytes, now_ms: int = NOW_MS):
    """`core.process(data)`, or the InvalidBatch it raised."""
    try:
        return core.process(data, now_ms=now_ms)
    except InvalidBatch as exc:
        return exc


def assert_same_result(native: BatchResult, reference: ReferenceResult) -> None:
    """Same counts, same per-order errors and, table by table, the same schema and values."""
    assert (native.batch_id, native.source) == (reference.batch_id, reference.source)
    assert (native.accepted, native.duplicates, native.rejected) == (
        reference.accepted,
        reference.duplicates,
        reference.rejected,
    )
    assert native.errors() == reference.errors
    for name in TABLES:
        table = pa.record_batch(native.table(name))
        expected = reference.tables[name]
        assert table.schema == expected.schema, name
        assert table.to_pylist() == expected.to_pylist(), name


def assert_same_outcome(native_outcome, reference_outcome) -> None:
    """Both accepted with the same result, or both refused the batch with the same code.

    The reference cannot name a decode error precisely, so only its batch-rule
    codes (batch_id_*) and the fact of refusal are compared for decode errors.
    """
    if isinstance(reference_outcome, InvalidBatch):
        assert isinstance(native_outcome, InvalidBatch), f"native accepted, reference refused: {reference_outcome}"
        if reference_outcome.code != "undecodable":
            assert (native_outcome.code, native_outcome.offset) == (reference_outcome.code, None)
        return
    assert not isinstance(native_outcome, InvalidBatch), f"native refused: {native_outcome.code} {native_outcome}"
    assert_same_result(native_outcome, reference_outcome)


def process_both(data: bytes, now_ms: int = NOW_MS, **limits):
    """(native outcome, reference outcome) of `data` on fresh cores built with `limits`."""
    return outcome(Core(**limits), data, now_ms), outcome(ReferenceCore(**limits), data, now_ms)
