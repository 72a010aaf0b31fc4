"""`keystone-ingest replay` on small files in the exact format of the public
Olist dataset (tests/olistutil.py)."""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from keystone_ingest.client import cli
from keystone_ingest.client.replay import (
    OlistFormatError,
    OlistReader,
    ReplayOptions,
    RowProblem,
    olist_batches,
    run_replay_async,
)
from keystone_ingest.proto.v1 import ingest_pb2
from olistutil import ORDERS, PRODUCT, SELLER, A, B, C, D, E, F, write_olist
from test_client import run, running_peer


def utc(year, month, day, hour=0, minute=0, second=0) -> Timestamp:
    return Timestamp(seconds=calendar.timegm((year, month, day, hour, minute, second)))


@pytest.fixture
def olist_dir(tmp_path) -> Path:
    return write_olist(tmp_path)


def test_an_order_is_joined_with_its_items_payments_and_customer_field_by_field(olist_dir):
    orders = list(OlistReader(olist_dir).orders())
    # São Paulo is UTC-3 until daylight saving time starts on 2017-10-15, UTC-2 after.
    expected = ingest_pb2.Order(
        event_id=f"olist:{A}",
        order_id=A,
        customer_id="9ef432eb6251297304e76186b10a928d",
        order_status=ingest_pb2.ORDER_STATUS_DELIVERED,
        order_purchase_timestamp=utc(2017, 10, 2, 13, 56, 33),
        order_approved_at=utc(2017, 10, 2, 14, 7, 15),
        order_delivered_carrier_date=utc(2017, 10, 4, 22, 55, 0),
        order_delivered_customer_date=utc(2017, 10, 11, 0, 25, 13),
        order_estimated_delivery_date=utc(2017, 10, 18, 2, 0, 0),
        items=[
            ingest_pb2.OrderItem(
                order_item_id=n,
                product_id=PRODUCT,
                seller_id=SELLER,
                shipping_limit_date=utc(2017, 10, 6, 14, 7, 15),
                price_cents=2999,
                freight_value_cents=872,
            )
            for n in (1, 2)
        ],
        payments=[
            ingest_pb2.OrderPayment(
                payment_sequential=1,
                payment_type=ingest_pb2.PAYMENT_TYPE_CREDIT_CARD,
                payment_installments=1,
                payment_value_cents=1812,
            ),
            ingest_pb2.OrderPayment(
                payment_sequential=2,
                payment_type=ingest_pb2.PAYMENT_TYPE_VOUCHER,
                payment_installments=1,
                payment_value_cents=5730,
            ),
            ingest_pb2.OrderPayment(
                payment_sequential=3,
                payment_type=ingest_pb2.PAYMENT_TYPE_VOUCHER,
                payment_installments=1,
                payment_value_cents=200,
            ),
        ],
        customer=ingest_pb2.Customer(
            customer_unique_id="7c396fd4830fd04220f754e42b4e5bff",
            customer_zip_code_prefix="03149",
            customer_city="sao paulo",
            customer_state="SP",
        ),
    )
    assert orders[0] == expected


def test_empty_timestamps_stay_unset_and_quoted_commas_survive(olist_dir):
    order = list(OlistReader(olist_dir).orders())[1]
    assert order.order_id == B and order.order_status == ingest_pb2.ORDER_STATUS_INVOICED
    assert order.order_purchase_timestamp == utc(2017, 12, 5, 11, 0, 0)  # UTC-2 in December
    assert order.order_estimated_delivery_date == utc(2018, 1, 2, 2, 0, 0)
    assert not order.HasField("order_delivered_carrier_date") and not order.HasField("order_delivered_customer_date")
    assert [(i.order_item_id, i.price_cents, i.freight_value_cents) for i in order.items] == [(1, 11870, 2276)]
    payments = [(p.payment_type, p.payment_value_cents) for p in order.payments]
    assert payments == [(ingest_pb2.PAYMENT_TYPE_BOLETO, 14146)]
    assert order.customer.customer_city == "santa barbara d'oeste, sp"


def test_order_without_items_and_customer_row_is_sent_as_it_is(olist_dir):
    order = list(OlistReader(olist_dir).orders())[2]
    assert order.order_id == C and order.order_status == ingest_pb2.ORDER_STATUS_CANCELED
    assert [field.name for field, _ in order.ListFields()] == [
        "event_id",
        "order_id",
        "customer_id",
        "order_status",
        "order_purchase_timestamp",
        "order_estimated_delivery_date",
        "payments",
    ]
    assert order.order_purchase_timestamp == utc(2018, 8, 28, 18, 26, 39)
    assert list(order.payments) == [
        ingest_pb2.OrderPayment(
            payment_sequential=1,
            payment_type=ingest_pb2.PAYMENT_TYPE_NOT_DEFINED,
            payment_installments=1,
            payment_value_cents=0,
        )
    ]


def test_rows_the_contract_cannot_express_skip_their_order_with_a_warning(olist_dir, caplog):
    reader = OlistReader(olist_dir)
    with caplog.at_level(logging.WARNING, logger="keystone_ingest.client.replay"):
        sent = [order.order_id for order in reader.orders()]
    assert sent == [A, B, C]
    assert reader.orders_read == 6
    assert reader.skipped == {"unknown_order_status": 1, "bad_money": 1, "bad_timestamp": 1}
    assert reader.unmatched_rows == {"olist_order_items_dataset.csv": 1, "olist_order_payments_dataset.csv": 0}
    messages = sorted(record.getMessage() for record in caplog.records)
    assert messages == sorted(
        [
            f"order skipped: olist_orders_dataset.csv:5: order {D}: order_status 'pending' is not an Olist status",
            (
                f"order skipped: olist_order_payments_dataset.csv:7: order {E}: payment_value "
                "'179.125' is not a whole number of cents"
            ),
            (
                f"order skipped: olist_orders_dataset.csv:7: order {F}: order_purchase_timestamp "
                "'2018-02-30 10:00:00' is not a timestamp"
            ),
        ]
    )


def test_strict_stops_at_the_first_bad_row(olist_dir):
    # The child files are read first, so the bad payment row is met before the bad status.
    with pytest.raises(RowProblem) as stopped:
        list(OlistReader(olist_dir, strict=True).orders())
    problem = stopped.value
    assert (problem.reason, problem.file, problem.line, problem.order_id) == (
        "bad_money",
        "olist_order_payments_dataset.csv",
        7,
        E,
    )


def test_timezone_utc_takes_wall_clock_times_as_utc(olist_dir):
    order = next(OlistReader(olist_dir, timezone="UTC").orders())
    assert order.order_purchase_timestamp == utc(2017, 10, 2, 10, 56, 33)
    assert order.items[0].shipping_limit_date == utc(2017, 10, 6, 11, 7, 15)


def test_limit_counts_orders_sent(olist_dir):
    assert [order.order_id for order in OlistReader(olist_dir).orders(limit=2)] == [A, B]


def test_missing_file_or_column_is_a_format_error(tmp_path):
    write_olist(tmp_path, orders=[[cell for i, cell in enumerate(row) if i != 2] for row in ORDERS])
    with pytest.raises(OlistFormatError, match=r"olist_orders_dataset\.csv: missing column\(s\) order_status"):
        list(OlistReader(tmp_path).orders())
    (tmp_path / "olist_customers_dataset.csv").unlink()
    with pytest.raises(OlistFormatError, match=r"olist_customers_dataset\.csv: file not found"):
        list(OlistReader(tmp_path).orders())


def test_header_with_a_byte_order_mark_is_read(tmp_path):
    write_olist(tmp_path)
    path = tmp_path / "olist_orders_dataset.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [order.order_id for order in OlistReader(tmp_path).orders()] == [A, B, C]


def test_batch_ids_hash_the_content_and_the_bytes_are_the_orders(olist_dir):
    orders = list(OlistReader(olist_dir).orders())
    batches = list(olist_batches(orders, batch_size=2, source="olist-replay"))
    assert [batch.orders for batch in batches] == [2, 1]
    again = list(olist_batches(list(OlistReader(olist_dir).orders()), batch_size=2, source="olist-replay"))
    assert again == batches
    decoded = ingest_pb2.OrderBatch.FromString(batches[0].payload)
    assert decoded.batch_id == batches[0].batch_id
    assert decoded.batch_id.startswith("olist-") and len(decoded.batch_id) == 38
    assert decoded.source == "olist-replay" and list(decoded.orders) == orders[:2]
    other_source = next(olist_batches(orders, batch_size=2, source="elsewhere"))
    assert other_source.batch_id != batches[0].batch_id


def test_replaying_twice_is_answered_as_duplicate_batches(olist_dir):
    async def body():
        async with running_peer() as peer:
            options = ReplayOptions(olist_dir=olist_dir, target=peer.target, batch_size=2, streams=2)
            first = await run_replay_async(options)
            second = await run_replay_async(options)
        assert (first.orders, first.batches, first.accepted) == (3, 2, 3)
        assert first.statuses == {"ACCEPTED": 2, "DUPLICATE_BATCH": 0, "REJECTED": 0}
        assert second.statuses == {"ACCEPTED": 0, "DUPLICATE_BATCH": 2, "REJECTED": 0}
        assert first.extra == {
            "orders_read": 6,
            "skipped_orders": {"unknown_order_status": 1, "bad_money": 1, "bad_timestamp": 1},
            "unmatched_rows": {"olist_order_items_dataset.csv": 1, "olist_order_payments_dataset.csv": 0},
        }
        events = [o.event_id for raw in peer.received[:2] for o in ingest_pb2.OrderBatch.FromString(raw).orders]
        assert sorted(events) == sorted(f"olist:{order_id}" for order_id in (A, B, C))
        assert sorted(peer.received[:2]) == sorted(peer.received[2:])

    run(body)


def test_cli_replay_prints_json_with_what_was_read_and_skipped(olist_dir, capsys):
    async def body():
        async with running_peer() as peer:
            status = await asyncio.to_thread(
                cli.main,
                [
                    "replay",
                    "--olist-dir",
                    str(olist_dir),
                    "--target",
                    peer.target,
                    "--limit",
                    "2",
                    "--streams",
                    "1",
                    "--json",
                    "--no-progress",
                ],
            )
        summary = json.loads(capsys.readouterr().out)
        assert status == 0 and (summary["orders"], summary["accepted"], summary["seed"]) == (2, 2, None)
        assert summary["extra"]["orders_read"] == 2 and summary["extra"]["skipped_orders"] == {}
        assert [o.order_id for o in ingest_pb2.OrderBatch.FromString(peer.received[0]).orders] == [A, B]

    run(body)


def test_cli_replay_reports_unreadable_input_with_exit_status_2(tmp_path, capsys):
    write_olist(tmp_path)
    assert cli.main(["replay", "--olist-dir", str(tmp_path), "--strict", "--no-progress"]) == 2
    assert f"replay: olist_order_payments_dataset.csv:7: order {E}:" in capsys.readouterr().err
    assert cli.main(["replay", "--olist-dir", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert cli.main(["replay", "--olist-dir", str(tmp_path), "--timezone", "Mars/Olympus", "--no-progress"]) == 2
