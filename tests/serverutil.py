"""Real `keystone-ingest serve` processes for tests: one per `Deployment`, with
topics, a Bronze directory and a Bronze consumer group of its own on a shared
Kafka cluster; and `wait_bronze_caught_up`, the sync point before reading Bronze."""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from kafkautil import KafkaCluster
from keystone_ingest.dev.catchup import wait_bronze_caught_up
from keystone_ingest.dev.launcher import ServerProcess

__all__ = ["BRONZE_ROLL_AGE_S", "Deployment", "catch_up_bronze", "deployments", "wait_bronze_caught_up"]

BRONZE_ROLL_AGE_S = "0.3"
"""Deployments write Bronze files this often, so tests wait a fraction of a second for them."""


class Deployment:
    """One server process with its own topics and Bronze directory."""

    def __init__(
        self,
        cluster: KafkaCluster,
        bronze: Path,
        extra_args: list[str],
        env: dict[str, str] | None = None,
        *,
        partitions: int = 6,
        dlq_partitions: int = 3,
    ) -> None:
        self.cluster = cluster
        self.topic = cluster.new_topic("orders", partitions=partitions)
        self.dlq_topic = cluster.new_topic("orders-dlq", partitions=dlq_partitions)
        self.bronze = bronze
        self.server = ServerProcess(
            [
                "--kafka-bootstrap",
                cluster.bootstrap,
                "--topic",
                self.topic,
                "--dlq-topic",
                self.dlq_topic,
                "--bronze-uri",
                f"file://{bronze}",
                *extra_args,
            ],
            env=env,
        )
        self.target = self.server.target
        self.port = self.server.port

    def wait_bronze(self, timeout_s: float = 60.0) -> None:
        """Until the Bronze worker has written everything Kafka holds now."""
        wait_bronze_caught_up(self.cluster.bootstrap, [self.topic, self.dlq_topic], f"file://{self.bronze}", timeout_s)

    def metric(self, name: str) -> float:
        """An unlabelled metric's value from /metrics; KeyError if the server has none of that name."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """The server's resident memory now (VmRSS) or at its peak (VmHWM)."""
        with open(f"/proc/{self.server.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field}")


@contextlib.contextmanager
def deployments(
    cluster: KafkaCluster, tmp_path: Path, *common_args: str, partitions: int = 6, dlq_partitions: int = 3
) -> Iterator[Callable[..., Deployment]]:
    """Yields `start(*extra_args, env=None, bronze=None)`, which starts a
    Deployment (with `common_args` first); every one is killed on exit."""
    started: list[Deployment] = []

    def start(*extra_args: str, env: dict[str, str] | None = None, bronze: Path | None = None) -> Deployment:
        d = Deployment(
            cluster,
            bronze or tmp_path / f"bronze{len(started)}",
            [*common_args, *extra_args],
            env,
            partitions=partitions,
            dlq_partitions=dlq_partitions,
        )
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.server.close()


def catch_up_bronze(
    bootstrap: str, topic: str, dlq_topic: str, bronze_uri: str, timeout_s: float = 60.0, **overrides
) -> dict[tuple[str, int], int]:
    """Runs a Bronze worker (in this process, in the test's group) until Bronze
    holds everything the topics hold now: what a worker started after a
    server is gone does. Returns Kafka's end offsets."""
    import asyncio
    import os

    from keystone_ingest.server.bronze.config import BronzeWorkerConfig
    from keystone_ingest.server.bronze.worker import BronzeWorker

    config = BronzeWorkerConfig(
        **{
            "kafka_bootstrap": bootstrap,
            "topic": topic,
            "dlq_topic": dlq_topic,
            "bronze_uri": bronze_uri,
            "bronze_group": os.environ.get("KEYSTONE_BRONZE_GROUP", "keystone-bronze"),
            "roll_age_s": float(BRONZE_ROLL_AGE_S),
            "bronze_session_timeout_s": 2.0,
            **overrides,
        }
    )
    store_options = {"endpoint_url": config.s3_endpoint_url, "spool_dir": config.spool_dir}

    async def run() -> dict[tuple[str, int], int]:
        worker = BronzeWorker(config)
        await worker.start()
        try:
            return await asyncio.to_thread(
                wait_bronze_caught_up, bootstrap, [topic, dlq_topic], bronze_uri, timeout_s, **store_options
            )
        finally:
            await worker.stop()

    return asyncio.run(run())
