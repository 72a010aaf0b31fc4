"""Fixtures of the server tests: real `keystone-ingest serve` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafkautil import KafkaCluster

from keystone_ingest.server.launcher import ServerProcess


class Deployment:
    """One server process with its own topics and Bronze directory."""

    def __init__(self, cluster: KafkaCluster, bronze: Path, extra_args: list[str], env: dict[str, str] | None) -> None:
        self.cluster = cluster
        self.topic = cluster.new_topic("orders", partitions=6)
        self.dlq_topic = cluster.new_topic("orders-dlq", partitions=3)
        self.bronze = bronze
        self.server = ServerProcess(
            ["--kafka-bootstrap", cluster.bootstrap, "--topic", self.topic, "--dlq-topic", self.dlq_topic,
             "--bronze-uri", f"file://{bronze}", "--linger-ms", "2", *extra_args],
            env=env,
        )  # fmt: skip
        self.target = self.server.target


@pytest.fixture
def deploy(kafka_broker: KafkaCluster, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Starts servers on the session cluster; every one is killed at teardown."""
    started: list[Deployment] = []

    def start(*extra_args: str, env: dict[str, str] | None = None, bronze: Path | None = None) -> Deployment:
        d = Deployment(kafka_broker, bronze or tmp_path / f"bronze{len(started)}", list(extra_args), env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.server.close()
