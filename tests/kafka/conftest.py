"""Fixtures of the Kafka tests: a private mock cluster for injected error codes, fresh topics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafkautil import KafkaCluster
from keystone_ingest.dev.mockbroker import MockBroker


@pytest.fixture(scope="module")
def mock_broker() -> Iterator[MockBroker]:
    """A mock cluster of this module's own (3 brokers) for the tests that need
    an error code or a late answer a real broker cannot give on demand. Every
    test leaves it with all brokers up and no injected errors."""
    with MockBroker(brokers=3, partitions=6) as broker:
        yield broker


@pytest.fixture
def topics(kafka_cluster: KafkaCluster) -> tuple[str, str]:
    """A fresh (topic, dead-letter topic) pair on the session cluster."""
    return kafka_cluster.new_topic("orders", partitions=6), kafka_cluster.new_topic("orders-dlq", partitions=3)
