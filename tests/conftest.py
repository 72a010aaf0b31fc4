"""Fixtures shared by every test package. Keep each one small; helpers live in
modules beside this file (kafkautil.py, ...)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafkautil import KafkaCluster, KafkaSecrets


@pytest.fixture(scope="session")
def kafka_secrets(tmp_path_factory: pytest.TempPathFactory) -> KafkaSecrets:
    """Certificates and credentials of the session cluster's secured listeners."""
    return KafkaSecrets.make(tmp_path_factory.mktemp("kafka-secrets"))


@pytest.fixture(scope="session")
def kafka_cluster(kafka_secrets: KafkaSecrets) -> Iterator[KafkaCluster]:
    """The session's Apache Kafka: 3 nodes (replication 3, min ISR 2), started
    once, every JVM gone at the end; clients use `bootstrap` (PLAINTEXT), the
    security tests `bootstrap_for("SASL")` and `bootstrap_for("SASL_SSL")`.
    Make topics with `kafka_cluster.new_topic(...)` (unique names). Tests that
    stop, kill or pause nodes take it through `breakable_kafka`."""
    with KafkaCluster(**kafka_secrets.cluster_settings()) as cluster:
        yield cluster


@pytest.fixture
def breakable_kafka(kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """The session's cluster, for a test that stops, kills or pauses nodes:
    afterwards every node runs again and every replica is in sync, whatever
    the test left."""
    yield kafka_cluster
    kafka_cluster.start_all()
    kafka_cluster.wait_in_sync()
