"""Soak: sustained load with random broker outages and server restarts, then
the verification the reliability tests make, and the server's RSS over time.

    make soak                       # 10 minutes
    make soak SOAK_SECONDS=120      # shorter

A 3-node Apache Kafka cluster and one server on a fixed port, restarted in
place. Two client streams send Olist-shaped batches at a steady rate; the
client library resends whatever was not acked across outages and restarts.
A consumer thread reads the topic as it is written.
Chaos, every 15 to 45 s, one of: all brokers stopped for 3 to 10 s; one
broker SIGKILLed for 3 to 10 s; the server stopped with SIGTERM and started again; the
server killed with SIGKILL and started again.

At the end: every acked order must be in Kafka and in Bronze, Bronze must hold
no order twice, and Kafka copies of one event_id must carry the same bytes.
Exit code 0 only if all of that holds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from keystone_ingest.client.client import IngestClient, RetryPolicy
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.catchup import end_offsets
from keystone_ingest.dev.kafka import KafkaCluster
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.proto.v1 import ingest_pb2
from serverutil import wait_bronze_caught_up
from waiting import wait_until

TOPIC, DLQ = "orders", "orders.dlq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


class TopicReader(threading.Thread):
    """Reads every record of the topic as it arrives: event_id -> digests of the values seen."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.seen: dict[bytes, set[bytes]] = {}
        self.records = 0
        self.positions: dict[int, int] = {}  # partition -> the offset after the last record read
        self._stopping = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "soak", "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(partitions)])

    def run(self) -> None:
        while not self._stopping.is_set():
            for message in self._consumer.consume(num_messages=5000, timeout=0.5):
                if message.error():
                    continue  # brokers down: librdkafka reconnects by itself
                event_id = dict(message.headers())["event_id"]
                digest = hashlib.blake2b(message.value(), digest_size=8).digest()
                self.seen.setdefault(event_id, set()).add(digest)
                self.records += 1
                self.positions[message.partition()] = message.offset() + 1

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)
        self._consumer.close()


class Sender(threading.Thread):
    """One client stream at a fixed rate; remembers the event_ids of acked batches."""

    def __init__(self, target: str, seed: int, orders_per_s: float, batch_size: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.target, self.seed, self.batch_size, self.deadline = target, seed, batch_size, deadline
        self.interval_s = batch_size / orders_per_s
        self.acked_event_ids: set[str] = set()
        self.acked_batches = 0
        self.failed_batches = 0
        self.resends = 0

    def run(self) -> None:
        gen = OrderGenerator(seed=self.seed, duplicate_ratio=0.01)
        retry = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=2.0, deadline_s=120.0)
        with IngestClient(self.target, max_in_flight=4, retry=retry, ack_timeout_s=60) as client:
            pending = []
            next_send = time.monotonic()
            while time.monotonic() < self.deadline:
                batch = gen.batch(self.batch_size)
                ids = [o.event_id for o in batch.orders]
                pending.append((client.send(batch), ids))
                pending = [p for p in pending if not self._settled(*p)]
                next_send += self.interval_s
                time.sleep(max(0.0, next_send - time.monotonic()))  # pacing the rate, not a sync
            for future, ids in pending:
                future.exception(timeout=180)
                self._settled(future, ids)
            self.resends = client.stats.resends

    def _settled(self, future, ids: list[str]) -> bool:
        if not future.done():
            return False
        if future.exception() is None:
            ack = future.result()
            if ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH):
                self.acked_event_ids.update(ids)
                self.acked_batches += 1
        else:
            self.failed_batches += 1
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--rate", type=float, default=3000, help="orders/s over both streams")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data-dir", default="data/soak")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    data = Path(args.data_dir).resolve()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    partitions = 12
    serve_args = [
        "--listen",
        f"127.0.0.1:{port}",
        "--bronze-uri",
        f"file://{data / 'bronze'}",
        "--roll-age-s",
        "10",
        "--topic-partitions",
        str(partitions),
        "--send-timeout-s",
        "10",
    ]
    print(f"soak: {args.seconds:.0f} s at {args.rate:.0f} orders/s, seed {args.seed}, data in {data}", flush=True)

    broker = KafkaCluster(nodes=3, heap_mb=384).start()
    for topic in (TOPIC, DLQ):
        broker.create_topic(topic, partitions=partitions)
    server = ServerProcess(["--kafka-bootstrap", broker.bootstrap, *serve_args], log_path=data / "server.log")
    reader = TopicReader(broker.bootstrap, partitions)
    reader.start()
    started = time.monotonic()
    deadline = started + args.seconds
    senders = [
        Sender(f"127.0.0.1:{port}", args.seed * 10 + i, args.rate / 2, args.batch_size, deadline) for i in range(2)
    ]
    for s in senders:
        s.start()

    events: Counter[str] = Counter()
    rss: list[tuple[float, float]] = []
    next_chaos = time.monotonic() + rng.uniform(15, 45)
    next_sample = time.monotonic()
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                rss.append((now - started, rss_mib(server.process.pid)))
                next_sample = now + 10
            if now >= next_chaos and now < deadline - 20:
                kind = rng.choice(["all_brokers_down", "one_broker_down", "server_sigterm", "server_sigkill"])
                events[kind] += 1
                print(f"  {now - started:6.0f} s  {kind}", flush=True)
                if kind == "all_brokers_down":
                    broker.stop_all()
                    time.sleep(rng.uniform(3, 10))  # the outage's length, not a sync
                    broker.start_all()
                elif kind == "one_broker_down":
                    victim = rng.choice(broker.node_ids)
                    broker.kill_node(victim)
                    time.sleep(rng.uniform(3, 10))  # the outage's length, not a sync
                    broker.start_node(victim)
                else:
                    server.stop(signal.SIGTERM if kind == "server_sigterm" else signal.SIGKILL)
                    server.close()
                    server = ServerProcess(
                        ["--kafka-bootstrap", broker.bootstrap, *serve_args], log_path=data / "server.log"
                    )
                next_chaos = time.monotonic() + rng.uniform(15, 45)
            time.sleep(0.5)  # the chaos loop's tick (samples, events), not a sync
        for s in senders:
            s.join(300)
        wait_bronze_caught_up(broker.bootstrap, [TOPIC, DLQ], f"file://{data / 'bronze'}", timeout_s=300)
        code = server.stop(signal.SIGTERM)
        ends = {p: end for (_, p), end in end_offsets(broker.bootstrap, [TOPIC]).items() if end}
        wait_until(
            lambda: all(reader.positions.get(p, 0) >= end for p, end in ends.items()),
            60,
            what=lambda: f"the reader at Kafka's end offsets {ends}: {reader.positions}",
        )
    finally:
        reader.stop()
        server.close()
        broker.close()

    acked = set().union(*(s.acked_event_ids for s in senders))
    orders = ds.dataset(data / "bronze" / "orders", format="parquet", partitioning="hive").to_table(
        columns=["event_id"]
    )
    bronze_ids = orders["event_id"].to_pylist()
    bronze = set(bronze_ids)
    kafka = {k.decode() for k in reader.seen}
    kafka_copies = sum(1 for v in reader.seen.values() if len(v) > 1)
    extra_records = reader.records - len(reader.seen)

    print("\nchaos events:", dict(events) or "none")
    print(
        f"batches acked {sum(s.acked_batches for s in senders):,}, failed {sum(s.failed_batches for s in senders):,}, "
        f"resent {sum(s.resends for s in senders):,}"
    )
    print(
        f"orders acked {len(acked):,}; Kafka records {reader.records:,} ({len(kafka):,} event_ids, "
        f"{extra_records:,} extra copies); Bronze rows {len(bronze_ids):,}"
    )
    print("server RSS over time (s: MiB):", ", ".join(f"{t:.0f}: {m:.0f}" for t, m in rss))
    checks = {
        "server exited 0 at the end": code == 0,
        "every acked order is in Kafka": acked <= kafka,
        "every acked order is in Bronze": acked <= bronze,
        "Bronze holds no order twice": len(bronze_ids) == len(bronze) == pc.count_distinct(orders["event_id"]).as_py(),
        "Kafka copies of an event_id carry the same bytes": kafka_copies == 0,
    }
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    if not acked <= bronze:
        print(f"  missing from Bronze: {len(acked - bronze):,}, e.g. {sorted(acked - bronze)[:3]}")
    if not acked <= kafka:
        print(f"  missing from Kafka: {len(acked - kafka):,}, e.g. {sorted(acked - kafka)[:3]}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
