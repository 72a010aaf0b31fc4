"""Fixtures shared by every test package. Keep each one small; helpers live in
modules beside this file (kafkautil.py, ...)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from inprocess import ServerThread, in_process_servers
from kafkautil import KafkaCluster, KafkaSecrets
from serverutil import BRONZE_ROLL_AGE_S


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


@pytest.fixture
def in_process(kafka_cluster: KafkaCluster) -> Iterator[Callable[..., ServerThread]]:
    """`in_process(*flags)` starts a server in this process (inprocess.py): the
    real IngestServer on port 0 and a thread's event loop, its Kafka sink on
    topics of its own, no Bronze worker; `serve` flags as for a process. The
    default for tests of handlers, limits and errors; stopped at teardown."""
    with in_process_servers(kafka_cluster) as start:
        yield start


@pytest.fixture(autouse=True)
def bronze_workers_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's Bronze workers (serve's child included, through the
    environment) form a consumer group of their own, write files within a
    fraction of a second, and leave their group 2 s after being killed."""
    monkeypatch.setenv("KEYSTONE_BRONZE_GROUP", f"bronze-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("KEYSTONE_ROLL_AGE_S", BRONZE_ROLL_AGE_S)
    monkeypatch.setenv("KEYSTONE_BRONZE_SESSION_TIMEOUT_S", "2")
