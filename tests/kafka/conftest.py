"""Fixtures of the Kafka tests: a private dev broker for fault injection, fresh topics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafkautil import KafkaCluster

from keystone_ingest.server.devbroker import DevBroker


@pytest.fixture(scope="module")
def dev_broker() -> Iterator[DevBroker]:
    """A dev broker of this module's own (3 brokers), always librdkafka's mock
    cluster even when KAFKA_BOOTSTRAP_SERVERS is set: tests take its brokers
    down and inject errors, so they must not share it. Every test leaves it
    with all brokers up and no injected errors."""
    with DevBroker(brokers=3, partitions=6) as broker:
        yield broker


@pytest.fixture
def topics(kafka_broker: KafkaCluster) -> tuple[str, str]:
    """A fresh (topic, dead-letter topic) pair on the session cluster."""
    return kafka_broker.new_topic("orders", partitions=6), kafka_broker.new_topic("orders-dlq", partitions=3)
