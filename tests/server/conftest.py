"""Fixtures of the server tests: real `keystone-ingest serve` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafkautil import KafkaCluster
from serverutil import Deployment, deployments


@pytest.fixture
def deploy(kafka_cluster: KafkaCluster, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Starts servers on the session cluster; every one is killed at teardown."""
    with deployments(kafka_cluster, tmp_path, "--linger-ms", "2") as start:
        yield start
