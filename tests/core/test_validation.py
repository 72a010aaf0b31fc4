"""Per-order validation: each rule of the spec, its reason code, its message and
its boundaries. A broken order sits between two valid ones, so every test also
pins that a rejection touches only the order that broke the rule."""

from __future__ import annotations

import pytest
from batches import (
    END_OF_RANGE_S,
    FIRST_VALID_S,
    INT32_MAX,
    MONEY_MAX_CENTS,
    NOW_MS,
    batch_bytes,
    process,
    rows,
    valid_order,
)
from keystone_ingest.core import BATCH_ERRORS, REASONS, Core, InvalidBatch, RecordError
from keystone_ingest.proto.v1 import ingest_pb2


def run_between_valid_orders(order: ingest_pb2.Order, core: Core | None = None):
    """Process [valid_order(0), order, valid_order(2)]; return (errors, order_ids of accepted orders)."""
    result = process(valid_order(0), order, valid_order(2), core=core)
    accepted_ids = [row["order_id"] for row in rows(result.orders)]
    assert result.accepted + result.duplicates + result.rejected == 3
    return result.errors(), accepted_ids


def assert_rejected(order: ingest_pb2.Order, reason: str, message: str, core: Core | None = None) -> None:
    errors, accepted_ids = run_between_valid_orders(order, core)
    assert errors == [RecordError(1, order.event_id, reason, message)]
    assert accepted_ids == ["order-0", "order-2"]


def assert_accepted(order: ingest_pb2.Order, core: Core | None = None) -> None:
    errors, accepted_ids = run_between_valid_orders(order, core)
    assert errors == []
    assert accepted_ids == ["order-0", order.order_id, "order-2"]


def test_valid_order_is_accepted():
    assert_accepted(valid_order(1))


def test_reason_and_batch_error_codes_are_the_documented_ones():
    assert set(REASONS) == {
        "event_id_too_long",
        "order_id_empty",
        "order_id_too_long",
        "customer_id_empty",
        "customer_id_too_long",
        "order_status_unspecified",
        "order_status_unknown",
        "purchase_timestamp_missing",
        "timestamp_nanos_out_of_range",
        "timestamp_out_of_range",
        "item_id_zero",
        "item_id_out_of_range",
        "item_id_repeated",
        "text_too_long",
        "money_negative",
        "money_out_of_range",
        "payment_counter_out_of_range",
        "payment_type_unspecified",
        "payment_type_unknown",
    }
    # batch_too_large is the native core's guard against inputs of 2 GiB or more.
    assert set(BATCH_ERRORS) == {
        "truncated",
        "varint_too_long",
        "bad_wire_type",
        "invalid_field_number",
        "length_past_end",
        "invalid_utf8",
        "nesting_too_deep",
        "too_many_orders",
        "too_many_items",
        "too_many_payments",
        "batch_id_empty",
        "batch_id_too_long",
        "source_too_long",
        "batch_too_large",
    }
    assert all(REASONS.values()) and all(BATCH_ERRORS.values())


# -- 1. event_id -------------------------------------------------------------------


def test_event_id_of_128_bytes_is_accepted():
    order = valid_order(1)
    order.event_id = "e" * 128
    assert_accepted(order)


def test_event_id_of_129_bytes_is_rejected():
    order = valid_order(1)
    order.event_id = "e" * 129
    assert_rejected(order, "event_id_too_long", "event_id is 129 bytes, more than the 128 allowed")


def test_event_id_length_counts_utf8_bytes_not_characters():
    order = valid_order(1)
    order.event_id = "é" * 64 + "e"  # 65 characters, 129 bytes
    assert_rejected(order, "event_id_too_long", "event_id is 129 bytes, more than the 128 allowed")
    order.event_id = "é" * 64  # 128 bytes
    assert_accepted(order)


def test_empty_event_id_is_accepted():
    order = valid_order(1)
    order.event_id = ""
    assert_accepted(order)


# -- 2, 3. order_id and customer_id --------------------------------------------------


@pytest.mark.parametrize("name", ["order_id", "customer_id"])
def test_empty_id_is_rejected(name):
    order = valid_order(1)
    setattr(order, name, "")
    assert_rejected(order, f"{name}_empty", f"{name} is empty")


@pytest.mark.parametrize("name", ["order_id", "customer_id"])
def test_id_of_64_bytes_is_accepted(name):
    order = valid_order(1)
    setattr(order, name, "i" * 64)
    assert_accepted(order)


@pytest.mark.parametrize("name", ["order_id", "customer_id"])
def test_id_of_65_bytes_is_rejected(name):
    order = valid_order(1)
    setattr(order, name, "i" * 65)
    assert_rejected(order, f"{name}_too_long", f"{name} is 65 bytes, more than the 64 allowed")


def test_id_length_counts_utf8_bytes_not_characters():
    order = valid_order(1)
    order.customer_id = "€" * 21 + "ab"  # 23 characters, 65 bytes
    assert_rejected(order, "customer_id_too_long", "customer_id is 65 bytes, more than the 64 allowed")


# -- 4. order_status -----------------------------------------------------------------


def test_unspecified_order_status_is_rejected():
    order = valid_order(1)
    order.order_status = ingest_pb2.ORDER_STATUS_UNSPECIFIED
    assert_rejected(order, "order_status_unspecified", "order_status is ORDER_STATUS_UNSPECIFIED")


@pytest.mark.parametrize("status", [9, 100, INT32_MAX, -1, -(2**31)])
def test_order_status_outside_the_enum_is_rejected_with_its_number(status):
    order = valid_order(1)
    order.order_status = status
    assert_rejected(order, "order_status_unknown", f"order_status {status} is not a known OrderStatus")


@pytest.mark.parametrize("status", range(1, 9))
def test_every_known_order_status_is_accepted(status):
    order = valid_order(1)
    order.order_status = status
    assert_accepted(order)


# -- 5, 6. timestamps ----------------------------------------------------------------


def test_missing_purchase_timestamp_is_rejected():
    order = valid_order(1)
    order.ClearField("order_purchase_timestamp")
    assert_rejected(order, "purchase_timestamp_missing", "order_purchase_timestamp is missing")


def test_purchase_timestamp_at_the_epoch_is_present_not_missing():
    # Timestamp{} (seconds 0) is present: it is out of range, not missing.
    order = valid_order(1)
    order.order_purchase_timestamp.SetInParent()
    order.order_purchase_timestamp.seconds = 0
    assert_rejected(
        order,
        "timestamp_out_of_range",
        "order_purchase_timestamp is 0 seconds since the epoch, outside the years 2000..2100",
    )


def test_other_order_timestamps_may_be_absent():
    order = valid_order(1)
    for name in (
        "order_approved_at",
        "order_delivered_carrier_date",
        "order_delivered_customer_date",
        "order_estimated_delivery_date",
    ):
        order.ClearField(name)
    assert_accepted(order)


def test_nanos_of_999999999_are_accepted():
    order = valid_order(1)
    order.order_purchase_timestamp.nanos = 999_999_999
    assert_accepted(order)


@pytest.mark.parametrize("nanos", [1_000_000_000, -1, INT32_MAX, -(2**31)])
def test_nanos_outside_a_second_are_rejected(nanos):
    order = valid_order(1)
    order.order_approved_at.nanos = nanos
    assert_rejected(order, "timestamp_nanos_out_of_range", f"order_approved_at.nanos is {nanos}, outside 0..999999999")


def test_first_second_of_2000_is_accepted():
    order = valid_order(1)
    order.order_purchase_timestamp.seconds = FIRST_VALID_S
    assert_accepted(order)


def test_last_second_of_1999_is_rejected():
    order = valid_order(1)
    order.order_purchase_timestamp.seconds = FIRST_VALID_S - 1
    assert_rejected(
        order,
        "timestamp_out_of_range",
        "order_purchase_timestamp is 946684799 seconds since the epoch, outside the years 2000..2100",
    )


def test_last_second_of_2100_is_accepted():
    order = valid_order(1)
    order.order_estimated_delivery_date.seconds = END_OF_RANGE_S - 1
    order.order_estimated_delivery_date.nanos = 999_999_999
    assert_accepted(order)


def test_first_second_of_2101_is_rejected():
    order = valid_order(1)
    order.order_estimated_delivery_date.seconds = END_OF_RANGE_S
    assert_rejected(
        order,
        "timestamp_out_of_range",
        "order_estimated_delivery_date is 4133980800 seconds since the epoch, outside the years 2000..2100",
    )


@pytest.mark.parametrize("seconds", [-(2**63), -1, 2**63 - 1])
def test_extreme_seconds_are_rejected_with_their_value(seconds):
    order = valid_order(1)
    order.order_delivered_carrier_date.seconds = seconds
    assert_rejected(
        order,
        "timestamp_out_of_range",
        f"order_delivered_carrier_date is {seconds} seconds since the epoch, outside the years 2000..2100",
    )


def test_order_timestamps_are_checked_in_field_order():
    order = valid_order(1)
    order.order_delivered_customer_date.seconds = 0
    order.order_approved_at.nanos = -5
    order.order_estimated_delivery_date.nanos = -6
    assert_rejected(order, "timestamp_nanos_out_of_range", "order_approved_at.nanos is -5, outside 0..999999999")


def test_nanos_are_checked_before_seconds_of_the_same_timestamp():
    order = valid_order(1)
    order.order_delivered_customer_date.seconds = 0
    order.order_delivered_customer_date.nanos = -1
    assert_rejected(
        order, "timestamp_nanos_out_of_range", "order_delivered_customer_date.nanos is -1, outside 0..999999999"
    )


def test_year_range_comes_from_the_core_options():
    order = valid_order(1)
    order.order_purchase_timestamp.seconds = 1_262_304_000 - 1  # 2009-12-31T23:59:59Z
    assert_rejected(
        order,
        "timestamp_out_of_range",
        "order_purchase_timestamp is 1262303999 seconds since the epoch, outside the years 2010..2020",
        core=Core(min_year=2010, max_year=2020),
    )


# -- 7. items ------------------------------------------------------------------------


def test_item_id_zero_is_rejected():
    order = valid_order(1)
    order.items[0].order_item_id = 0
    assert_rejected(order, "item_id_zero", "items[0].order_item_id is 0; order_item_id starts at 1")


def test_item_id_of_int32_max_is_accepted():
    order = valid_order(1)
    order.items[0].order_item_id = INT32_MAX
    assert_accepted(order)


@pytest.mark.parametrize("item_id", [INT32_MAX + 1, 2**32 - 1])
def test_item_id_above_int32_max_is_rejected(item_id):
    order = valid_order(1)
    order.items[0].order_item_id = item_id
    assert_rejected(order, "item_id_out_of_range", f"items[0].order_item_id is {item_id}, more than 2147483647")


def test_repeated_item_id_names_the_first_item_with_that_id():
    order = valid_order(1)
    for item_id in (5, 7):
        order.items.add(order_item_id=item_id, product_id="p", seller_id="s")
    order.items.add(order_item_id=5, product_id="p", seller_id="s")  # ids 1, 5, 7, 5
    assert_rejected(order, "item_id_repeated", "items[3].order_item_id 5 repeats items[1]")


def test_repeated_item_id_is_found_in_an_order_of_1000_items():
    order = valid_order(1)
    del order.items[:]
    for item_id in range(1, 1001):
        order.items.add(order_item_id=item_id, product_id="p", seller_id="s")
    order.items[999].order_item_id = 501  # items[500] has id 501
    assert_rejected(order, "item_id_repeated", "items[999].order_item_id 501 repeats items[500]")
    order.items[999].order_item_id = 2**31 - 1
    assert_accepted(order)


def test_items_need_not_be_numbered_in_order():
    order = valid_order(1)
    order.items[0].order_item_id = 3
    order.items.add(order_item_id=1, product_id="p", seller_id="s")
    assert_accepted(order)


@pytest.mark.parametrize("name", ["product_id", "seller_id"])
def test_item_id_text_of_64_bytes_is_accepted(name):
    order = valid_order(1)
    setattr(order.items[0], name, "x" * 64)
    assert_accepted(order)


@pytest.mark.parametrize("name", ["product_id", "seller_id"])
def test_item_id_text_of_65_bytes_is_rejected(name):
    order = valid_order(1)
    order.items.add(order_item_id=2, product_id="p", seller_id="s")
    setattr(order.items[1], name, "x" * 65)
    assert_rejected(order, "text_too_long", f"items[1].{name} is 65 bytes, more than the 64 allowed")


def test_shipping_limit_date_may_be_absent():
    order = valid_order(1)
    order.items[0].ClearField("shipping_limit_date")
    assert_accepted(order)


def test_shipping_limit_date_nanos_are_checked():
    order = valid_order(1)
    order.items[0].shipping_limit_date.nanos = 1_000_000_000
    assert_rejected(
        order,
        "timestamp_nanos_out_of_range",
        "items[0].shipping_limit_date.nanos is 1000000000, outside 0..999999999",
    )


def test_shipping_limit_date_range_is_checked():
    order = valid_order(1)
    order.items[0].shipping_limit_date.seconds = FIRST_VALID_S - 1
    assert_rejected(
        order,
        "timestamp_out_of_range",
        "items[0].shipping_limit_date is 946684799 seconds since the epoch, outside the years 2000..2100",
    )


@pytest.mark.parametrize("name", ["price_cents", "freight_value_cents"])
def test_negative_item_money_is_rejected(name):
    order = valid_order(1)
    setattr(order.items[0], name, -1)
    assert_rejected(order, "money_negative", f"items[0].{name} is -1; money cannot be negative")


@pytest.mark.parametrize("name", ["price_cents", "freight_value_cents"])
def test_item_money_of_999999999999_cents_is_accepted(name):
    order = valid_order(1)
    setattr(order.items[0], name, MONEY_MAX_CENTS)
    assert_accepted(order)


@pytest.mark.parametrize("name", ["price_cents", "freight_value_cents"])
def test_item_money_above_decimal_12_2_is_rejected(name):
    order = valid_order(1)
    setattr(order.items[0], name, MONEY_MAX_CENTS + 1)
    assert_rejected(
        order, "money_out_of_range", f"items[0].{name} is 1000000000000 cents, more than decimal(12,2) holds"
    )


def test_most_negative_money_is_reported_exactly():
    order = valid_order(1)
    order.items[0].price_cents = -(2**63)
    assert_rejected(order, "money_negative", f"items[0].price_cents is {-(2**63)}; money cannot be negative")


def test_zero_money_is_accepted():
    order = valid_order(1)
    order.items[0].price_cents = 0
    order.items[0].freight_value_cents = 0
    order.payments[0].payment_value_cents = 0
    assert_accepted(order)


def test_order_without_items_or_payments_is_accepted():
    order = valid_order(1)
    del order.items[:]
    del order.payments[:]
    assert_accepted(order)


# -- 8. payments ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["payment_sequential", "payment_installments"])
def test_payment_counter_of_int32_max_is_accepted(name):
    order = valid_order(1)
    setattr(order.payments[0], name, INT32_MAX)
    assert_accepted(order)


@pytest.mark.parametrize("name", ["payment_sequential", "payment_installments"])
def test_payment_counter_above_int32_max_is_rejected(name):
    order = valid_order(1)
    setattr(order.payments[0], name, INT32_MAX + 1)
    assert_rejected(order, "payment_counter_out_of_range", f"payments[0].{name} is 2147483648, more than 2147483647")


def test_payment_counters_may_be_zero():
    order = valid_order(1)
    order.payments[0].payment_sequential = 0
    order.payments[0].payment_installments = 0
    assert_accepted(order)


def test_unspecified_payment_type_is_rejected():
    order = valid_order(1)
    order.payments.add(payment_sequential=2, payment_type=ingest_pb2.PAYMENT_TYPE_UNSPECIFIED)
    assert_rejected(order, "payment_type_unspecified", "payments[1].payment_type is PAYMENT_TYPE_UNSPECIFIED")


@pytest.mark.parametrize("payment_type", [6, 1000, -1])
def test_payment_type_outside_the_enum_is_rejected_with_its_number(payment_type):
    order = valid_order(1)
    order.payments[0].payment_type = payment_type
    assert_rejected(
        order, "payment_type_unknown", f"payments[0].payment_type {payment_type} is not a known PaymentType"
    )


@pytest.mark.parametrize("payment_type", range(1, 6))
def test_every_known_payment_type_is_accepted(payment_type):
    order = valid_order(1)
    order.payments[0].payment_type = payment_type
    assert_accepted(order)


def test_negative_payment_value_is_rejected():
    order = valid_order(1)
    order.payments[0].payment_value_cents = -7510
    assert_rejected(order, "money_negative", "payments[0].payment_value_cents is -7510; money cannot be negative")


def test_payment_value_above_decimal_12_2_is_rejected():
    order = valid_order(1)
    order.payments[0].payment_value_cents = 2**63 - 1
    assert_rejected(
        order,
        "money_out_of_range",
        f"payments[0].payment_value_cents is {2**63 - 1} cents, more than decimal(12,2) holds",
    )


# -- 9. customer ---------------------------------------------------------------------


def test_order_without_customer_is_accepted():
    order = valid_order(1)
    order.ClearField("customer")
    assert_accepted(order)


def test_customer_unique_id_of_65_bytes_is_rejected():
    order = valid_order(1)
    order.customer.customer_unique_id = "u" * 65
    assert_rejected(order, "text_too_long", "customer.customer_unique_id is 65 bytes, more than the 64 allowed")


@pytest.mark.parametrize("name", ["customer_zip_code_prefix", "customer_city", "customer_state"])
def test_customer_text_of_256_bytes_is_accepted(name):
    order = valid_order(1)
    setattr(order.customer, name, "c" * 256)
    assert_accepted(order)


@pytest.mark.parametrize("name", ["customer_zip_code_prefix", "customer_city", "customer_state"])
def test_customer_text_of_257_bytes_is_rejected(name):
    order = valid_order(1)
    setattr(order.customer, name, "ã" * 128 + "c")
    assert_rejected(order, "text_too_long", f"customer.{name} is 257 bytes, more than the 256 allowed")


def test_customer_fields_may_be_empty():
    order = valid_order(1)
    order.customer.Clear()
    order.customer.SetInParent()
    assert_accepted(order)


def test_text_limits_come_from_the_core_options():
    order = valid_order(1)
    order.order_id = "o" * 11
    assert_rejected(
        order, "order_id_too_long", "order_id is 11 bytes, more than the 10 allowed", core=Core(max_id_bytes=10)
    )
    order = valid_order(1)
    order.customer.customer_city = "c" * 21
    assert_rejected(
        order,
        "text_too_long",
        "customer.customer_city is 21 bytes, more than the 20 allowed",
        core=Core(max_text_bytes=20),
    )


# -- first failing rule --------------------------------------------------------------


def _breaking(*mutations):
    order = valid_order(1)
    for mutate in mutations:
        mutate(order)
    return order


def _set(path, value):
    """A mutation setting `path` ("order_id", "items[0].price_cents", "customer.customer_city") to `value`."""

    def mutate(order):
        *parents, name = path.split(".")
        target = order
        for parent in parents:
            field_name, _, index = parent.partition("[")
            target = getattr(target, field_name)
            if index:
                target = target[int(index.rstrip("]"))]
        setattr(target, name, value)

    return mutate


def _add_item(order):
    order.items.add(order_item_id=2, product_id="p", seller_id="s")


def _drop_purchase(order):
    order.ClearField("order_purchase_timestamp")


FIRST_FAILING_RULE_CASES = {
    "event_id before order_id": (
        [_set("event_id", "e" * 129), _set("order_id", "")],
        ("event_id_too_long", "event_id is 129 bytes, more than the 128 allowed"),
    ),
    "order_id before customer_id": (
        [_set("order_id", "o" * 65), _set("customer_id", "")],
        ("order_id_too_long", "order_id is 65 bytes, more than the 64 allowed"),
    ),
    "customer_id before status": (
        [_set("customer_id", ""), _set("order_status", 0)],
        ("customer_id_empty", "customer_id is empty"),
    ),
    "status before purchase timestamp": (
        [_set("order_status", 42), _drop_purchase],
        ("order_status_unknown", "order_status 42 is not a known OrderStatus"),
    ),
    "purchase timestamp missing before other timestamps": (
        [_drop_purchase, _set("order_approved_at.nanos", -1)],
        ("purchase_timestamp_missing", "order_purchase_timestamp is missing"),
    ),
    "order timestamps before items": (
        [_set("order_estimated_delivery_date.seconds", 1), _set("items[0].order_item_id", 0)],
        (
            "timestamp_out_of_range",
            "order_estimated_delivery_date is 1 seconds since the epoch, outside the years 2000..2100",
        ),
    ),
    "all checks of item 0 before item 1": (
        [_add_item, _set("items[0].freight_value_cents", -3), _set("items[1].order_item_id", 0)],
        ("money_negative", "items[0].freight_value_cents is -3; money cannot be negative"),
    ),
    "item id before item text": (
        [_set("items[0].order_item_id", 0), _set("items[0].product_id", "p" * 65)],
        ("item_id_zero", "items[0].order_item_id is 0; order_item_id starts at 1"),
    ),
    "item text before shipping limit date": (
        [_set("items[0].seller_id", "s" * 65), _set("items[0].shipping_limit_date.nanos", -1)],
        ("text_too_long", "items[0].seller_id is 65 bytes, more than the 64 allowed"),
    ),
    "product_id before seller_id": (
        [_set("items[0].seller_id", "s" * 70), _set("items[0].product_id", "p" * 66)],
        ("text_too_long", "items[0].product_id is 66 bytes, more than the 64 allowed"),
    ),
    "shipping limit date before money": (
        [_set("items[0].shipping_limit_date.seconds", 0), _set("items[0].price_cents", -1)],
        (
            "timestamp_out_of_range",
            "items[0].shipping_limit_date is 0 seconds since the epoch, outside the years 2000..2100",
        ),
    ),
    "price before freight": (
        [_set("items[0].freight_value_cents", -1), _set("items[0].price_cents", MONEY_MAX_CENTS + 1)],
        ("money_out_of_range", "items[0].price_cents is 1000000000000 cents, more than decimal(12,2) holds"),
    ),
    "items before payments": (
        [_set("payments[0].payment_type", 0), _set("items[0].price_cents", -2)],
        ("money_negative", "items[0].price_cents is -2; money cannot be negative"),
    ),
    "payment counters before payment type": (
        [_set("payments[0].payment_type", 0), _set("payments[0].payment_installments", 2**32 - 1)],
        ("payment_counter_out_of_range", "payments[0].payment_installments is 4294967295, more than 2147483647"),
    ),
    "payment_sequential before payment_installments": (
        [_set("payments[0].payment_installments", 2**31), _set("payments[0].payment_sequential", 2**31 + 1)],
        ("payment_counter_out_of_range", "payments[0].payment_sequential is 2147483649, more than 2147483647"),
    ),
    "payment type before payment value": (
        [_set("payments[0].payment_value_cents", -1), _set("payments[0].payment_type", 9)],
        ("payment_type_unknown", "payments[0].payment_type 9 is not a known PaymentType"),
    ),
    "payments before customer": (
        [_set("customer.customer_state", "s" * 300), _set("payments[0].payment_value_cents", -9)],
        ("money_negative", "payments[0].payment_value_cents is -9; money cannot be negative"),
    ),
    "customer_unique_id before the other customer fields": (
        [_set("customer.customer_zip_code_prefix", "z" * 300), _set("customer.customer_unique_id", "u" * 65)],
        ("text_too_long", "customer.customer_unique_id is 65 bytes, more than the 64 allowed"),
    ),
    "zip before city before state": (
        [_set("customer.customer_state", "s" * 300), _set("customer.customer_city", "c" * 299)],
        ("text_too_long", "customer.customer_city is 299 bytes, more than the 256 allowed"),
    ),
}


@pytest.mark.parametrize("case", FIRST_FAILING_RULE_CASES)
def test_first_failing_rule_is_the_reason(case):
    mutations, (reason, message) = FIRST_FAILING_RULE_CASES[case]
    assert_rejected(_breaking(*mutations), reason, message)


# -- a batch with several rejections ---------------------------------------------------


def test_rejections_are_listed_in_index_order_and_limited_on_request():
    orders = [valid_order(n) for n in range(6)]
    orders[1].order_status = 0
    orders[3].order_id = ""
    orders[4].items[0].price_cents = -1
    result = process(*orders)
    assert (result.accepted, result.duplicates, result.rejected) == (3, 0, 3)
    assert result.errors() == [
        RecordError(1, "evt-1", "order_status_unspecified", "order_status is ORDER_STATUS_UNSPECIFIED"),
        RecordError(3, "evt-3", "order_id_empty", "order_id is empty"),
        RecordError(4, "evt-4", "money_negative", "items[0].price_cents is -1; money cannot be negative"),
    ]
    assert result.errors(2) == result.errors()[:2]
    assert [row["order_id"] for row in rows(result.orders)] == ["order-0", "order-2", "order-5"]


def test_rejected_orders_leave_no_rows_in_any_table():
    order = valid_order(1)
    order.payments[0].payment_type = 0
    result = process(order)
    assert (result.accepted, result.rejected) == (0, 1)
    for table in (result.orders, result.order_items, result.order_payments, result.customers):
        assert rows(table) == []


def test_rejects_table_carries_each_rejected_order_with_its_bytes():
    orders = [valid_order(n) for n in range(3)]
    orders[0].event_id = "x" * 200
    orders[2].customer.customer_city = "c" * 257
    data = batch_bytes(*orders)
    rejects = rows(Core().process(data, now_ms=NOW_MS).rejects)
    assert [(r["index"], r["event_id"], r["reason"], r["message"]) for r in rejects] == [
        (0, "x" * 200, "event_id_too_long", "event_id is 200 bytes, more than the 128 allowed"),
        (2, "evt-2", "text_too_long", "customer.customer_city is 257 bytes, more than the 256 allowed"),
    ]
    for reject in rejects:
        order_bytes = data[reject["offset"] : reject["offset"] + reject["length"]]
        assert order_bytes == orders[reject["index"]].SerializeToString()


# -- batch rules -------------------------------------------------------------------------


def test_empty_batch_id_refuses_the_whole_batch():
    core = Core()
    with pytest.raises(InvalidBatch) as raised:
        core.process(batch_bytes(valid_order(0), batch_id=""), now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("batch_id_empty", None)
    assert core.dedup_size == 0


def test_empty_input_is_a_batch_without_batch_id():
    with pytest.raises(InvalidBatch) as raised:
        Core().process(b"", now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("batch_id_empty", None)


def test_batch_id_of_128_bytes_is_accepted():
    result = process(valid_order(0), batch_id="b" * 128)
    assert (result.batch_id, result.accepted) == ("b" * 128, 1)


def test_batch_id_of_129_bytes_refuses_the_whole_batch():
    core = Core()
    with pytest.raises(InvalidBatch) as raised:
        core.process(batch_bytes(valid_order(0), batch_id="é" * 64 + "b"), now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("batch_id_too_long", None)
    assert raised.value.retriable is False
    assert core.dedup_size == 0


def test_source_of_128_bytes_is_accepted():
    result = process(valid_order(0), source="s" * 128)
    assert (result.source, result.accepted) == ("s" * 128, 1)


def test_source_of_129_bytes_refuses_the_whole_batch():
    # source is repeated on every Bronze row, so it is kept short.
    core = Core()
    with pytest.raises(InvalidBatch) as raised:
        core.process(batch_bytes(valid_order(0), source="s" * 129), now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("source_too_long", None)
    assert raised.value.message == "source is 129 bytes, more than the 128 allowed"
    assert core.dedup_size == 0


def test_batch_whose_repeated_columns_would_pass_2_gib_is_refused_before_dedup():
    # 2,048 orders repeating a 1 MiB source: a 1 MiB input that would build a
    # 2 GiB source column, one byte past what 32-bit Arrow offsets address.
    core = Core(max_source_bytes=2**20)
    data = batch_bytes(*(valid_order(k) for k in range(2048)), source="s" * 2**20)
    with pytest.raises(InvalidBatch) as raised:
        core.process(data, now_ms=NOW_MS)
    assert (raised.value.code, raised.value.offset) == ("batch_too_large", None)
    assert "more than 2 GiB" in raised.value.message
    assert core.dedup_size == 0
    # The same core goes on taking batches, long sources included.
    fits = core.process(batch_bytes(valid_order(1), valid_order(2), source="s" * 2**20), now_ms=NOW_MS)
    assert rows(fits.orders)[1]["source"] == "s" * 2**20


def test_batch_without_orders_is_accepted_empty():
    result = process(batch_id="empty", source="")
    assert (result.batch_id, result.source) == ("empty", "")
    assert (result.accepted, result.duplicates, result.rejected) == (0, 0, 0)
    assert rows(result.orders) == []
