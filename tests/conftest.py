"""Fixtures shared by every test package. Keep each one small; helpers live in
modules beside this file (kafkautil.py, ...)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafkautil import KafkaCluster, kafka_cluster


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaCluster]:
    """One Kafka cluster for the session: a dev broker (3 brokers), or the
    cluster named by KAFKA_BOOTSTRAP_SERVERS. Make topics with
    `kafka_broker.new_topic(...)` (unique names); tests that break brokers
    start their own DevBroker instead of using this one."""
    with kafka_cluster() as cluster:
        yield cluster
