"""Fixtures of the security tests: certificates made here, and servers on the
session's Kafka cluster with small topics: in this process (`in_process`) or
real `keystone-ingest serve` processes (`deploy`). Helpers in secutil.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certs import TestCA
from inprocess import ServerThread, in_process_servers
from kafkautil import KafkaCluster
from serverutil import Deployment, deployments


@pytest.fixture
def deploy(kafka_cluster: KafkaCluster, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    with deployments(kafka_cluster, tmp_path, partitions=3, dlq_partitions=1) as start:
        yield start


@pytest.fixture
def in_process(kafka_cluster: KafkaCluster) -> Iterator[Callable[..., ServerThread]]:
    with in_process_servers(kafka_cluster, partitions=3, dlq_partitions=1) as start:
        yield start


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    """A CA with a server and a client certificate, and a second, unrelated CA with its own client."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = TestCA(certs, "ca")
    other = TestCA(certs, "other-ca")
    return {
        "ca": ca,
        "server": ca.issue("server", server=True),
        "client": ca.issue("checkout-api"),
        "other_ca": other,
        "stranger": other.issue("stranger"),
    }
