"""The benchmark's pure-Python reference server implements the real server's
contract: the same batches (duplicates within and across batches, invalid
orders, a resent batch_id) sent to both, each with its own topics and Bronze
directory on the same broker, give the same acks, the same Kafka records and
the same Bronze rows. Only what depends on timing differs and is left out:
record timestamps, the quarantine's `received_at`, file names."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from kafkautil import KafkaCluster, read_all
from keystone_ingest.client.client import AsyncIngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.proto.v1 import ingest_pb2
from serverutil import wait_bronze_caught_up

from benchmarks.processes import ReferenceProcess

BRONZE_TABLES = ("orders", "order_items", "order_payments", "customers", "_quarantine")


class Side:
    """One server (real or reference) with its own topics and Bronze directory."""

    def __init__(self, cluster: KafkaCluster, bronze: Path) -> None:
        self.cluster = cluster
        self.topic = cluster.new_topic("orders", partitions=6)
        self.dlq_topic = cluster.new_topic("orders-dlq", partitions=3)
        self.bronze = bronze
        self.args = ["--kafka-bootstrap", cluster.bootstrap, "--topic", self.topic, "--dlq-topic", self.dlq_topic]

    def records(self, topic: str) -> list[tuple]:
        # (partition, key, value, headers) in partition and offset order; timestamps depend on timing.
        return [(r.partition, r.key, r.value, r.headers) for r in read_all(self.cluster.bootstrap, topic)]

    def bronze_rows(self, table: str) -> list[dict]:
        rows = ds.dataset(self.bronze / table, format="parquet", partitioning="hive").to_table()
        if table == "_quarantine":
            rows = rows.drop_columns(["received_at"])
        return sorted(rows.to_pylist(), key=lambda r: tuple(str(v) for v in r.values()))


async def send_all(target: str, batches: list[ingest_pb2.OrderBatch]) -> list[ingest_pb2.BatchAck]:
    # One stream, batches in order (so each partition's records come in the
    # same order from both servers), then a resend of the first as a unary call.
    # One batch in flight: with several, two batches holding the same event_id
    # may reach the real server's dedup window in either order (both servers
    # keep the order once; which ack counts it as the duplicate would differ).
    async with AsyncIngestClient(target, max_in_flight=1) as client:
        futures = [await client.send(b) for b in batches]
        acks = [await f for f in futures]
        acks.append(await client.ingest_unary(batches[0]))
    return acks


@pytest.fixture
def sides(kafka_cluster: KafkaCluster, tmp_path: Path):
    real = Side(kafka_cluster, tmp_path / "real-bronze")
    ref = Side(kafka_cluster, tmp_path / "reference-bronze")
    real.server = ServerProcess([*real.args, "--bronze-uri", f"file://{real.bronze}"])
    try:
        ref.server = ReferenceProcess([*ref.args, "--bronze-dir", str(ref.bronze)])
    except BaseException:
        real.server.close()
        raise
    yield real, ref
    real.server.close()
    ref.server.close()


def test_reference_server_gives_the_real_servers_acks_records_and_bronze_rows(sides):
    real, ref = sides
    gen = OrderGenerator(seed=23, duplicate_ratio=0.05, invalid_ratio=0.03)
    batches = [gen.batch(120) for _ in range(8)]
    batches.append(batches[3])  # the same batch_id again on the stream

    real_acks = asyncio.run(send_all(real.server.target, batches))
    ref_acks = asyncio.run(send_all(ref.server.target, batches))
    assert [a.SerializeToString(deterministic=True) for a in ref_acks] == [
        a.SerializeToString(deterministic=True) for a in real_acks
    ]
    assert real_acks[-1].status == real_acks[-2].status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH
    assert sum(a.duplicates for a in real_acks[:8]) > 0 and sum(a.rejected for a in real_acks[:8]) > 0

    real_records, ref_records = real.records(real.topic), ref.records(ref.topic)
    assert len(real_records) == sum(a.accepted for a in real_acks[:8])
    assert sorted(ref_records) == sorted(real_records)  # concurrent batches may interleave on a partition
    assert _grouped(ref_records, _key) == _grouped(real_records, _key)  # but one order_id keeps its order
    real_dead, ref_dead = real.records(real.dlq_topic), ref.records(ref.dlq_topic)
    assert len(real_dead) == sum(a.rejected for a in real_acks[:8])
    assert sorted(ref_dead) == sorted(real_dead)
    assert _grouped(ref_dead, _batch_id) == _grouped(real_dead, _batch_id)  # a batch's rejects in batch order

    wait_bronze_caught_up(real.cluster.bootstrap, [real.topic, real.dlq_topic], f"file://{real.bronze}")
    assert real.server.stop(signal.SIGTERM) == 0
    assert ref.server.stop(signal.SIGTERM) == 0
    for table in BRONZE_TABLES:
        real_rows = real.bronze_rows(table)
        assert real_rows, table
        ref_rows = ref.bronze_rows(table)
        assert len(ref_rows) == len(real_rows), table
        for ref_row, real_row in zip(ref_rows, real_rows, strict=True):
            assert ref_row == real_row, table


def _key(record: tuple) -> bytes:
    return record[1]


def _batch_id(record: tuple) -> bytes:
    return dict(record[3])["batch_id"]


def _grouped(records: list[tuple], key) -> dict[bytes, list[tuple]]:
    groups: dict[bytes, list[tuple]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups
