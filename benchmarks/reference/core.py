"""What the native core does, written the way a Python engineer would without one.

The official protobuf parser, a Python loop over the orders, a dedup window in
an ordered dict and `pyarrow.Table.from_pylist`. It follows the core's
behaviour spec (core_spec.md) rule for rule (same reason codes, same messages, same
dedup semantics, same table schemas and values), so the tests can compare the
native core against it and the benchmarks can time it as the honest baseline.

Where it cannot match the native core:
- Decode errors: the official parser says only that the bytes are not an
  `OrderBatch`, so every one becomes `InvalidBatch("undecodable", None, ...)`.
  `too_many_*` are checked after parsing and carry no offset either.
- A known field sent with the wrong wire type is an error for the native core
  but kept as an unknown field by the official parser, so it is accepted here.
- An order without event_id is keyed by its re-serialised bytes (see `_dedup`),
  which equal the bytes as sent only for canonically encoded orders.
"""

from __future__ import annotations

import calendar
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import pyarrow as pa
from google.protobuf.message import DecodeError
from keystone_ingest.core import InvalidBatch, RecordError
from keystone_ingest.proto.v1 import ingest_pb2

ORDER_STATUS_NAMES = {
    1: "created",
    2: "approved",
    3: "invoiced",
    4: "processing",
    5: "shipped",
    6: "delivered",
    7: "unavailable",
    8: "canceled",
}
PAYMENT_TYPE_NAMES = {1: "credit_card", 2: "boleto", 3: "voucher", 4: "debit_card", 5: "not_defined"}

ORDER_TIMESTAMP_FIELDS = (
    "order_purchase_timestamp",
    "order_approved_at",
    "order_delivered_carrier_date",
    "order_delivered_customer_date",
    "order_estimated_delivery_date",
)
CUSTOMER_TEXT_FIELDS = ("customer_zip_code_prefix", "customer_city", "customer_state")

INT32_MAX = 2**31 - 1
MONEY_MAX_CENTS = 999_999_999_999  # the largest value decimal(12,2) holds, in cents
NANOS_MAX = 999_999_999

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_MONEY = pa.decimal128(12, 2)
_LINEAGE = [("batch_id", pa.utf8()), ("source", pa.utf8())]
SCHEMAS: dict[str, pa.Schema] = {
    "orders": pa.schema(
        [("event_id", pa.utf8()), ("order_id", pa.utf8()), ("customer_id", pa.utf8()), ("order_status", pa.utf8())]
        + [(name, _TIMESTAMP) for name in ORDER_TIMESTAMP_FIELDS]
        + _LINEAGE
    ),
    "order_items": pa.schema(
        [
            ("order_id", pa.utf8()),
            ("order_item_id", pa.int32()),
            ("product_id", pa.utf8()),
            ("seller_id", pa.utf8()),
            ("shipping_limit_date", _TIMESTAMP),
            ("price", _MONEY),
            ("freight_value", _MONEY),
            *_LINEAGE,
        ]
    ),
    "order_payments": pa.schema(
        [
            ("order_id", pa.utf8()),
            ("payment_sequential", pa.int32()),
            ("payment_type", pa.utf8()),
            ("payment_installments", pa.int32()),
            ("payment_value", _MONEY),
            *_LINEAGE,
        ]
    ),
    "customers": pa.schema(
        [
            ("customer_id", pa.utf8()),
            ("customer_unique_id", pa.utf8()),
            ("customer_zip_code_prefix", pa.utf8()),
            ("customer_city", pa.utf8()),
            ("customer_state", pa.utf8()),
            *_LINEAGE,
        ]
    ),
}


@dataclass
class ReferenceResult:
    batch_id: str
    source: str
    accepted: int
    duplicates: int
    rejected: int
    tables: dict[str, pa.Table]
    errors: list[RecordError]
    # The parsed batch, so a caller (the reference server) reaches the orders
    # without parsing the bytes a second time.
    message: ingest_pb2.OrderBatch = field(repr=False)
    # Positions in OrderBatch.orders of the accepted orders, row for row with tables["orders"].
    accepted_indices: list[int] = field(default_factory=list)
    # Dedup keys this batch put into the window, for `ReferenceCore.forget`.
    inserted_keys: list[str | bytes] = field(repr=False, default_factory=list)


class ReferenceCore:
    """Same constructor limits and `process` / `forget` contract as `keystone_ingest.core.Core`."""

    def __init__(
        self,
        *,
        dedup_max_keys: int = 1_000_000,
        dedup_max_age_s: float = 3600.0,
        max_orders_per_batch: int = 100_000,
        max_items_per_order: int = 1_000,
        max_payments_per_order: int = 1_000,
        max_batch_id_bytes: int = 128,
        max_source_bytes: int = 128,
        max_event_id_bytes: int = 128,
        max_id_bytes: int = 64,
        max_text_bytes: int = 256,
        min_year: int = 2000,
        max_year: int = 2100,
    ) -> None:
        self.dedup_max_keys = dedup_max_keys
        self.dedup_max_age_ms = dedup_max_age_s * 1000
        self.max_orders_per_batch = max_orders_per_batch
        self.max_items_per_order = max_items_per_order
        self.max_payments_per_order = max_payments_per_order
        self.max_batch_id_bytes = max_batch_id_bytes
        self.max_source_bytes = max_source_bytes
        self.max_event_id_bytes = max_event_id_bytes
        self.max_id_bytes = max_id_bytes
        self.max_text_bytes = max_text_bytes
        self.min_year = min_year
        self.max_year = max_year
        self._min_seconds = calendar.timegm((min_year, 1, 1, 0, 0, 0))
        self._end_seconds = calendar.timegm((max_year + 1, 1, 1, 0, 0, 0))
        # key -> now_ms of the batch that inserted it. An OrderedDict rather
        # than a dict: evicting the oldest entry (popitem(last=False)) is O(1)
        # there, while popping the front of a plain dict again and again makes
        # every lookup of the first entry scan past the deleted slots.
        self._window: collections.OrderedDict[str | bytes, int] = collections.OrderedDict()

    @property
    def dedup_size(self) -> int:
        return len(self._window)

    def process(self, data: bytes | bytearray | memoryview, *, now_ms: int | None = None) -> ReferenceResult:
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        try:
            batch = ingest_pb2.OrderBatch.FromString(bytes(data))
        except DecodeError as exc:
            raise InvalidBatch("undecodable", None, str(exc)) from exc
        return self.process_message(batch, now_ms=now_ms)

    def process_message(self, batch: ingest_pb2.OrderBatch, *, now_ms: int | None = None) -> ReferenceResult:
        """`process` for a batch already parsed with the official classes."""
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        self._check_sizes(batch)
        self._check_lineage(batch.batch_id, batch.source)

        errors: list[RecordError] = []
        valid_indices: list[int] = []
        orders = batch.orders
        for index, order in enumerate(orders):
            violation = self._first_violation(order)
            if violation is None:
                valid_indices.append(index)
            else:
                errors.append(RecordError(index, order.event_id, *violation))

        accepted_indices, inserted_keys = self._dedup(orders, valid_indices, now_ms)
        return ReferenceResult(
            batch_id=batch.batch_id,
            source=batch.source,
            accepted=len(accepted_indices),
            duplicates=len(valid_indices) - len(accepted_indices),
            rejected=len(errors),
            tables=self._tables([orders[i] for i in accepted_indices], batch.batch_id, batch.source),
            errors=errors,
            accepted_indices=accepted_indices,
            inserted_keys=inserted_keys,
            message=batch,
        )

    def forget(self, result: ReferenceResult) -> int:
        """Remove the keys `result` inserted that are still in the window; return how many."""
        removed = 0
        for key in result.inserted_keys:
            if self._window.pop(key, None) is not None:
                removed += 1
        return removed

    # -- whole-batch rules ----------------------------------------------------

    def _check_sizes(self, batch: ingest_pb2.OrderBatch) -> None:
        # The native core finds these while decoding, in input order; checking
        # order by order keeps the same first error for canonical input.
        for index, order in enumerate(batch.orders):
            if index == self.max_orders_per_batch:
                raise InvalidBatch(
                    "too_many_orders", None, f"more than the {self.max_orders_per_batch} orders allowed in a batch"
                )
            if len(order.items) > self.max_items_per_order:
                raise InvalidBatch(
                    "too_many_items",
                    None,
                    f"orders[{index}] has more than the {self.max_items_per_order} items allowed",
                )
            if len(order.payments) > self.max_payments_per_order:
                raise InvalidBatch(
                    "too_many_payments",
                    None,
                    f"orders[{index}] has more than the {self.max_payments_per_order} payments allowed",
                )

    def _check_lineage(self, batch_id: str, source: str) -> None:
        if not batch_id:
            raise InvalidBatch("batch_id_empty", None, "batch_id is empty")
        size = len(batch_id.encode())
        if size > self.max_batch_id_bytes:
            raise InvalidBatch(
                "batch_id_too_long", None, f"batch_id is {size} bytes, more than the {self.max_batch_id_bytes} allowed"
            )
        size = len(source.encode())
        if size > self.max_source_bytes:
            raise InvalidBatch(
                "source_too_long", None, f"source is {size} bytes, more than the {self.max_source_bytes} allowed"
            )

    # -- per-order validation -------------------------------------------------

    def _first_violation(self, order: ingest_pb2.Order) -> tuple[str, str] | None:
        """(reason, message) of the first rule `order` breaks, in the spec's order, or None."""
        size = len(order.event_id.encode())
        if size > self.max_event_id_bytes:
            return "event_id_too_long", f"event_id is {size} bytes, more than the {self.max_event_id_bytes} allowed"
        for name in ("order_id", "customer_id"):
            value = getattr(order, name)
            if not value:
                return f"{name}_empty", f"{name} is empty"
            size = len(value.encode())
            if size > self.max_id_bytes:
                return f"{name}_too_long", f"{name} is {size} bytes, more than the {self.max_id_bytes} allowed"

        status = order.order_status
        if status == 0:
            return "order_status_unspecified", "order_status is ORDER_STATUS_UNSPECIFIED"
        if status not in ORDER_STATUS_NAMES:
            return "order_status_unknown", f"order_status {status} is not a known OrderStatus"

        if not order.HasField("order_purchase_timestamp"):
            return "purchase_timestamp_missing", "order_purchase_timestamp is missing"
        for name in ORDER_TIMESTAMP_FIELDS:
            if order.HasField(name):
                violation = self._timestamp_violation(getattr(order, name), name)
                if violation:
                    return violation

        first_index_of_item_id: dict[int, int] = {}
        for i, item in enumerate(order.items):
            item_id = item.order_item_id
            if item_id == 0:
                return "item_id_zero", f"items[{i}].order_item_id is 0; order_item_id starts at 1"
            if item_id > INT32_MAX:
                return "item_id_out_of_range", f"items[{i}].order_item_id is {item_id}, more than {INT32_MAX}"
            if item_id in first_index_of_item_id:
                j = first_index_of_item_id[item_id]
                return "item_id_repeated", f"items[{i}].order_item_id {item_id} repeats items[{j}]"
            first_index_of_item_id[item_id] = i
            for name in ("product_id", "seller_id"):
                violation = self._text_violation(getattr(item, name), f"items[{i}].{name}", self.max_id_bytes)
                if violation:
                    return violation
            if item.HasField("shipping_limit_date"):
                violation = self._timestamp_violation(item.shipping_limit_date, f"items[{i}].shipping_limit_date")
                if violation:
                    return violation
            for name in ("price_cents", "freight_value_cents"):
                violation = _money_violation(getattr(item, name), f"items[{i}].{name}")
                if violation:
                    return violation

        for j, payment in enumerate(order.payments):
            for name in ("payment_sequential", "payment_installments"):
                value = getattr(payment, name)
                if value > INT32_MAX:
                    return "payment_counter_out_of_range", f"payments[{j}].{name} is {value}, more than {INT32_MAX}"
            payment_type = payment.payment_type
            if payment_type == 0:
                return "payment_type_unspecified", f"payments[{j}].payment_type is PAYMENT_TYPE_UNSPECIFIED"
            if payment_type not in PAYMENT_TYPE_NAMES:
                return "payment_type_unknown", f"payments[{j}].payment_type {payment_type} is not a known PaymentType"
            violation = _money_violation(payment.payment_value_cents, f"payments[{j}].payment_value_cents")
            if violation:
                return violation

        if order.HasField("customer"):
            customer = order.customer
            violation = self._text_violation(
                customer.customer_unique_id, "customer.customer_unique_id", self.max_id_bytes
            )
            if violation:
                return violation
            for name in CUSTOMER_TEXT_FIELDS:
                violation = self._text_violation(getattr(customer, name), f"customer.{name}", self.max_text_bytes)
                if violation:
                    return violation
        return None

    def _timestamp_violation(self, timestamp, path: str) -> tuple[str, str] | None:
        nanos = timestamp.nanos
        if not 0 <= nanos <= NANOS_MAX:
            return "timestamp_nanos_out_of_range", f"{path}.nanos is {nanos}, outside 0..{NANOS_MAX}"
        seconds = timestamp.seconds
        if not self._min_seconds <= seconds < self._end_seconds:
            return (
                "timestamp_out_of_range",
                f"{path} is {seconds} seconds since the epoch, outside the years {self.min_year}..{self.max_year}",
            )
        return None

    @staticmethod
    def _text_violation(value: str, path: str, max_bytes: int) -> tuple[str, str] | None:
        size = len(value.encode())
        if size > max_bytes:
            return "text_too_long", f"{path} is {size} bytes, more than the {max_bytes} allowed"
        return None

    # -- dedup ----------------------------------------------------------------

    def _dedup(
        self, orders: Sequence[ingest_pb2.Order], valid_indices: list[int], now_ms: int
    ) -> tuple[list[int], list[str | bytes]]:
        """(indices of the accepted orders, keys inserted into the window)."""
        if self.dedup_max_keys == 0:
            # Not in the spec; the native core treats a window of no keys as dedup turned off.
            return valid_indices, []
        window = self._window
        while window:
            if now_ms - next(iter(window.values())) < self.dedup_max_age_ms:
                break
            window.popitem(last=False)

        accepted: list[int] = []
        inserted_keys: list[str | bytes] = []
        # Within a batch a repeat is a duplicate even when the window is too
        # small to still hold the first occurrence's key.
        seen_in_batch: set[str | bytes] = set()
        for index in valid_indices:
            order = orders[index]
            # The spec keys an order without event_id by its bytes as they
            # appear in the input. The official parser does not keep those, but
            # re-serialising a parsed message gives back the same bytes when the
            # input was serialised canonically (fields in number order, unknown
            # fields last), which is what every protobuf library sends.
            key = order.event_id or order.SerializeToString()
            if key in seen_in_batch or key in window:
                continue
            seen_in_batch.add(key)
            if len(window) >= self.dedup_max_keys:
                window.popitem(last=False)
            window[key] = now_ms
            inserted_keys.append(key)
            accepted.append(index)
        return accepted, inserted_keys

    # -- Arrow ----------------------------------------------------------------

    @staticmethod
    def _tables(orders: list[ingest_pb2.Order], batch_id: str, source: str) -> dict[str, pa.Table]:
        order_rows = []
        item_rows = []
        payment_rows = []
        customer_rows = []
        for order in orders:
            order_id = order.order_id
            row: dict[str, str | int | None] = {
                "event_id": order.event_id,
                "order_id": order_id,
                "customer_id": order.customer_id,
                "order_status": ORDER_STATUS_NAMES[order.order_status],
            }
            for name in ORDER_TIMESTAMP_FIELDS:
                row[name] = _micros(getattr(order, name)) if order.HasField(name) else None
            row["batch_id"] = batch_id
            row["source"] = source
            order_rows.append(row)

            for item in order.items:
                item_rows.append(
                    {
                        "order_id": order_id,
                        "order_item_id": item.order_item_id,
                        "product_id": item.product_id,
                        "seller_id": item.seller_id,
                        "shipping_limit_date": (
                            _micros(item.shipping_limit_date) if item.HasField("shipping_limit_date") else None
                        ),
                        "price": _money(item.price_cents),
                        "freight_value": _money(item.freight_value_cents),
                        "batch_id": batch_id,
                        "source": source,
                    }
                )
            for payment in order.payments:
                payment_rows.append(
                    {
                        "order_id": order_id,
                        "payment_sequential": payment.payment_sequential,
                        "payment_type": PAYMENT_TYPE_NAMES[payment.payment_type],
                        "payment_installments": payment.payment_installments,
                        "payment_value": _money(payment.payment_value_cents),
                        "batch_id": batch_id,
                        "source": source,
                    }
                )
            if order.HasField("customer"):
                customer = order.customer
                customer_rows.append(
                    {
                        "customer_id": order.customer_id,
                        "customer_unique_id": customer.customer_unique_id,
                        "customer_zip_code_prefix": customer.customer_zip_code_prefix,
                        "customer_city": customer.customer_city,
                        "customer_state": customer.customer_state,
                        "batch_id": batch_id,
                        "source": source,
                    }
                )
        return {
            "orders": pa.Table.from_pylist(order_rows, schema=SCHEMAS["orders"]),
            "order_items": pa.Table.from_pylist(item_rows, schema=SCHEMAS["order_items"]),
            "order_payments": pa.Table.from_pylist(payment_rows, schema=SCHEMAS["order_payments"]),
            "customers": pa.Table.from_pylist(customer_rows, schema=SCHEMAS["customers"]),
        }


def _money_violation(cents: int, path: str) -> tuple[str, str] | None:
    if cents < 0:
        return "money_negative", f"{path} is {cents}; money cannot be negative"
    if cents > MONEY_MAX_CENTS:
        return "money_out_of_range", f"{path} is {cents} cents, more than decimal(12,2) holds"
    return None


def _micros(timestamp) -> int:
    return timestamp.seconds * 1_000_000 + timestamp.nanos // 1000


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)
