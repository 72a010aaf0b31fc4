"""The whole path with real components: a server process with its Bronze
worker, the Kafka cluster, Bronze on disk; and what the handlers make of odd
batches and of batches that overtake each other (a server in this process).
Orders go in through the client library; an independent consumer and a
Parquet reader check what came out."""

from __future__ import annotations

import asyncio
import collections
import signal
from datetime import UTC, datetime

import grpc
import pyarrow.compute as pc
import pyarrow.dataset as ds
from aiokafka.partitioner import murmur2
from kafkautil import read_all
from keystone_ingest.client.client import AsyncIngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.proto.v1 import ingest_pb2

CONTENT_TYPE = b"application/x-protobuf; messageType=keystone.ingest.v1.Order"
STREAM_METHOD = "/keystone.ingest.v1.OrderIngest/StreamOrders"


class Expected:
    """What must come out for a list of batches, worked out without the server:
    rejects from a core of each batch's own, accepted orders as the distinct
    event_ids of the rest (a duplicate carries the same bytes as its first copy)."""

    def __init__(self, batches: list[ingest_pb2.OrderBatch]) -> None:
        self.order_bytes: dict[str, bytes] = {}
        self.orders: dict[str, ingest_pb2.Order] = {}
        self.batches_of: dict[str, set[str]] = collections.defaultdict(set)
        self.rejects: dict[tuple[str, int], tuple[str, bytes]] = {}
        self.valid_copies = 0
        for batch in batches:
            result = Core().process(batch.SerializeToString())
            rejected = {e.index: e.reason for e in result.errors()}
            for i, order in enumerate(batch.orders):
                if i in rejected:
                    self.rejects[(batch.batch_id, i)] = (rejected[i], order.SerializeToString())
                    continue
                self.valid_copies += 1
                self.order_bytes.setdefault(order.event_id, order.SerializeToString())
                self.orders.setdefault(order.event_id, order)
                self.batches_of[order.event_id].add(batch.batch_id)


def check_kafka(deployment, expected: Expected) -> None:
    records = read_all(deployment.cluster.bootstrap, deployment.topic)
    event_ids = [r.header("event_id").decode() for r in records]
    assert sorted(event_ids) == sorted(expected.order_bytes)  # each accepted order once, nothing else
    for r in records:
        event_id = r.header("event_id").decode()
        assert r.value == expected.order_bytes[event_id]  # the client's bytes, byte for byte
        order = ingest_pb2.Order.FromString(r.value)
        assert r.key == order.order_id.encode()
        assert r.partition == (murmur2(r.key) & 0x7FFFFFFF) % 6  # the Java client's partitioner
        assert r.header("batch_id").decode() in expected.batches_of[event_id]
        assert r.header("source") == b"generator"
        assert r.header("content-type") == CONTENT_TYPE

    dead = read_all(deployment.cluster.bootstrap, deployment.dlq_topic)
    got = {
        (r.header("batch_id").decode(), int(r.header("error.index"))): (r.header("error.reason").decode(), r.value)
        for r in dead
    }
    assert len(dead) == len(got)
    assert got == expected.rejects


def check_bronze(deployment, expected: Expected) -> None:
    def table(name: str):
        return ds.dataset(deployment.bronze / name, format="parquet", partitioning="hive").to_table()

    orders = table("orders")
    assert sorted(orders["event_id"].to_pylist()) == sorted(expected.order_bytes)
    for row in orders.select(["event_id", "order_id", "order_purchase_timestamp", "year", "month", "day"]).to_pylist():
        sent = expected.orders[row["event_id"]]
        assert row["order_id"] == sent.order_id
        purchased = datetime.fromtimestamp(sent.order_purchase_timestamp.seconds, UTC)
        assert row["order_purchase_timestamp"].replace(microsecond=0) == purchased
        assert (row["year"], row["month"], row["day"]) == (purchased.year, purchased.month, purchased.day)

    # Children sit in their order's partition, and there are as many as were sent.
    partition_of = {r["order_id"]: (r["year"], r["month"], r["day"]) for r in orders.to_pylist()}
    accepted = list(expected.orders.values())
    for name, count in (
        ("order_items", lambda o: len(o.items)),
        ("order_payments", lambda o: len(o.payments)),
        ("customers", lambda o: int(o.HasField("customer"))),
    ):
        rows = table(name)
        assert rows.num_rows == sum(count(o) for o in accepted), name
        key = "customer_id" if name == "customers" else "order_id"
        by_customer = {o.customer_id: o.order_id for o in accepted}
        for r in rows.select([key, "year", "month", "day"]).to_pylist():
            order_id = by_customer[r[key]] if name == "customers" else r[key]
            assert (r["year"], r["month"], r["day"]) == partition_of[order_id], name
    items = table("order_items")
    assert pc.sum(items["price"]).as_py() * 100 == sum(i.price_cents for o in accepted for i in o.items)

    quarantine = ds.dataset(deployment.bronze / "_quarantine", format="parquet", partitioning="hive").to_table()
    got = {(r["batch_id"], r["index"]): (r["reason"], r["raw"]) for r in quarantine.to_pylist()}
    assert quarantine.num_rows == len(got)
    assert got == expected.rejects


def test_streams_and_unary_calls_land_every_accepted_order_once_in_kafka_and_bronze(deploy):
    d = deploy()
    gen = OrderGenerator(seed=11, duplicate_ratio=0.05, invalid_ratio=0.02)
    batches = [gen.batch(150) for _ in range(13)]
    expected = Expected(batches)

    async def send_all() -> list[ingest_pb2.BatchAck]:
        async def stream(part: list[ingest_pb2.OrderBatch]) -> list[ingest_pb2.BatchAck]:
            async with AsyncIngestClient(d.target, max_in_flight=3) as client:
                futures = [await client.send(b) for b in part]
                return [await f for f in futures]

        # Three concurrent streams of four batches each, then one unary call.
        acks = await asyncio.gather(*(stream(batches[i:12:3]) for i in range(3)))
        async with AsyncIngestClient(d.target) as client:
            unary = await client.ingest_unary(batches[12])
            resent = await client.ingest_unary(batches[0])  # same batch_id again
        return [a for part in acks for a in part] + [unary, resent]

    acks = asyncio.run(send_all())
    first, resent = next(a for a in acks if a.batch_id == batches[0].batch_id), acks[-1]
    assert resent.status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH
    assert (resent.accepted, resent.duplicates, resent.rejected) == (first.accepted, first.duplicates, first.rejected)
    fresh = acks[:-1]
    assert all(a.status == ingest_pb2.ACK_STATUS_ACCEPTED for a in fresh)
    assert sorted(a.batch_id for a in fresh) == sorted(b.batch_id for b in batches)
    assert sum(a.accepted for a in fresh) == len(expected.order_bytes)
    assert sum(a.duplicates for a in fresh) == expected.valid_copies - len(expected.order_bytes)
    assert sum(a.rejected for a in fresh) == len(expected.rejects)
    errors = {(a.batch_id, e.index): e.reason for a in fresh for e in a.errors}
    assert errors == {k: reason for k, (reason, _) in expected.rejects.items()}

    check_kafka(d, expected)
    d.wait_bronze()
    assert d.server.stop(signal.SIGTERM) == 0
    check_bronze(d, expected)
    messages = [r["msg"] for r in d.server.log_records()]
    assert "serving" in messages and messages[-1] == "stopped"


def test_a_batch_that_is_not_an_order_batch_is_rejected_and_the_stream_stays_open(in_process):
    d = in_process()
    good = OrderGenerator(seed=5).batch(10, batch_id="after-garbage")
    cut = OrderGenerator(seed=6).batch(3, batch_id="cut").SerializeToString()[:-5]
    with grpc.insecure_channel(d.target) as channel:
        call = channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )
        acks = list(
            call(
                iter(
                    [
                        b"\xff\xff\xff",
                        cut,
                        ingest_pb2.OrderBatch(source="s").SerializeToString(),
                        good.SerializeToString(),
                    ]
                ),
                timeout=30,
            )
        )
    assert [a.status for a in acks] == [ingest_pb2.ACK_STATUS_REJECTED] * 3 + [ingest_pb2.ACK_STATUS_ACCEPTED]
    assert [a.errors[0].reason for a in acks[:3]] == [
        "truncated: truncated varint at byte 0 in OrderBatch",
        "length_past_end: length runs past the end at byte 634 in orders[2]",
        "batch_id_empty: batch_id is empty; every batch needs an id of 1 to 128 bytes",
    ]
    assert acks[1].batch_id == ""  # the cut batch's id is not trusted
    assert (acks[3].batch_id, acks[3].accepted) == ("after-garbage", 10)
    records = read_all(d.cluster.bootstrap, d.topic)
    assert sorted(r.value for r in records) == sorted(o.SerializeToString() for o in good.orders)
    assert read_all(d.cluster.bootstrap, d.dlq_topic) == []  # a rejected batch is no order to quarantine
    assert d.metric("keystone_ingest_batches_total", status="rejected") == 3
    assert d.metric("keystone_ingest_batches_total", status="accepted") == 1


def test_records_of_one_order_id_reach_kafka_in_arrival_order_when_batches_overtake_each_other(in_process):
    # Big and small batches alternate on one stream with many in flight, so the
    # two core threads finish them out of order. Each batch carries one event
    # of order "K-1" (a status update, say); Kafka must hold them in the order
    # the batches arrived.
    d = in_process("--core-threads", "2", "--max-in-flight-per-stream", "16")
    generator = OrderGenerator(seed=77)
    batches = []
    for i in range(40):
        batch = generator.batch(3000 if i % 2 == 0 else 1)
        batch.orders[0].order_id = "K-1"
        batch.orders[0].event_id = f"k-event-{i:03d}"
        batches.append(batch)

    async def send() -> list[ingest_pb2.BatchAck]:
        async with AsyncIngestClient(d.target, max_in_flight=16) as client:
            futures = [await client.send(b) for b in batches]
            return [await f for f in futures]

    acks = asyncio.run(send())
    assert all(a.status == ingest_pb2.ACK_STATUS_ACCEPTED for a in acks)
    records = [r for r in read_all(d.cluster.bootstrap, d.topic) if r.key == b"K-1"]
    assert [r.header("event_id").decode() for r in records] == [f"k-event-{i:03d}" for i in range(40)]
