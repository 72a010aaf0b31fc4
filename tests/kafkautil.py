"""Kafka helpers for tests of any package: a broker to talk to, unique topics,
and an independent reader (confluent-kafka, not the aiokafka the server uses).

    with kafka_cluster() as cluster:          # or the session fixture `kafka_broker`
        topic = cluster.new_topic("orders", partitions=6)
        ...
        records = read_all(cluster.bootstrap, topic)

With KAFKA_BOOTSTRAP_SERVERS set, `kafka_cluster()` uses that real cluster
instead of starting a dev broker: topics are then created through the admin API
and fault injection (`cluster.broker`) is unavailable. Topic names carry a
random suffix either way, so tests never see each other's records.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from keystone_ingest.server.devbroker import DevBroker

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int

    def header(self, name: str) -> bytes | None:
        """The value of header `name` (the last one if repeated), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class KafkaCluster:
    """A Kafka cluster for tests: a dev broker we started, or an external one."""

    def __init__(self, bootstrap: str, broker: DevBroker | None) -> None:
        self.bootstrap = bootstrap
        self.broker = broker  # None on an external cluster: no fault injection

    def new_topic(self, prefix: str = "t", partitions: int = 6, replication: int | None = None) -> str:
        """Create a topic named `<prefix>-<random>` and return its name."""
        topic = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if self.broker is not None:
            self.broker.create_topic(topic, partitions=partitions, replication=replication)
        else:
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            futures = admin.create_topics([NewTopic(topic, partitions, replication or 1)], operation_timeout=15)
            futures[topic].result(timeout=20)
        return topic


@contextlib.contextmanager
def kafka_cluster(brokers: int = 3, partitions: int = 6) -> Iterator[KafkaCluster]:
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield KafkaCluster(external, None)
        return
    with DevBroker(brokers=brokers, partitions=partitions) as broker:
        yield KafkaCluster(broker.bootstrap, broker)


def partition_count(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keystone-tests"})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        return len(metadata.topics[topic].partitions)
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, timeout_s: float = 15.0) -> list[Record]:
    """Every record of `topic`, in (partition, offset) order: reads each
    partition from its start up to the high watermark seen when called.
    Raises TimeoutError if that takes longer than timeout_s."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"keystone-tests-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
    })
    try:
        deadline = time.monotonic() + timeout_s
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        if metadata.topics[topic].error is not None:
            raise KafkaException(metadata.topics[topic].error)
        partitions = sorted(metadata.topics[topic].partitions)
        highs = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                highs[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in highs])
        records: dict[int, list[Record]] = {p: [] for p in highs}
        remaining = set(highs)
        while remaining:
            if time.monotonic() > deadline:
                got = {p: len(r) for p, r in records.items()}
                raise TimeoutError(f"read_all({topic!r}): still missing partitions {sorted(remaining)}; "
                                   f"high watermarks {highs}, records read {got}")
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                if message.error() is not None:
                    raise KafkaException(message.error())
                p = message.partition()
                if message.offset() >= highs[p]:
                    continue  # written after read_all was called
                _, ts = message.timestamp()
                records[p].append(Record(topic, p, message.offset(), message.key(), message.value(),
                                         list(message.headers() or []), ts))
                if message.offset() >= highs[p] - 1:
                    remaining.discard(p)
        return [r for p in sorted(records) for r in records[p]]
    finally:
        consumer.close()
