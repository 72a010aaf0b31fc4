"""The Kafka sink against Apache Kafka (the session's 3-node cluster), read back
with an independent consumer (confluent-kafka): exact records, partitions,
order, failures. Brokers stopped, hung and restarted are real; the mock
cluster stands in only where a test needs an error code or a late answer a
real broker cannot give on demand."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer
from kafkautil import KafkaCluster, Record, read_all
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.dev.mockbroker import MockBroker
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.errors import ShuttingDown, SinkFailed, SinkUnavailable
from keystone_ingest.server.limits import WhenFull
from keystone_ingest.server.metrics import Metrics
from keystone_ingest.server.sinks.kafka import CONTENT_TYPE, KafkaConfig, KafkaSink, ProducerReplaced, classify
from waiting import wait_until, wait_until_async


# org.apache.kafka.common.utils.UtilsTest#testMurmur2
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a key: aiokafka's murmur2, made positive."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def make_batch(
    seed: int = 1,
    orders: int = 300,
    duplicate_ratio: float = 0.0,
    invalid_ratio: float = 0.0,
    core: Core | None = None,
    order_ids: list[str] | None = None,
    batch_index: int = 0,
) -> Batch:
    generator = OrderGenerator(seed=seed, duplicate_ratio=duplicate_ratio, invalid_ratio=invalid_ratio)
    message = generator.batch(orders)
    if batch_index:
        message.batch_id = f"{message.batch_id}-{batch_index}"
    if order_ids is not None:  # the same keys again and again: updates of the same orders
        for k, order in enumerate(message.orders):
            order.order_id = order_ids[k % len(order_ids)]
    raw = message.SerializeToString()
    return Batch(raw, (core or Core()).process(raw))


def expected_headers(batch: Batch, event_id: str) -> list[tuple[str, bytes]]:
    return [
        ("event_id", event_id.encode()),
        ("batch_id", batch.batch_id.encode()),
        ("source", batch.source.encode()),
        ("content-type", CONTENT_TYPE),
    ]


def run_sink(config: KafkaConfig, scenario, metrics: Metrics | None = None, timeout_s: float = 180.0):
    async def main():
        sink = KafkaSink(config, metrics=metrics)
        await sink.start()
        try:
            return await scenario(sink)
        finally:
            await sink.stop()

    # Bounded, so a hang fails the test (with the stack) instead of stalling the suite.
    return asyncio.run(asyncio.wait_for(main(), timeout_s))


def by_partition(records: list[Record]) -> dict[int, list[Record]]:
    out: dict[int, list[Record]] = {}
    for r in records:
        out.setdefault(r.partition, []).append(r)
    return out


def test_the_native_key_hash_is_kafkas_murmur2():
    batch = make_batch(seed=7, orders=500)
    order_ids = batch.tables["orders"].column("order_id").to_pylist()
    key_hashes = batch.spans.column("key_hash").to_pylist()
    assert key_hashes == [murmur2(k.encode()) & 0x7FFFFFFF for k in order_ids]


def test_partitions_agree_with_librdkafkas_java_compatible_murmur2_partitioner(kafka_cluster: KafkaCluster):
    # librdkafka's "murmur2" partitioner is its Java-compatible one: an
    # implementation independent of ours, checked through real deliveries.
    topic = kafka_cluster.new_topic("java-partitioner", partitions=7)
    keys = [f"order-{i}".encode() for i in range(200)] + [b"", "pedido-ção".encode()]
    delivered: dict[bytes, int] = {}
    producer = Producer({"bootstrap.servers": kafka_cluster.bootstrap, "partitioner": "murmur2"})

    def on_delivery(err, msg) -> None:
        assert err is None
        delivered[msg.key()] = msg.partition()

    for key in keys:
        producer.produce(topic, value=b"v", key=key, on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert delivered == {key: partition_for(key, 7) for key in keys}


def test_accepted_orders_land_once_each_with_key_value_headers_and_java_partition(
    kafka_cluster: KafkaCluster, topics: tuple[str, str]
):
    topic, dlq = topics
    batch = make_batch(seed=3, orders=600, duplicate_ratio=0.05, invalid_ratio=0.05)
    assert batch.result.duplicates > 0 and batch.rejected > 0
    run_sink(KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq), lambda sink: sink.publish(batch))

    records = read_all(kafka_cluster.bootstrap, topic)
    order_ids = batch.tables["orders"].column("order_id").to_pylist()
    event_ids = batch.tables["orders"].column("event_id").to_pylist()
    spans = batch.spans.to_pylist()
    expected = {
        event_id: (order_id.encode(), batch.raw[span["offset"] : span["offset"] + span["length"]])
        for order_id, event_id, span in zip(order_ids, event_ids, spans, strict=True)
    }
    assert len(records) == batch.accepted == len(expected)
    received_ms = batch.received_ns // 1_000_000
    for record in records:
        event_id = record.header("event_id").decode()
        key, value = expected.pop(event_id)
        assert (record.key, record.value) == (key, value)  # byte for byte the client's Order
        order = ingest_pb2.Order.FromString(record.value)
        assert (order.order_id.encode(), order.event_id) == (record.key, event_id)
        assert record.headers == expected_headers(batch, event_id)
        assert record.partition == partition_for(record.key, 6)
        assert record.timestamp_ms == received_ms
    assert expected == {}
    # Inside each partition, records keep the batch's order.
    position = {e: k for k, e in enumerate(event_ids)}
    for partition_records in by_partition(records).values():
        positions = [position[r.header("event_id").decode()] for r in partition_records]
        assert positions == sorted(positions)


def test_rejected_orders_go_to_one_dlq_partition_with_their_reason_index_and_message(
    kafka_cluster: KafkaCluster, topics: tuple[str, str]
):
    topic, dlq = topics
    batch = make_batch(seed=4, orders=400, invalid_ratio=0.1)
    rejects = batch.rejects.to_pylist()
    assert len(rejects) == batch.rejected > 10
    run_sink(KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq), lambda sink: sink.publish(batch))

    records = read_all(kafka_cluster.bootstrap, dlq)
    assert len(records) == len(rejects)
    dlq_partition = partition_for(batch.batch_id.encode(), 3)
    for record, reject in zip(records, rejects, strict=True):  # one partition: batch order
        assert record.partition == dlq_partition
        assert record.key is None
        assert record.value == batch.raw[reject["offset"] : reject["offset"] + reject["length"]]
        assert record.headers == [
            *expected_headers(batch, reject["event_id"]),
            ("error.reason", reject["reason"].encode()),
            ("error.index", str(reject["index"]).encode()),
            ("error.message", reject["message"].encode()),
        ]
    assert len(read_all(kafka_cluster.bootstrap, topic)) == batch.accepted


def test_a_batch_of_duplicates_only_publishes_nothing(kafka_cluster: KafkaCluster, topics: tuple[str, str]):
    topic, dlq = topics
    core = Core()
    first = make_batch(seed=5, orders=50, core=core)
    again = make_batch(seed=5, orders=50, core=core)
    assert (again.accepted, again.rejected, again.result.duplicates) == (0, 0, 50)

    async def scenario(sink: KafkaSink):
        await sink.publish(first)
        await sink.publish(again)

    run_sink(KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq), scenario)
    assert len(read_all(kafka_cluster.bootstrap, topic)) == 50


def test_concurrent_publishes_keep_each_order_ids_records_in_call_order(
    kafka_cluster: KafkaCluster, topics: tuple[str, str]
):
    topic, dlq = topics
    keys = [f"order-{k}" for k in range(24)]
    core = Core()
    batches = [make_batch(seed=100 + b, orders=60, core=core, order_ids=keys, batch_index=b + 1) for b in range(40)]
    # Tiny record batches: every publish spans several of them per partition,
    # so the lanes queue, roll and interleave concurrent publishes.
    config = KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq, max_batch_bytes=2048)

    async def scenario(sink: KafkaSink):
        await asyncio.gather(*(sink.publish(b) for b in batches))  # called in list order

    run_sink(config, scenario)
    expected: dict[bytes, list[str]] = {}
    for batch in batches:
        for order_id, event_id in zip(
            batch.tables["orders"].column("order_id").to_pylist(),
            batch.tables["orders"].column("event_id").to_pylist(),
            strict=True,
        ):
            expected.setdefault(order_id.encode(), []).append(event_id)
    got: dict[bytes, list[str]] = {}
    for record in read_all(kafka_cluster.bootstrap, topic):
        got.setdefault(record.key, []).append(record.header("event_id").decode())
    assert sum(map(len, got.values())) == 40 * 60
    assert got == expected


@pytest.mark.parametrize("compression", ["zstd", "lz4", "snappy", "gzip", "none"])
def test_every_compression_codec_round_trips_the_order_bytes(
    kafka_cluster: KafkaCluster, topics: tuple[str, str], compression: str
):
    topic, dlq = topics
    batch = make_batch(seed=9, orders=200)
    run_sink(
        KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq, compression=compression),
        lambda sink: sink.publish(batch),
    )
    values = sorted(r.value for r in read_all(kafka_cluster.bootstrap, topic))
    spans = batch.spans.to_pylist()
    assert values == sorted(batch.raw[s["offset"] : s["offset"] + s["length"]] for s in spans)


def test_metrics_count_acked_records_per_topic_and_time_each_record_batch(
    kafka_cluster: KafkaCluster, topics: tuple[str, str]
):
    topic, dlq = topics
    metrics = Metrics()
    batch = make_batch(seed=11, orders=300, invalid_ratio=0.05)
    run_sink(
        KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq), lambda sink: sink.publish(batch), metrics
    )
    sample = metrics.registry.get_sample_value
    assert sample("keystone_ingest_kafka_records_total", {"topic": topic}) == batch.accepted
    assert sample("keystone_ingest_kafka_records_total", {"topic": dlq}) == batch.rejected
    # one record batch per partition that got records (6 orders partitions, 1 DLQ partition)
    assert sample("keystone_ingest_kafka_send_seconds_count") == 7


def test_stop_waits_until_every_record_handed_over_is_acked(kafka_cluster: KafkaCluster, topics: tuple[str, str]):
    topic, dlq = topics
    batches = [make_batch(seed=20 + k, orders=100) for k in range(5)]

    async def main():
        sink = KafkaSink(KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq))
        await sink.start()
        publishes = [asyncio.create_task(sink.publish(b)) for b in batches]
        # Polled at every turn of the loop, from the first: records handed over and none acked yet.
        await wait_until_async(
            lambda: sink.stats()["unsettled_record_batches"] > 0, 10, what="records handed to the producer", step_s=0
        )
        await sink.stop()
        assert all(p.done() for p in publishes)
        await asyncio.gather(*publishes)  # none failed
        with pytest.raises(ShuttingDown):
            await sink.publish(batches[0])

    asyncio.run(main())
    assert len(read_all(kafka_cluster.bootstrap, topic)) == 500


def test_publish_while_all_brokers_are_down_raises_sink_unavailable_and_recovers(breakable_kafka: KafkaCluster):
    cluster = breakable_kafka
    topic, dlq = cluster.new_topic("down-orders", 6), cluster.new_topic("down-orders.dlq", 1)
    metrics = Metrics()
    before, during, after = (make_batch(seed=30 + k, orders=100) for k in range(3))
    config = KafkaConfig(cluster.bootstrap, topic=topic, dlq_topic=dlq, send_timeout_s=1.0, probe_interval_s=0.2)

    async def scenario(sink: KafkaSink):
        await sink.publish(before)
        assert sink.available
        await asyncio.to_thread(cluster.stop_all)
        try:
            started = time.monotonic()
            with pytest.raises(SinkUnavailable) as failure:
                await sink.publish(during)
            assert failure.value.retriable
            assert time.monotonic() - started >= 1.0  # the send deadline, not sooner
            assert not sink.available and sink.unavailable_since is not None
        finally:
            await asyncio.to_thread(cluster.start_all)
        # acks=all needs min.insync.replicas (2) in sync again: until the
        # followers have caught up the leaders answer NOT_ENOUGH_REPLICAS.
        await asyncio.to_thread(cluster.wait_in_sync, [topic, dlq])
        await asyncio.wait_for(sink.publish(after), 30)
        assert sink.available

    run_sink(config, scenario, metrics)
    assert metrics.registry.get_sample_value("keystone_ingest_kafka_errors_total", {"kind": "send_timeout"}) == 1
    # The timed-out batch was still delivered once the brokers came back, once:
    # the idempotent producer's retries are deduplicated by the real broker.
    records = read_all(cluster.bootstrap, topic)
    expected = {e for b in (before, during, after) for e in b.tables["orders"].column("event_id").to_pylist()}
    assert sorted(r.header("event_id").decode() for r in records) == sorted(expected)


def test_a_full_send_buffer_fails_fast_instead_of_queueing_more(breakable_kafka: KafkaCluster):
    cluster = breakable_kafka
    topic, dlq = cluster.new_topic("full-orders", 6), cluster.new_topic("full-orders.dlq", 1)
    config = KafkaConfig(cluster.bootstrap, topic=topic, dlq_topic=dlq, send_timeout_s=0.5, max_buffer_bytes=1)
    first, second = make_batch(seed=40, orders=50), make_batch(seed=41, orders=50)

    async def scenario(sink: KafkaSink):
        for node in cluster.node_ids:  # every broker hangs: nothing is acked
            cluster.pause_node(node)
        try:
            with pytest.raises(SinkUnavailable, match="did not ack"):
                await sink.publish(first)
            # Refused before it awaits anything: done within one turn of the loop.
            refused = asyncio.ensure_future(sink.publish(second))
            await asyncio.sleep(0)
            assert refused.done()
            with pytest.raises(SinkUnavailable, match="send buffer full"):
                await refused
        finally:
            for node in cluster.node_ids:
                cluster.resume_node(node)

    run_sink(config, scenario)


def test_a_full_send_buffer_that_blocks_lets_the_next_batch_in_once_acks_make_room(kafka_cluster: KafkaCluster):
    topic, dlq = kafka_cluster.new_topic("block-orders", 3), kafka_cluster.new_topic("block-orders.dlq", 1)
    batches = [make_batch(seed=42 + k, orders=50) for k in range(3)]

    async def concurrently(sink: KafkaSink):
        # The first publish fills the buffer before it awaits anything; the
        # others meet a full buffer.
        return await asyncio.gather(*(sink.publish(b) for b in batches), return_exceptions=True)

    for when_full, topic_now in ((WhenFull.REFUSE, None), (WhenFull.BLOCK, topic)):
        metrics = Metrics()
        config = KafkaConfig(
            kafka_cluster.bootstrap,
            topic=topic_now or kafka_cluster.new_topic("refuse-orders", 3),
            dlq_topic=dlq,
            max_buffer_bytes=1,
            when_full=when_full,
        )
        outcomes = run_sink(config, concurrently, metrics)
        refused = metrics.registry.get_sample_value("keystone_ingest_kafka_errors_total", {"kind": "buffer_full"})
        if when_full is WhenFull.REFUSE:
            assert outcomes[0] is None
            assert [type(o) for o in outcomes[1:]] == [SinkUnavailable, SinkUnavailable] and refused == 2
            assert all("send buffer full" in o.message and o.retry_after_s for o in outcomes[1:])
        else:
            assert outcomes == [None, None, None] and refused is None
    got = sorted(r.header("event_id").decode() for r in read_all(kafka_cluster.bootstrap, topic))
    assert got == sorted(e for b in batches for e in event_ids(b))


def test_a_full_send_buffer_that_blocks_refuses_at_the_send_deadline(breakable_kafka: KafkaCluster):
    cluster = breakable_kafka
    topic, dlq = cluster.new_topic("blocked-orders", 6), cluster.new_topic("blocked-orders.dlq", 1)
    config = KafkaConfig(
        cluster.bootstrap,
        topic=topic,
        dlq_topic=dlq,
        send_timeout_s=0.5,
        max_buffer_bytes=1,
        when_full=WhenFull.BLOCK,
    )
    first, second = make_batch(seed=45, orders=50), make_batch(seed=46, orders=50)

    async def scenario(sink: KafkaSink):
        for node in cluster.node_ids:  # every broker hangs: nothing is acked, no room is made
            cluster.pause_node(node)
        try:
            with pytest.raises(SinkUnavailable, match="did not ack"):
                await sink.publish(first)
            with pytest.raises(SinkUnavailable, match="send buffer full"):
                await sink.publish(second)
        finally:
            for node in cluster.node_ids:
                cluster.resume_node(node)

    metrics = Metrics()
    run_sink(config, scenario, metrics)
    assert metrics.registry.get_sample_value("keystone_ingest_kafka_errors_total", {"kind": "buffer_full"}) == 1


def test_produce_errors_are_retried_or_classified_by_their_retriable_flag(mock_broker: MockBroker):
    topic, dlq = "err-orders", "err-orders.dlq"
    mock_broker.create_topic(topic, partitions=1)
    mock_broker.create_topic(dlq, partitions=1)
    config = KafkaConfig(mock_broker.bootstrap, topic=topic, dlq_topic=dlq)
    retried, refused = make_batch(seed=50, orders=20), make_batch(seed=51, orders=20)

    async def scenario(sink: KafkaSink):
        # Retriable: aiokafka retries within the same producer session; the publish succeeds.
        mock_broker.push_request_errors("Produce", ["NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT"])
        await asyncio.wait_for(sink.publish(retried), 10)
        # Permanent: the publish fails with SinkFailed, not retriable.
        mock_broker.push_request_errors("Produce", ["MSG_SIZE_TOO_LARGE"])
        with pytest.raises(SinkFailed, match="MessageSizeTooLargeError") as failure:
            await asyncio.wait_for(sink.publish(refused), 10)
        assert not failure.value.retriable

    try:
        run_sink(config, scenario)
    finally:
        mock_broker.clear_request_errors("Produce")
    records = read_all(mock_broker.bootstrap, topic)
    assert [r.header("event_id").decode() for r in records] == retried.tables["orders"].column("event_id").to_pylist()


def event_ids(batch: Batch) -> list[str]:
    return batch.tables["orders"].column("event_id").to_pylist()


def test_a_producer_the_broker_no_longer_accepts_is_replaced_and_the_resend_succeeds(mock_broker: MockBroker):
    # Against a real broker every later record batch of this producer would
    # fail the same way (its sequence numbers are out of step; the mock
    # cluster checks them only for transactional producers), so the sink
    # replaces the producer and fails the batch retriably.
    topic, dlq = "fenced-orders", "fenced-orders.dlq"
    mock_broker.create_topic(topic, partitions=1)
    mock_broker.create_topic(dlq, partitions=1)
    metrics = Metrics()
    before, refused, after = (make_batch(seed=60 + k, orders=10) for k in range(3))

    async def scenario(sink: KafkaSink):
        await sink.publish(before)
        mock_broker.push_request_errors("Produce", ["OUT_OF_ORDER_SEQUENCE_NUMBER"])
        with pytest.raises(SinkUnavailable, match="OutOfOrderSequenceNumber") as failure:
            await asyncio.wait_for(sink.publish(refused), 10)
        assert failure.value.retriable and 0.5 <= failure.value.retry_after_s <= 1.0
        await asyncio.wait_for(sink.publish(after), 10)  # waits for the new producer
        await asyncio.wait_for(sink.publish(refused), 10)  # the client's resend
        assert sink.available
        assert sink.stats()["replacements"] == 1 and sink.stats()["producer_generation"] == 2

    try:
        run_sink(KafkaConfig(mock_broker.bootstrap, topic=topic, dlq_topic=dlq), scenario, metrics)
    finally:
        mock_broker.clear_request_errors("Produce")
    sample = metrics.registry.get_sample_value
    assert sample("keystone_ingest_kafka_producer_replacements_total", {"reason": "producer_state"}) == 1
    assert sample("keystone_ingest_kafka_producer_state", {"state": "connected"}) == 1
    records = read_all(mock_broker.bootstrap, topic)  # one partition: publish order
    assert [r.header("event_id").decode() for r in records] == event_ids(before) + event_ids(after) + event_ids(refused)


def test_records_queued_while_the_producer_is_replaced_go_to_the_new_one_once(mock_broker: MockBroker):
    topic, dlq = "swap-orders", "swap-orders.dlq"
    mock_broker.create_topic(topic, partitions=1)
    mock_broker.create_topic(dlq, partitions=1)
    batches = [make_batch(seed=70 + k, orders=20) for k in range(8)]

    async def scenario(sink: KafkaSink):
        mock_broker.push_request_errors("Produce", ["UNKNOWN_PRODUCER_ID"])
        with pytest.raises(SinkUnavailable, match="UnknownProducerId"):
            await asyncio.wait_for(sink.publish(batches[0]), 10)
        assert sink.state == "replacing" and not sink.available
        # Published while no producer takes records: they wait in their lane
        # and go to the new producer, none of them fails.
        await asyncio.wait_for(asyncio.gather(*(sink.publish(b) for b in batches[1:])), 10)
        assert sink.stats()["replacements"] == 1 and sink.stats()["unsettled_record_batches"] == 0
        assert sink.state == "connected"

    try:
        run_sink(KafkaConfig(mock_broker.bootstrap, topic=topic, dlq_topic=dlq), scenario)
    finally:
        mock_broker.clear_request_errors("Produce")
    records = read_all(mock_broker.bootstrap, topic)
    assert [r.header("event_id").decode() for r in records] == [e for b in batches[1:] for e in event_ids(b)]


def test_a_producer_stuck_on_a_hung_leader_is_replaced_and_the_new_producer_id_passes_the_brokers_checks(
    breakable_kafka: KafkaCluster,
):
    # The leader hangs (SIGSTOP): the record batch handed to it is neither acked
    # nor failed, so the producer is replaced. The real broker checks every
    # producer id's sequence numbers: a record batch stamped for the old
    # producer and sent again by the new one would be refused
    # (OutOfOrderSequenceNumber / UnknownProducerId) and the publish would fail.
    cluster = breakable_kafka
    topic, dlq = cluster.new_topic("stuck-orders", 1), cluster.new_topic("stuck-orders.dlq", 1)
    metrics = Metrics()
    first, stuck, queued = make_batch(seed=79, orders=5), make_batch(seed=80, orders=20), make_batch(seed=81, orders=20)
    config = KafkaConfig(
        cluster.bootstrap,
        topic=topic,
        dlq_topic=dlq,
        send_timeout_s=5.0,
        replace_after_s=1.0,
        replace_drain_s=0.2,
        probe_interval_s=0.2,
    )

    async def scenario(sink: KafkaSink):
        await sink.publish(first)
        leader = cluster.leader(topic, 0)
        cluster.pause_node(leader)
        try:
            with pytest.raises(SinkUnavailable):
                await sink.publish(stuck)  # its deadline passes; then the producer is replaced under it
            started = time.monotonic()
            await wait_until_async(
                lambda: sink.stats()["replacements"] >= 1, 30, what=lambda: f"a replacement {sink.stats()}"
            )
            # The controller fences the hung node and elects another leader;
            # the hung one stays paused meanwhile, so the request it holds
            # from the old producer can never be appended late.
            other = next(n for n in cluster.node_ids if n != leader)
            await asyncio.to_thread(
                wait_until,
                lambda: cluster.leader(topic, 0, 30.0, other) != leader,
                30,
                what=f"a leader other than node {leader}, as node {other} sees it",
                step_s=0.2,
            )
            # Published after the replacement: straight to the new producer
            # (resent as a client would until its metadata finds the new leader).
            while True:
                try:
                    await sink.publish(queued)
                    break
                except SinkUnavailable:
                    assert time.monotonic() - started < 60
        finally:
            cluster.resume_node(leader)
        await asyncio.wait_for(sink.publish(stuck), 30)  # the client's resend
        assert sink.available and sink.stats()["replacements"] >= 1

    run_sink(config, scenario, metrics)
    # Every record batch waiting over a second counts as stuck here, so the
    # leader's move may cost a second replacement; each passes the checks.
    assert (
        metrics.registry.get_sample_value("keystone_ingest_kafka_producer_replacements_total", {"reason": "stalled"})
        >= 1
    )
    errors = {
        s.labels["kind"]
        for s in metrics.registry.collect()
        for s in s.samples
        if s.name == "keystone_ingest_kafka_errors_total"
    }
    assert not errors & {"OutOfOrderSequenceNumber", "UnknownProducerId", "InvalidProducerEpoch"}, errors
    cluster.wait_in_sync([topic])  # the resumed node is a follower again: metadata names the new leader
    records = read_all(cluster.bootstrap, topic)
    got = [r.header("event_id").decode() for r in records]
    # Every order is there; the first batch, acked before the leader hung,
    # exactly once and first. A resend through a new producer may add a copy
    # (the broker cannot match a new producer id against an old one), always
    # with the same bytes.
    assert got[:5] == event_ids(first) and set(got) == set(event_ids(first) + event_ids(queued) + event_ids(stuck))
    values: dict[str, set[bytes]] = {}
    for r in records:
        values.setdefault(r.header("event_id").decode(), set()).add(r.value)
    assert all(len(v) == 1 for v in values.values())


def test_a_replacement_during_a_full_outage_keeps_trying_and_publishes_within_2_s_of_the_brokers_return(
    breakable_kafka: KafkaCluster,
):
    cluster = breakable_kafka
    topic, dlq = cluster.new_topic("outage-swap-orders", 3), cluster.new_topic("outage-swap-orders.dlq", 1)
    metrics = Metrics()
    stuck, later = make_batch(seed=85, orders=30), make_batch(seed=86, orders=30)
    config = KafkaConfig(
        cluster.bootstrap,
        topic=topic,
        dlq_topic=dlq,
        send_timeout_s=3.0,
        replace_after_s=1.0,
        replace_drain_s=0.2,
        probe_interval_s=0.2,
        start_timeout_s=2.0,
    )

    async def scenario(sink: KafkaSink):
        await asyncio.to_thread(cluster.stop_all)
        try:
            with pytest.raises(ProducerReplaced):
                await sink.publish(stuck)
            # Replaced, and the new producer cannot start while every broker is down.
            await wait_until_async(
                lambda: (
                    (
                        metrics.registry.get_sample_value(
                            "keystone_ingest_kafka_retries_total", {"kind": "producer_start"}
                        )
                        or 0
                    )
                    >= 3
                ),
                15,
                what="three failed starts of the new producer",
            )
            assert sink.state == "replacing"
        finally:
            await asyncio.to_thread(cluster.start_all)  # returns once every node answers
        # acks=all takes writes again once the followers are back in sync
        # (NOT_ENOUGH_REPLICAS until then); from there the producer started
        # meanwhile must publish at once.
        await asyncio.to_thread(cluster.wait_in_sync, [topic, dlq])
        up_at = time.monotonic()
        await asyncio.wait_for(sink.publish(later), 10)
        resumed_s = time.monotonic() - up_at
        print(f"published {resumed_s:.3f} s after the brokers were back in sync, through a producer started meanwhile")
        assert resumed_s < 2.0, resumed_s
        await asyncio.wait_for(sink.publish(stuck), 10)  # the client's resend
        assert sink.state == "connected" and sink.stats()["replacements"] == 1

    run_sink(config, scenario, metrics)
    got = [r.header("event_id").decode() for r in read_all(cluster.bootstrap, topic)]
    assert sorted(got) == sorted(event_ids(stuck) + event_ids(later))  # the stuck attempt never reached Kafka


def test_across_a_replacement_a_record_batch_the_old_producer_wrote_is_written_again_by_the_resend():
    # The README's case: the old producer sent a record batch, the broker
    # appended it, the answer did not come before the replacement's drain
    # ended. The batch fails with ProducerReplaced; its resend goes through
    # the new producer, whose id the broker cannot match against the old one:
    # the records are in Kafka twice, same bytes, the resend's later timestamp.
    topic, dlq = "resend-orders", "resend-orders.dlq"
    raw = OrderGenerator(seed=95).batch(15).SerializeToString()
    # A broker of its own: broker-level injected errors change how a broker
    # treats cluster-level ones for good (see devbroker.py).
    with MockBroker(brokers=3, partitions=1, topics=[topic, dlq]) as broker:
        broker.set_leader(topic, 0, 3)
        config = KafkaConfig(
            broker.bootstrap,
            topic=topic,
            dlq_topic=dlq,
            send_timeout_s=10.0,
            replace_after_s=0.5,
            replace_drain_s=0.2,
            probe_interval_s=0.1,
        )

        async def scenario(sink: KafkaSink):
            await sink.publish(make_batch(seed=94, orders=5))
            broker.broker_push_request_error_rtts(3, "Produce", [("NO_ERROR", 3000)])  # appended, answered in 3 s
            with pytest.raises(ProducerReplaced):
                await asyncio.wait_for(sink.publish(Batch(raw, Core().process(raw))), 10)
            await asyncio.sleep(0.005)  # a resend comes later (a later timestamp is the subject, not a sync)
            await asyncio.wait_for(sink.publish(Batch(raw, Core().process(raw))), 10)
            assert sink.stats()["replacements"] == 1

        run_sink(config, scenario)
        records = read_all(broker.bootstrap, topic)[5:]
    first, again = records[:15], records[15:]
    assert len(again) == 15
    assert [(r.key, r.value, r.headers) for r in first] == [(r.key, r.value, r.headers) for r in again]
    assert first[0].timestamp_ms < again[0].timestamp_ms


def test_records_nobody_waits_for_are_withdrawn_during_an_outage(breakable_kafka: KafkaCluster):
    cluster = breakable_kafka
    topic, dlq = cluster.new_topic("withdraw-orders", 1), cluster.new_topic("withdraw-orders.dlq", 1)
    batches = [make_batch(seed=90 + k, orders=10) for k in range(8)]
    config = KafkaConfig(cluster.bootstrap, topic=topic, dlq_topic=dlq, send_timeout_s=0.3)

    async def scenario(sink: KafkaSink):
        for node in cluster.node_ids:
            cluster.pause_node(node)
        try:
            for batch in batches:
                with pytest.raises(SinkUnavailable, match="did not ack"):
                    await sink.publish(batch)
            # What a producer holds stays; everything else was withdrawn.
            assert sink.stats()["unsettled_record_batches"] <= 3
        finally:
            for node in cluster.node_ids:
                cluster.resume_node(node)
        await wait_until_async(
            lambda: not sink.stats()["unsettled_record_batches"], 30, what="every record batch settled"
        )
        assert sink.stats()["buffered_bytes"] == 0

    run_sink(config, scenario)
    got = [r.header("event_id").decode() for r in read_all(cluster.bootstrap, topic)]
    # Only the first record batches (at most three: one sent, one queued in
    # the producer, one being handed over) reach Kafka after their publish failed.
    delivered = [b for b in batches if set(event_ids(b)) & set(got)]
    assert 1 <= len(delivered) <= 3 and delivered == batches[: len(delivered)]
    assert got == [e for b in delivered for e in event_ids(b)]


def test_record_batches_fit_a_topics_small_max_message_bytes_and_a_too_large_order_is_refused_by_name(
    kafka_cluster: KafkaCluster,
):
    limit = 16_384
    topic = kafka_cluster.new_topic("small-messages", 3, config={"max.message.bytes": str(limit)})
    dlq = kafka_cluster.new_topic("small-messages.dlq", 1)
    metrics = Metrics()
    many = make_batch(seed=96, orders=400)  # ~60 KiB per partition: several record batches each
    message = OrderGenerator(seed=97).batch(3)
    big = message.orders[1]
    for k in range(200):
        big.items.add(order_item_id=k + 100, product_id=f"p{k:063d}", seller_id=f"s{k:063d}", price_cents=100)
    raw = message.SerializeToString()
    too_large = Batch(raw, Core().process(raw))

    async def scenario(sink: KafkaSink):
        assert sink.stats()["max_message_bytes"] == {topic: limit, dlq: 1_048_588}
        assert sink.stats()["record_batch_bytes"] < limit
        await asyncio.wait_for(sink.publish(many), 30)
        with pytest.raises(SinkFailed) as refused:
            await sink.publish(too_large)
        assert not refused.value.retriable
        size = len(big.SerializeToString())
        assert refused.value.message == (
            f"order {big.event_id!r} of batch {too_large.batch_id!r} is {size} bytes, too large for a Kafka record "
            f"on topic {topic} (max.message.bytes {limit}); the batch was not published"
        )
        assert sink.stats()["replacements"] == 0 and sink.available

    run_sink(KafkaConfig(kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq), scenario, metrics)
    records = read_all(kafka_cluster.bootstrap, topic)
    assert sorted(r.header("event_id").decode() for r in records) == sorted(event_ids(many))
    assert (
        metrics.registry.get_sample_value("keystone_ingest_kafka_errors_total", {"kind": "MessageSizeTooLargeError"})
        is None
    )


def test_start_fails_with_sink_unavailable_when_no_broker_answers():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = KafkaSink(KafkaConfig(f"127.0.0.1:{port}", start_timeout_s=2.0))
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match=f"cannot reach Kafka at 127.0.0.1:{port}"):
        asyncio.run(sink.start())
    assert time.monotonic() - started < 10.0  # bounded by start_timeout_s (2 s); slack for a loaded machine
    assert not sink.available


def test_errors_are_classified_by_type_and_retriable_attribute_not_message():
    assert isinstance(classify(NotLeaderForPartitionError()), SinkUnavailable)
    assert isinstance(classify(KafkaTimeoutError()), SinkUnavailable)
    assert isinstance(classify(MessageSizeTooLargeError()), SinkFailed)
    assert isinstance(classify(RuntimeError("timed out, retriable, unavailable")), SinkFailed)


def test_config_rejects_unknown_compression_and_nonsense_sizes():
    with pytest.raises(ValueError, match="compression must be one of"):
        KafkaConfig("h:9092", compression="brotli")
    with pytest.raises(ValueError, match="max_batch_bytes must be positive"):
        KafkaConfig("h:9092", max_batch_bytes=0)
    with pytest.raises(ValueError, match="topic and dlq_topic must differ"):
        KafkaConfig("h:9092", topic="x", dlq_topic="x")
