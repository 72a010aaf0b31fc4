"""The synthetic order generator: deterministic, Olist-shaped, and its
duplicates and invalid orders are what the core will call them."""

from __future__ import annotations

import collections
import re
import statistics

import pytest
from keystone_ingest.client.generator import INVALID_RULES, OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.proto.v1 import ingest_pb2

HEX32 = re.compile(r"[0-9a-f]{32}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def sample() -> list[ingest_pb2.Order]:
    return OrderGenerator(seed=1).orders(20_000)


def test_same_seed_gives_the_same_bytes():
    first = OrderGenerator(seed=7, duplicate_ratio=0.1, invalid_ratio=0.1).batch(500).SerializeToString()
    second = OrderGenerator(seed=7, duplicate_ratio=0.1, invalid_ratio=0.1).batch(500).SerializeToString()
    other = OrderGenerator(seed=8, duplicate_ratio=0.1, invalid_ratio=0.1).batch(500).SerializeToString()
    assert first == second
    assert first != other


def test_batch_ids_count_up_from_the_seed():
    generator = OrderGenerator(seed=3)
    assert [generator.batch(1).batch_id for _ in range(3)] == ["gen-3-0", "gen-3-1", "gen-3-2"]
    assert generator.batch(1, batch_id="mine", source="replay").source == "replay"


def test_average_order_is_about_320_bytes(sample):
    assert 300 <= statistics.mean(order.ByteSize() for order in sample) <= 340


def test_ids_look_like_olist_ids(sample):
    for order in sample[:1000]:
        assert UUID.fullmatch(order.event_id)
        assert HEX32.fullmatch(order.order_id) and HEX32.fullmatch(order.customer_id)
        assert HEX32.fullmatch(order.customer.customer_unique_id)
        assert re.fullmatch(r"\d{5}", order.customer.customer_zip_code_prefix)
        assert all(HEX32.fullmatch(item.product_id) and HEX32.fullmatch(item.seller_id) for item in order.items)


def test_mix_of_statuses_items_payments_and_states_is_olist_like(sample):
    n = len(sample)
    statuses = collections.Counter(order.order_status for order in sample)
    assert 0.95 <= statuses[ingest_pb2.ORDER_STATUS_DELIVERED] / n <= 0.99
    assert 0.87 <= sum(len(order.items) == 1 for order in sample) / n <= 0.92
    payments = [payment for order in sample for payment in order.payments]
    credit_card = sum(p.payment_type == ingest_pb2.PAYMENT_TYPE_CREDIT_CARD for p in payments) / len(payments)
    assert 0.70 <= credit_card <= 0.78
    assert {p.payment_installments for p in payments} <= set(range(1, 11))
    sao_paulo_state = sum(order.customer.customer_state == "SP" for order in sample) / n
    assert 0.38 <= sao_paulo_state <= 0.46


def test_timestamps_exist_only_once_the_status_says_they_happened(sample):
    for order in sample:
        delivered = order.order_status == ingest_pb2.ORDER_STATUS_DELIVERED
        assert order.HasField("order_delivered_customer_date") == delivered
        if order.order_status in (ingest_pb2.ORDER_STATUS_CREATED, ingest_pb2.ORDER_STATUS_APPROVED):
            assert not order.HasField("order_delivered_carrier_date")
        purchase_s = order.order_purchase_timestamp.seconds
        assert 1_472_688_000 <= purchase_s < 1_541_041_200  # 2016-09-01 .. 2018-11-01 in Brazil (UTC-3)
        for name in ("order_approved_at", "order_delivered_carrier_date", "order_delivered_customer_date"):
            if order.HasField(name):
                assert getattr(order, name).seconds >= purchase_s


def test_money_is_whole_cents_and_payments_cover_the_items(sample):
    for order in sample:
        if not order.items:
            continue
        total_cents = sum(item.price_cents + item.freight_value_cents for item in order.items)
        assert sum(payment.payment_value_cents for payment in order.payments) == total_cents
        assert all(500 <= item.freight_value_cents <= 5000 for item in order.items)


def test_every_order_without_duplicates_or_invalid_ones_is_accepted():
    result = Core().process(OrderGenerator(seed=2).batch(5000).SerializeToString())
    assert (result.accepted, result.duplicates, result.rejected) == (5000, 0, 0)


def test_invalid_orders_break_the_rules_in_turn():
    generator = OrderGenerator(seed=4, invalid_ratio=1.0)
    result = Core().process(generator.batch(2 * len(INVALID_RULES)).SerializeToString())
    assert result.accepted == 0
    assert [error.reason for error in result.errors()] == list(INVALID_RULES) * 2


def test_duplicates_are_byte_identical_resends_of_earlier_orders():
    generator = OrderGenerator(seed=5, duplicate_ratio=0.2)
    orders = generator.orders(2000)
    serialized = [order.SerializeToString() for order in orders]
    event_ids = collections.Counter(order.event_id for order in orders)
    repeats = [event_id for event_id, count in event_ids.items() if count > 1]
    assert repeats
    for event_id in repeats:
        assert len({s for s, o in zip(serialized, orders, strict=True) if o.event_id == event_id}) == 1
    result = Core().process(ingest_pb2.OrderBatch(batch_id="d", orders=orders).SerializeToString())
    assert result.duplicates == len(orders) - len(event_ids)


def test_ratios_outside_zero_to_one_are_refused():
    with pytest.raises(ValueError):
        OrderGenerator(duplicate_ratio=0.7, invalid_ratio=0.7)
    with pytest.raises(ValueError):
        OrderGenerator(invalid_ratio=-0.1)
