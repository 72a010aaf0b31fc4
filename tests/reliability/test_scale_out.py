"""Beyond one machine, on loopback: ingest replicas behind one client target
(round_robin over `host:port,host:port,host:port`), Bronze workers sharing
the partitions in one consumer group, and one of each SIGKILLed mid-stream.
Afterwards an independent consumer and a Parquet read check that every acked
order is in Kafka (at least once, copies with the same bytes) and in Bronze
exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
from kafkautil import KafkaCluster
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import BronzeWorkerProcess, ServerProcess
from reliabilityutil import Stream, check_kafka_and_bronze, expected_from, free_port, metric
from serverutil import wait_bronze_caught_up
from waiting import wait_until

STREAMS = 6


def accepted_batches(server: ServerProcess) -> float:
    return metric(server.metrics_port, "keystone_ingest_batches_total", status="accepted")


def acked_every_batch(streams: list[Stream], batches: list) -> list:
    """The batches, once every one of them was acked and none failed."""
    failures = {k: v for s in streams for k, v in s.failures.items()}
    assert not failures, list(failures.items())[:3]
    acked = [b for s in streams for b in s.sent_batches if b.batch_id in s.acks]
    assert len(acked) == len(batches)
    return acked


def bronze_reader(bronze: Path):
    def table(name: str):
        path = bronze / name
        return ds.dataset(path, format="parquet", partitioning="hive").to_table() if path.is_dir() else None

    return table


def test_a_replica_and_a_bronze_worker_killed_mid_stream_lose_nothing(kafka_cluster: KafkaCluster, tmp_path: Path):
    topic = kafka_cluster.new_topic("orders", partitions=6)
    dlq = kafka_cluster.new_topic("orders-dlq", partitions=2)
    bronze = tmp_path / "bronze"
    kafka = ["--kafka-bootstrap", kafka_cluster.bootstrap, "--topic", topic, "--dlq-topic", dlq]
    worker_args = [*kafka, "--bronze-uri", f"file://{bronze}", "--bronze-group", f"bronze-{topic}"]
    processes: list = []
    try:
        replicas = [
            ServerProcess([*kafka, "--bronze-uri", "", "--linger-ms", "2", "--core-threads", "1"]) for _ in range(3)
        ]
        workers = [BronzeWorkerProcess(worker_args) for _ in range(2)]
        processes += replicas + workers
        generator = OrderGenerator(seed=1313, invalid_ratio=0.01)
        batches = [generator.batch(200) for _ in range(STREAMS * 40)]
        target = ",".join(r.target for r in replicas)
        streams = [Stream(target, batches[i::STREAMS], rate=8) for i in range(STREAMS)]
        try:
            # Every replica is taking batches before one of them dies.
            wait_until(lambda: all(accepted_batches(r) > 0 for r in replicas), 60, what="every replica acking")
            replicas[0].kill()
            workers[0].kill()
            workers.append(BronzeWorkerProcess(worker_args))
            processes.append(workers[-1])
            for s in streams:
                s.wait(120)
        finally:
            for s in streams:
                s.stop()
        acked = acked_every_batch(streams, batches)
        # The survivors took the streams of the replica that died.
        assert sum(accepted_batches(r) for r in replicas[1:]) > len(batches) * 2 / 3

        wait_bronze_caught_up(kafka_cluster.bootstrap, [topic, dlq], f"file://{bronze}", timeout_s=120)

        report = check_kafka_and_bronze(
            kafka_cluster.bootstrap,
            topic,
            dlq,
            bronze_reader(bronze),
            expected_from(acked),
            expected_from(batches),
            restarts=True,
        )
        # The live workers' lag falls back to nothing once they have written it all.
        wait_until(
            lambda: (
                sum(
                    metric(w.metrics_port, "keystone_bronze_lag_records", topic=topic, partition=str(p))
                    for w in workers[1:]
                    for p in range(6)
                )
                == 0
            ),
            30,
            what="bronze lag back to 0",
        )
        print(f"3 replicas (1 killed), 3 Bronze workers (1 killed): {report}")
    finally:
        for p in processes:
            p.close()


def test_a_rolling_restart_of_every_replica_under_load_fails_no_batch(kafka_cluster: KafkaCluster, tmp_path: Path):
    """Each replica in turn gets SIGTERM (it drains: stops taking streams,
    answers what it holds, ends its streams) and comes back on the same
    address, as a Deployment's rolling update does; the clients move their
    streams to the others and report no failed batch."""
    topic = kafka_cluster.new_topic("orders", partitions=6)
    dlq = kafka_cluster.new_topic("orders-dlq", partitions=2)
    bronze = tmp_path / "bronze"
    kafka = ["--kafka-bootstrap", kafka_cluster.bootstrap, "--topic", topic, "--dlq-topic", dlq]
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]

    def replica(address: str) -> ServerProcess:
        return ServerProcess([*kafka, "--bronze-uri", "", "--listen", address, "--linger-ms", "2"])

    processes: list = []
    try:
        replicas = [replica(a) for a in addresses]
        processes += replicas
        processes.append(
            BronzeWorkerProcess([*kafka, "--bronze-uri", f"file://{bronze}", "--bronze-group", f"bronze-{topic}"])
        )
        generator = OrderGenerator(seed=2727, invalid_ratio=0.01)
        batches = [generator.batch(200) for _ in range(STREAMS * 50)]
        streams = [Stream(",".join(addresses), batches[i::STREAMS], rate=8) for i in range(STREAMS)]
        try:
            for i, address in enumerate(addresses):
                wait_until(
                    lambda restarted=i: sum(len(s.acks) for s in streams) >= (restarted + 1) * len(batches) // 5,
                    60,
                    what="acks before the next restart",
                )
                assert replicas[i].stop() == 0
                replicas[i] = replica(address)
                processes.append(replicas[i])
            for s in streams:
                s.wait(120)
        finally:
            for s in streams:
                s.stop()
        acked = acked_every_batch(streams, batches)
        wait_bronze_caught_up(kafka_cluster.bootstrap, [topic, dlq], f"file://{bronze}", timeout_s=120)
        report = check_kafka_and_bronze(
            kafka_cluster.bootstrap,
            topic,
            dlq,
            bronze_reader(bronze),
            expected_from(acked),
            expected_from(batches),
            restarts=True,
        )
        print(f"rolling restart of 3 replicas: {report}")
    finally:
        for p in processes:
            p.close()


def test_a_bronze_worker_added_and_then_removed_under_load_leaves_no_gap_and_no_copy(
    kafka_cluster: KafkaCluster, tmp_path: Path
):
    topic = kafka_cluster.new_topic("orders", partitions=6)
    dlq = kafka_cluster.new_topic("orders-dlq", partitions=2)
    bronze = tmp_path / "bronze"
    kafka = ["--kafka-bootstrap", kafka_cluster.bootstrap, "--topic", topic, "--dlq-topic", dlq]
    worker_args = [*kafka, "--bronze-uri", f"file://{bronze}", "--bronze-group", f"bronze-{topic}"]
    load_on = threading.Event()
    load_on.set()

    def load(seed: int) -> Iterator:  # batches for as long as the group is being changed
        generator = OrderGenerator(seed=seed, invalid_ratio=0.01)
        while load_on.is_set():
            yield generator.batch(200)

    def owned(worker: BronzeWorkerProcess) -> float:
        return metric(worker.metrics_port, "keystone_bronze_assigned_partitions")

    processes: list = []
    try:
        server = ServerProcess([*kafka, "--bronze-uri", "", "--linger-ms", "2"])
        first = BronzeWorkerProcess(worker_args)
        processes += [server, first]
        streams = [Stream(server.target, load(4242 + i), rate=8) for i in range(4)]
        try:
            wait_until(lambda: owned(first) == 8, 30, what="the first worker owning every partition")
            second = BronzeWorkerProcess(worker_args)
            processes.append(second)
            # The group splits the partitions between the two, then gives them
            # all back to the first when the second leaves; the load goes on
            # throughout.
            wait_until(lambda: owned(second) > 0 and owned(first) + owned(second) == 8, 30, what="a shared group")
            wait_until(
                lambda: metric(second.metrics_port, "keystone_bronze_flushes_total") > 0,
                30,
                what="the second worker writing",
            )
            assert second.stop() == 0
            wait_until(lambda: owned(first) == 8, 30, what="the partitions back with the first worker")
            load_on.clear()
            for s in streams:
                s.wait(120)
        finally:
            load_on.clear()
            for s in streams:
                s.stop()
        sent = [b for s in streams for b in s.sent_batches]
        acked = acked_every_batch(streams, sent)
        assert len(acked) > 40
        wait_bronze_caught_up(kafka_cluster.bootstrap, [topic, dlq], f"file://{bronze}", timeout_s=120)
        report = check_kafka_and_bronze(
            kafka_cluster.bootstrap, topic, dlq, bronze_reader(bronze), expected_from(acked), expected_from(sent)
        )
        wait_until(
            lambda: (
                sum(
                    metric(first.metrics_port, "keystone_bronze_lag_records", topic=topic, partition=str(p))
                    for p in range(6)
                )
                == 0
            ),
            30,
            what="bronze lag back to 0",
        )
        print(f"a Bronze worker added and removed under load: {report}")
    finally:
        for p in processes:
            p.close()
