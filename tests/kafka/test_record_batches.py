"""Kafka record batches built by the native core, byte for byte: read back with
aiokafka's own record reader (DefaultRecordBatch, what its consumer uses) and,
through the session's Apache Kafka cluster, with confluent-kafka; every codec,
the producer state aiokafka stamps, the size limit, and the mistakes a caller
can make."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch
from kafkautil import KafkaCluster, read_all
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core, RecordBatchBuilder, partition_counts

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
HEADERS = [("batch_id", b"b-1"), ("source", b"tests"), ("content-type", b"application/x-protobuf")]


def processed(seed: int = 1, orders: int = 200, invalid_ratio: float = 0.05):
    raw = OrderGenerator(seed=seed, invalid_ratio=invalid_ratio, duplicate_ratio=0.05).batch(orders).SerializeToString()
    return raw, Core().process(raw)


def expected_orders(raw: bytes, result, partition: int | None = None, partitions: int = 1):
    """(key, value, headers) of each accepted order, in row order, from the core's own tables."""
    import pyarrow as pa

    orders = pa.record_batch(result.orders).to_pylist()
    spans = pa.record_batch(result.order_spans).to_pylist()
    return [
        (
            o["order_id"].encode(),
            raw[s["offset"] : s["offset"] + s["length"]],
            [("event_id", o["event_id"].encode()), *HEADERS],
        )
        for o, s in zip(orders, spans, strict=True)
        if partition is None or s["key_hash"] % partitions == partition
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_a_built_batch_reads_back_with_aiokafkas_reader_record_for_record(codec: str):
    raw, result = processed()
    builder = RecordBatchBuilder(codec, 0, 1 << 20)
    assert builder.append_orders(result, raw, 0, 1, 0, 1_700_000_000_123, HEADERS) == result.accepted
    assert builder.record_count() == result.accepted and not builder.closed()
    builder.close()
    builder._set_producer_state(4711, 3, 120)  # what aiokafka's sender does at the first send
    batch = DefaultRecordBatch(builder._build())
    assert batch.validate_crc()
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (4711, 3, 120)
    assert batch.compression_type == CODECS[codec] and not batch.is_transactional
    records = list(batch)
    assert [r.offset for r in records] == list(range(result.accepted))
    assert {r.timestamp for r in records} == {1_700_000_000_123}
    assert [(r.key, r.value, list(r.headers)) for r in records] == expected_orders(raw, result)


def test_orders_split_by_partition_as_kafkas_partitioner_and_a_full_batch_continues_in_the_next():
    raw, result = processed(seed=2, orders=300, invalid_ratio=0.0)
    counts = partition_counts(result, 6)
    assert sum(counts) == result.accepted
    for partition in range(6):
        pieces, start = [], 0
        while start < result.accepted:
            builder = RecordBatchBuilder("none", 0, 2000)  # a few orders each
            start = builder.append_orders(result, raw, partition, 6, start, 1, HEADERS)
            builder.close()
            pieces.append(list(DefaultRecordBatch(builder._build())))
        got = [(r.key, r.value, list(r.headers)) for piece in pieces for r in piece]
        assert got == expected_orders(raw, result, partition, 6)
        assert all(len(piece) <= 5 for piece in pieces)
        assert [r.offset for r in pieces[0]] == list(range(len(pieces[0])))


def test_rejected_orders_carry_no_key_and_their_reason_index_and_message():
    import pyarrow as pa

    raw, result = processed(seed=3, invalid_ratio=0.3)
    builder = RecordBatchBuilder("zstd", 1, 1 << 20)
    assert builder.append_rejects(result, raw, 0, 5, HEADERS) == result.rejected > 10
    records = list(DefaultRecordBatch(builder._build()))
    rejects = pa.record_batch(result.rejects).to_pylist()
    assert [(r.key, r.value, list(r.headers)) for r in records] == [
        (
            None,
            raw[x["offset"] : x["offset"] + x["length"]],
            [
                ("event_id", x["event_id"].encode()),
                *HEADERS,
                ("error.reason", x["reason"].encode()),
                ("error.index", str(x["index"]).encode()),
                ("error.message", x["message"].encode()),
            ],
        )
        for x in rejects
    ]


def test_one_order_larger_than_the_limit_travels_alone_and_an_empty_batch_stays_empty():
    raw, result = processed(seed=4, orders=5, invalid_ratio=0.0)
    builder = RecordBatchBuilder("lz4", 0, 1)
    assert builder.append_orders(result, raw, 0, 1, 0, 1, HEADERS) == 1
    assert builder.record_count() == 1
    empty = RecordBatchBuilder("zstd", 1, 1 << 20)
    assert empty.append_orders(result, raw, 0, 1, result.accepted, 1, HEADERS) == result.accepted
    assert empty.record_count() == 0
    assert list(DefaultRecordBatch(empty._build())) == []


def test_mistakes_are_refused_with_what_was_wrong():
    raw, result = processed(seed=5, orders=10)
    with pytest.raises(ValueError, match=r"raw is 3 bytes, but the result was made from \d+: pass the request"):
        RecordBatchBuilder("zstd", 1, 1000).append_orders(result, b"abc", 0, 1, 0, 1, HEADERS)
    with pytest.raises(ValueError, match="partition 6 is not one of 6 partitions"):
        RecordBatchBuilder("zstd", 1, 1000).append_orders(result, raw, 6, 6, 0, 1, HEADERS)
    with pytest.raises(ValueError, match="codec must be none, gzip, snappy, lz4 or zstd, not 'brotli'"):
        RecordBatchBuilder("brotli", 0, 1000)
    closed = RecordBatchBuilder("zstd", 1, 1000)
    closed.close()
    with pytest.raises(ValueError, match="the record batch is closed"):
        closed.append_orders(result, raw, 0, 1, 0, 1, HEADERS)


def test_a_batch_of_the_largest_size_goes_through_the_real_broker_and_reads_back_with_confluent_kafka(
    kafka_cluster: KafkaCluster,
):
    # Uncompressed, up to just under the broker's default message.max.bytes
    # (1 MiB + 12): the largest record batch a default topic takes.
    topic = kafka_cluster.new_topic("largest", 1)
    raws = [OrderGenerator(seed=60 + k).batch(1000).SerializeToString() for k in range(4)]
    core = Core()
    results = [core.process(raw) for raw in raws]
    builder = RecordBatchBuilder("none", 0, 1_048_000)
    appended = []
    for raw, result in zip(raws, results, strict=True):
        stop = builder.append_orders(result, raw, 0, 1, 0, 1_700_000_000_000, HEADERS)
        appended += expected_orders(raw, result)[:stop]
        if stop < result.accepted:
            break
    assert 1_000_000 < builder.size() <= 1_048_000

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_cluster.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await asyncio.wait_for(await producer.send_batch(builder, topic, partition=0), 30)
        finally:
            await producer.stop()

    builder.close()
    asyncio.run(send())
    records = read_all(kafka_cluster.bootstrap, topic)
    assert [(r.key, r.value, r.headers) for r in records] == appended
