"""The S3 endpoint stopped for 10 s under a sustained stream, for real: a
`keystone-ingest serve` process writes Bronze to a moto S3 server over HTTP,
the S3 server stops (connections refused) and starts again on the same port.

What must happen: acks continue (they depend on Kafka only, which holds the
records) and health stays SERVING; the Bronze worker's metrics show uploads
failing and its lag growing; once S3 is back the worker's flush goes through
by itself, it catches up, and every acked order is in Kafka and in Bronze on
S3, exactly once.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib

import pyarrow.dataset as ds
import pytest
from kafkautil import KafkaCluster
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.proto.v1 import ingest_pb2
from reliabilityutil import ACKED, Stream, check_kafka_and_bronze, expected_from, health, metric
from s3util import AWS_ENV, S3Server, start_s3
from serverutil import wait_bronze_caught_up
from waiting import wait_until

OUTAGE_S = 10.0
RATE = 20  # batches/s of 40 orders


def batches_over_three_days(seed: int, count: int, **ratios: float) -> list[ingest_pb2.OrderBatch]:
    """Generated batches whose purchase timestamps are moved into three UTC
    days (time of day kept; an event_id always to the same day, so duplicates
    stay identical): a dozen Bronze files per roll instead of thousands, as in
    a live feed, so the uploads to the in-process S3 server keep up."""
    generator = OrderGenerator(seed=seed, **ratios)
    first_day = int(dt.datetime(2018, 3, 1, tzinfo=dt.UTC).timestamp())
    batches = []
    for _ in range(count):
        batch = generator.batch(40)
        for order in batch.orders:
            if order.HasField("order_purchase_timestamp"):
                ts = order.order_purchase_timestamp
                ts.seconds = first_day + zlib.crc32(order.event_id.encode()) % 3 * 86_400 + ts.seconds % 86_400
        batches.append(batch)
    return batches


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    for key, value in AWS_ENV.items():  # this process reads Bronze's commit log on S3 too
        monkeypatch.setenv(key, value)
    server = start_s3()
    yield server
    server.stop()


class Deployment:
    def __init__(self, cluster: KafkaCluster, s3: S3Server, tmp_path, *extra: str) -> None:
        self.cluster, self.s3 = cluster, s3
        self.topic = cluster.new_topic("orders", partitions=6)
        self.dlq = cluster.new_topic("orders-dlq", partitions=3)
        self.spool = tmp_path / "spool"
        self.server = ServerProcess(
            [
                "--kafka-bootstrap",
                cluster.bootstrap,
                "--topic",
                self.topic,
                "--dlq-topic",
                self.dlq,
                "--bronze-uri",
                s3.uri("bronze"),
                "--s3-endpoint-url",
                s3.endpoint_url,
                "--spool-dir",
                str(self.spool),
                "--roll-age-s",
                "1",
                "--linger-ms",
                "2",
                *extra,
            ],
            env=AWS_ENV,
        )

    def bronze_table(self, name: str):
        fs = self.s3.filesystem()
        path = f"{self.s3.bucket}/bronze/{name}"
        if not self.s3.objects(f"bronze/{name}/"):
            return None
        return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.server.metrics_port, name, **labels)

    def bronze_metric(self, name: str, **labels: str) -> float:
        return metric(self.server.bronze_metrics_port, name, **labels)

    def lag(self) -> float:
        return sum(
            self.bronze_metric("keystone_bronze_lag_records", topic=self.topic, partition=str(p)) for p in range(6)
        )


@pytest.fixture
def deploy(kafka_cluster: KafkaCluster, s3: S3Server, tmp_path):
    made: list[Deployment] = []

    def make(*extra: str) -> Deployment:
        d = Deployment(kafka_cluster, s3, tmp_path, *extra)
        made.append(d)
        return d

    yield make
    for d in made:
        d.server.close()


def test_s3_stopped_for_10_s_mid_stream_acks_go_on_and_bronze_catches_up_exactly_once(deploy, s3):
    d = deploy()
    batches = batches_over_three_days(404, int(RATE * (OUTAGE_S + 8)), duplicate_ratio=0.02, invalid_ratio=0.01)
    stream = Stream(d.server.target, batches, rate=RATE)
    wait_until(
        lambda: d.bronze_metric("keystone_bronze_files_total", table="orders") > 0, 15, what="a first file on S3"
    )

    s3.stop()
    stopped_at = time.monotonic()
    acked_at_stop = len(stream.acks)
    wait_until(lambda: d.bronze_metric("keystone_bronze_publish_failures_total") > 0, 10, what="an upload failing")
    time.sleep(max(0.0, stopped_at + OUTAGE_S - time.monotonic()))  # the outage's length: the subject, not a sync
    # Acked all along: Kafka holds the records. Health says so too, and the
    # worker's lag says Bronze is behind.
    acked_in_outage = len(stream.acks) - acked_at_stop
    assert acked_in_outage >= RATE * OUTAGE_S * 0.8, acked_in_outage
    assert health(d.server.target) == "SERVING"
    assert d.lag() > 0
    files_before = d.bronze_metric("keystone_bronze_files_total", table="orders")

    s3.restart()
    stream.wait(60)
    assert not stream.failures, list(stream.failures.values())[:3]
    assert all(a.status in ACKED for a in stream.acks.values())
    assert len(stream.acks) == len(batches)
    wait_bronze_caught_up(
        d.cluster.bootstrap,
        [d.topic, d.dlq],
        s3.uri("bronze"),
        timeout_s=60,
        endpoint_url=s3.endpoint_url,
        spool_dir=str(d.spool),
    )
    assert d.bronze_metric("keystone_bronze_files_total", table="orders") > files_before
    wait_until(lambda: d.lag() == 0, 10, what="the lag metric at 0")
    assert d.server.stop() == 0, d.server.logs()[-3000:]

    report = check_kafka_and_bronze(
        d.cluster.bootstrap, d.topic, d.dlq, d.bronze_table, expected_from(batches), expected_from(batches)
    )
    assert report["bronze_orders"] == report["acked_orders"]
