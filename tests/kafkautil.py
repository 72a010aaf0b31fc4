"""Kafka helpers for tests of any package: the cluster they share and an
independent reader (confluent-kafka, not the aiokafka the server uses).

    def test_x(kafka_cluster):                    # the session's 3-node Apache Kafka
        topic = kafka_cluster.new_topic("orders", partitions=6)
        ...
        records = read_all(kafka_cluster.bootstrap, topic)

Topic names carry a random suffix, so tests never see each other's records.
`TEST_CLUSTER` is how the session's cluster is configured; tests that break
brokers on purpose start one of their own with it (or restore the shared one).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from certs import TestCA
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from keystone_ingest.dev.kafka import KafkaCluster

__all__ = ["TEST_CLUSTER", "KafkaCluster", "KafkaSecrets", "Record", "partition_count", "read_all"]

# Three nodes, replication 3, min.insync.replicas 2 (as on MSK), each node
# small. A node that stops answering is fenced after 6 s (Kafka: 9 s) and a
# replica that stops fetching leaves the ISR after 10 s (Kafka: 30 s), so the
# failure tests wait seconds, not half a minute, for what a real cluster does.
TEST_CLUSTER = {
    "nodes": 3,
    "heap_mb": 384,
    "config": {
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "1000",
        "replica.lag.time.max.ms": "10000",
    },
}


@dataclass(frozen=True)
class KafkaSecrets:
    """What a client needs for the session cluster's secured listeners: `SASL`
    (SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512) and
    `SASL_SSL` (PLAIN over TLS, a client certificate required)."""

    ca: Path
    client_cert: Path
    client_key: Path
    broker_pem: Path  # the brokers' key and certificate, one PEM file
    user: str = "keystone"
    plain_password: str = "plain-secret-77"
    scram_password: str = "scram-secret-42"

    @classmethod
    def make(cls, directory: Path) -> KafkaSecrets:
        ca = TestCA(directory, "kafka-ca")
        broker = ca.issue("kafka-broker", server=True)
        client = ca.issue("keystone-producer")
        pem = directory / "kafka-broker-keystore.pem"
        pem.write_bytes(broker.key.read_bytes() + broker.cert.read_bytes())
        return cls(ca.cert, client.cert, client.key, pem)

    def cluster_settings(self) -> dict:
        """TEST_CLUSTER with the secured listeners, users and certificates."""
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{self.user}="{self.plain_password}";'
        )
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            **TEST_CLUSTER,
            "listeners": {"PLAINTEXT": "PLAINTEXT", "SASL": "SASL_PLAINTEXT", "SASL_SSL": "SASL_SSL"},
            "config": {
                **TEST_CLUSTER["config"],
                "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
                "listener.name.sasl.plain.sasl.jaas.config": plain,
                "listener.name.sasl.scram-sha-256.sasl.jaas.config": scram,
                "listener.name.sasl.scram-sha-512.sasl.jaas.config": scram,
                "listener.name.sasl_ssl.sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_ssl.plain.sasl.jaas.config": plain,
                "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                "listener.name.sasl_ssl.ssl.keystore.location": str(self.broker_pem),
                "listener.name.sasl_ssl.ssl.truststore.type": "PEM",
                "listener.name.sasl_ssl.ssl.truststore.location": str(self.ca),
                "listener.name.sasl_ssl.ssl.client.auth": "required",
            },
            # SCRAM credentials live in the cluster's metadata: written at format time.
            "format_args": [
                f"--add-scram=SCRAM-SHA-{bits}=[name={self.user},password={self.scram_password}]" for bits in (256, 512)
            ],
        }


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
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"keystone-tests-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
        }
    )
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
                raise TimeoutError(
                    f"read_all({topic!r}): still missing partitions {sorted(remaining)}; "
                    f"high watermarks {highs}, records read {got}"
                )
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                if message.error() is not None:
                    raise KafkaException(message.error())
                p = message.partition()
                if message.offset() >= highs[p]:
                    continue  # written after read_all was called
                _, ts = message.timestamp()
                records[p].append(
                    Record(
                        topic, p, message.offset(), message.key(), message.value(), list(message.headers() or []), ts
                    )
                )
                if message.offset() >= highs[p] - 1:
                    remaining.discard(p)
        return [r for p in sorted(records) for r in records[p]]
    finally:
        consumer.close()
