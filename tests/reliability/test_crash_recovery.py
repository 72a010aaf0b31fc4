"""Crashes for real: `keystone-ingest serve` processes SIGKILLed mid-stream
with their working directory deleted before the restart, and Bronze workers
SIGKILLed mid-flush. Afterwards an independent consumer and a Parquet read
check that every acked order is in Kafka and in Bronze, that Bronze holds no
order twice, and that Kafka holds copies only with the same event_id and bytes
(the Kafka contract: at least once, one event_id per order event)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from kafkautil import KafkaCluster
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.bronze.commits import PENDING
from keystone_ingest.server.bronze.storage import LocalStore
from reliabilityutil import ACKED, Stream, check_kafka_and_bronze, expected_from
from serverutil import catch_up_bronze, wait_bronze_caught_up
from waiting import wait_until

ROUNDS = 20


class Site:
    """One Kafka topic pair and one Bronze location (the lake) that every
    server of a test shares; each server runs in a working directory of its
    own, deleted after it is killed, as a replacement machine would start."""

    def __init__(self, cluster: KafkaCluster, tmp_path: Path, *extra: str) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.topic = cluster.new_topic("orders", partitions=12)
        self.dlq = cluster.new_topic("orders-dlq", partitions=3)
        self.bronze = tmp_path / "lake" / "bronze"
        self.args = [
            "--kafka-bootstrap",
            cluster.bootstrap,
            "--topic",
            self.topic,
            "--dlq-topic",
            self.dlq,
            "--bronze-uri",
            f"file://{self.bronze}",
            "--linger-ms",
            "2",
            "--core-threads",
            "1",
            *extra,
        ]
        self.servers: list[ServerProcess] = []

    def start(self) -> ServerProcess:
        workdir = self.tmp_path / f"work-{len(self.servers)}"
        workdir.mkdir()
        server = ServerProcess(self.args, cwd=workdir)
        server.workdir = workdir
        self.servers.append(server)
        return server

    def bronze_table(self, name: str):
        path = self.bronze / name
        if not path.is_dir():
            return None
        return ds.dataset(path, format="parquet", partitioning="hive").to_table()

    def check(self, acked: list[ingest_pb2.OrderBatch], sent: list[ingest_pb2.OrderBatch]) -> dict[str, int]:
        return check_kafka_and_bronze(
            self.cluster.bootstrap,
            self.topic,
            self.dlq,
            self.bronze_table,
            expected_from(acked),
            expected_from(sent),
            restarts=True,
        )

    def close(self) -> None:
        for server in self.servers:
            server.close()


@pytest.fixture
def site(kafka_cluster: KafkaCluster, tmp_path):
    sites: list[Site] = []

    def make(*extra: str) -> Site:
        s = Site(kafka_cluster, tmp_path, *extra)
        sites.append(s)
        return s

    yield make
    for s in sites:
        s.close()


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def test_sigkill_at_random_moments_and_a_lost_working_directory_lose_no_acked_order(site):
    """20 rounds of: start a server in a fresh working directory, stream
    (unacked batches of earlier rounds first, same batch_ids and bytes, and a
    few already acked ones, as a client that missed their acks resends them),
    SIGKILL it after 0.2 to 1.5 s (its Bronze worker dies with it, often in the
    middle of a flush: files roll every 0.3 s), delete the working directory.
    Then a last server takes what is left; Bronze must end exactly once."""
    seed = int(os.environ.get("CRASH_SEED", time.time()))
    print(f"CRASH_SEED={seed}")
    rng = random.Random(seed)
    s = site("--shutdown-grace-s", "10")
    generator = OrderGenerator(seed=seed, duplicate_ratio=0.03, invalid_ratio=0.02)
    batches = [generator.batch(40) for _ in range(800)]
    acked: dict[str, ingest_pb2.BatchAck] = {}
    resent = 0
    for _ in range(ROUNDS):
        again = rng.sample([b for b in batches if b.batch_id in acked], min(3, len(acked)))
        pending = again + [b for b in batches if b.batch_id not in acked]
        resent += len(again)
        server = s.start()
        stream = Stream(server.target, pending, rate=30)
        time.sleep(rng.uniform(0.2, 1.5))  # a random moment to crash at, not a wait for anything
        bronze_pid = server.bronze_pid
        kill(server.process)
        stream.stop()
        assert all(a.status in ACKED for a in stream.acks.values())
        acked.update(stream.acks)
        wait_until(
            lambda pid=bronze_pid: not os.path.exists(f"/proc/{pid}"), 10, what="the Bronze worker dying with serve"
        )
        server.close()
        shutil.rmtree(server.workdir)

    server = s.start()
    stream = Stream(server.target, [b for b in batches if b.batch_id not in acked], rate=200)
    stream.wait(90)
    assert not stream.failures, list(stream.failures.values())[:3]
    acked.update(stream.acks)
    wait_bronze_caught_up(s.cluster.bootstrap, [s.topic, s.dlq], f"file://{s.bronze}", timeout_s=120)
    assert server.stop() == 0, server.logs()[-3000:]
    report = s.check([b for b in batches if b.batch_id in acked], batches)
    assert report["acked_orders"] > 10_000
    assert report["kafka_copies"] > 0  # the resends put orders in Kafka twice; Bronze holds them once
    print(f"{ROUNDS} kills: {report}, acked batches resent {resent}")


@pytest.fixture
def backfill(kafka_cluster: KafkaCluster):
    """Topics holding 24,000 orders over ~700 purchase days, published by the real Kafka sink."""
    import asyncio

    from keystone_ingest.core import Core
    from keystone_ingest.server.batch import Batch
    from keystone_ingest.server.sinks.kafka import KafkaConfig, KafkaSink

    topic, dlq = kafka_cluster.new_topic("orders", partitions=6), kafka_cluster.new_topic("orders-dlq", partitions=2)
    generator = OrderGenerator(seed=5, invalid_ratio=0.02)
    core = Core()
    sent = []
    for _ in range(60):
        message = generator.batch(400)
        for k, order in enumerate(message.orders):
            order.order_purchase_timestamp.seconds -= (k * 7919 % 700) * 86_400
        sent.append(message)

    async def publish() -> None:
        sink = KafkaSink(
            KafkaConfig(bootstrap=kafka_cluster.bootstrap, topic=topic, dlq_topic=dlq, create_topics=False)
        )
        await sink.start()
        try:
            for message in sent:
                raw = message.SerializeToString()
                await sink.publish(Batch(raw, core.process(raw)))
        finally:
            await sink.stop()

    asyncio.run(publish())
    return topic, dlq, sent


def bronze_worker(bootstrap: str, topic: str, dlq: str, bronze: Path, log: Path, ready: Path) -> subprocess.Popen:
    env = {**os.environ, "KEYSTONE_BRONZE_MAX_BUFFERED_BYTES": str(2 << 20), "KEYSTONE_ROLL_AGE_S": "0.2"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keystone_ingest.server.cli",
                "bronze",
                "--kafka-bootstrap",
                bootstrap,
                "--topic",
                topic,
                "--dlq-topic",
                dlq,
                "--bronze-uri",
                f"file://{bronze}",
                "--log-format",
                "text",
                "--ready-file",
                str(ready),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_bronze_worker_sigkilled_mid_flush_20_times_ends_exactly_once(kafka_cluster: KafkaCluster, backfill, tmp_path):
    """The topics hold a backfill whose orders spread over ~700 purchase days;
    a `keystone-ingest bronze` process flushing every ~2 MiB (hundreds of files
    a flush) is SIGKILLed 20 times, most often while a flush is under way (some
    days written, others not). A last worker finishes: Bronze exactly once."""
    topic, dlq, sent = backfill
    seed = int(os.environ.get("CRASH_SEED", time.time()))
    print(f"CRASH_SEED={seed}")
    rng = random.Random(seed)
    bronze = tmp_path / "bronze"
    store = LocalStore(str(bronze))
    cut_short = 0
    for round_ in range(ROUNDS):
        ready = tmp_path / f"worker-{round_}.ready"
        worker = bronze_worker(kafka_cluster.bootstrap, topic, dlq, bronze, tmp_path / f"worker-{round_}.log", ready)
        # Kill it once it is writing: a pending marker exists (a flush began)
        # and not yet committed, or after a random moment at the latest,
        # counted from when it joined its group (start-up time varies with load).
        wait_until(
            lambda r=ready, w=worker: r.exists() or w.poll() is not None, 60, what="the worker joining its group"
        )
        assert worker.poll() is None, (tmp_path / f"worker-{round_}.log").read_text()
        deadline = time.monotonic() + rng.uniform(2.0, 6.0)
        wait_until(
            lambda until=deadline: store.list_keys(PENDING) or time.monotonic() >= until,
            10,
            what="a flush begun",
            step_s=0.01,
        )
        time.sleep(rng.uniform(0.0, 0.05))  # a random moment to crash at, not a wait for anything
        cut_short += bool(store.list_keys(PENDING))
        kill(worker)
    # Most kills found a flush in progress; those flushes' files are deleted
    # and their offsets written again by the next worker.
    assert cut_short >= ROUNDS // 2, cut_short
    catch_up_bronze(kafka_cluster.bootstrap, topic, dlq, f"file://{bronze}", timeout_s=180)
    assert store.list_keys(PENDING) == []
    tables = {
        name: (
            ds.dataset(bronze / name, format="parquet", partitioning="hive").to_table()
            if (bronze / name).is_dir()
            else None
        )
        for name in ("orders", "order_items", "_quarantine")
    }
    report = check_kafka_and_bronze(
        kafka_cluster.bootstrap, topic, dlq, tables.get, expected_from(sent), expected_from(sent)
    )
    days = {(r["year"], r["month"], r["day"]) for r in tables["orders"].select(["year", "month", "day"]).to_pylist()}
    assert len(days) > 600
    print(f"{ROUNDS} worker kills, {cut_short} mid-flush: {report}, {len(days)} purchase days")
