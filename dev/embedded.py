"""The broker `keystone-ingest serve` starts when no --kafka-bootstrap is given.

`kafka` (the default): one Apache Kafka node from Maven Central's jars
(`make kafka`), its data under --dev-kafka-dir so records survive a restart of
the server. `mock`: librdkafka's mock cluster, for a machine without Java; it
keeps only the newest 5 MiB of each partition and forgets everything at exit.
Either is announced loudly in the log: neither is a production cluster.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)

KINDS = ("kafka", "mock")


class StartFailed(RuntimeError):
    """The embedded broker could not be started (no Java, no jars, a node that died); says why."""


class EmbeddedBroker(Protocol):
    @property
    def bootstrap(self) -> str: ...

    @property
    def consumer_groups(self) -> bool:
        """False for the mock cluster: aiokafka's JoinGroup gets no answer from it."""
        ...

    def close(self) -> None: ...


def start(kind: str, *, topics: list[str], partitions: int, data_dir: str, libs: str | None) -> EmbeddedBroker:
    """Start the broker and create `topics` (each with `partitions`) if missing.
    Blocks for the broker's start-up (seconds): call it from a thread."""
    from keystone_ingest.dev.kafka import KafkaUnavailable
    from keystone_ingest.dev.mockbroker import MockBrokerError

    try:
        return _start(kind, topics, partitions, data_dir, libs)
    except (KafkaUnavailable, MockBrokerError) as exc:
        raise StartFailed(f"cannot start the embedded {kind} broker: {exc}") from None


def _start(kind: str, topics: list[str], partitions: int, data_dir: str, libs: str | None) -> EmbeddedBroker:
    if kind == "kafka":
        broker = _start_kafka(topics, partitions, data_dir, libs)
        what = (
            f"an EMBEDDED APACHE KAFKA broker (one node, no replication, data in {data_dir})\n"
            f"  at {broker.bootstrap}. For development only: point --kafka-bootstrap at MSK for production."
        )
    elif kind == "mock":
        from keystone_ingest.dev.mockbroker import MockBroker

        broker = MockBroker(brokers=3, partitions=partitions, topics=topics)
        what = (
            f"librdkafka's MOCK CLUSTER at {broker.bootstrap}.\n"
            "  It is not Kafka: records live in memory, only the newest 5 MiB of each partition is kept,\n"
            "  and everything vanishes when this server exits; it has no consumer groups aiokafka can\n"
            "  join, so no Bronze worker runs and Bronze is not written. For machines without Java only."
        )
    else:
        raise ValueError(f"--dev-broker must be one of {', '.join(KINDS)}, not {kind!r}")
    banner = "!" * 78
    log.warning(
        f"\n{banner}\n  No --kafka-bootstrap given: started {what}\n{banner}",
        extra={"kafka": broker.bootstrap, "embedded_broker": kind},
    )
    return broker


def _start_kafka(topics: list[str], partitions: int, data_dir: str, libs: str | None) -> EmbeddedBroker:
    from keystone_ingest.dev.kafka import KafkaCluster

    cluster = KafkaCluster(nodes=1, data_dir=data_dir, libs=libs).start()
    try:
        existing = cluster.metadata().topics
        for topic in topics:
            if topic not in existing:
                cluster.create_topic(topic, partitions=partitions, replication=1)
    except BaseException:
        cluster.close()
        raise
    return cluster
