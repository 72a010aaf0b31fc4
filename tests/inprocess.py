"""Servers inside the test process: the real `IngestServer` (server/app.py) on
port 0 with its real Kafka sink, topics of its own on the session cluster, and
no Bronze worker. What tests of handlers, limits and error mapping use; a test
about the process itself (signals, exit codes, logs, RSS, the Bronze child,
the embedded broker) starts one with serverutil.py instead.

    async with serving(kafka_cluster, "--max-message-bytes", "262144") as server:
        ...                                   # coroutine tests

    def test_x(in_process):                   # the fixture (tests/conftest.py), for sync tests
        server = in_process("--max-message-bytes", "262144")
        with IngestClient(server.target) as client: ...
        assert server.metric("keystone_ingest_batches_total", status="accepted") == 1

The configuration is what `keystone-ingest serve FLAGS` makes of the same
flags (the CLI's parser, KEYSTONE_* environment included), so a test moves
between a process and this without changing its flags.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from kafkautil import KafkaCluster
from keystone_ingest.server.app import IngestServer
from keystone_ingest.server.cli import build_parser
from keystone_ingest.server.config import ServeConfig, config_from_args
from serverutil import catch_up_bronze

__all__ = ["InProcessServer", "ServerThread", "in_process_servers", "serve_config", "serving"]

# Before the test's flags, which win. No Bronze worker and no metrics endpoint
# (tests read `metric()` from the registry; pass --metrics-listen 127.0.0.1:0
# to read /metrics over HTTP). No memory limit: the limiter reads the resident
# memory of this process, which holds pytest and everything else the test does.
DEFAULTS = ("--listen", "127.0.0.1:0", "--metrics-listen", "", "--bronze-uri", "", "--memory-limit-bytes", "0")


def serve_config(*args: str) -> ServeConfig:
    """The ServeConfig `keystone-ingest serve *args` runs with (ValueError for a bad value, as the CLI's exit 2)."""
    return config_from_args(build_parser().parse_args(["serve", *args]))


class InProcessServer:
    """A started `IngestServer` (`server`) and where it writes."""

    def __init__(self, server: IngestServer, cluster: KafkaCluster, topic: str, dlq_topic: str) -> None:
        self.server = server
        self.config = server.config
        self.cluster = cluster
        self.topic = topic
        self.dlq_topic = dlq_topic
        assert server.port is not None
        self.port: int = server.port
        self.target = f"127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the server's metrics registry: 0 for a labelled child not
        made yet; KeyError for a name the registry does not have at all."""
        registry = self.server.metrics.registry
        value = registry.get_sample_value(name, labels)
        if value is not None:
            return value
        if not any(s.name == name for family in registry.collect() for s in family.samples):
            raise KeyError(name)
        return 0.0

    def catch_up_bronze(self, bronze: Path) -> None:
        """Writes Bronze under `bronze` with a worker in this process until it
        holds everything the topics hold now (the server runs none)."""
        catch_up_bronze(self.cluster.bootstrap, self.topic, self.dlq_topic, f"file://{bronze}")


@contextlib.asynccontextmanager
async def serving(
    cluster: KafkaCluster, *args: str, partitions: int = 6, dlq_partitions: int = 3
) -> AsyncIterator[InProcessServer]:
    """Starts a server on the running loop with topics of its own; on exit
    stops it as SIGTERM would (request_stop, then the ordered shutdown)."""
    topic = await asyncio.to_thread(cluster.new_topic, "orders", partitions)
    dlq_topic = await asyncio.to_thread(cluster.new_topic, "orders-dlq", dlq_partitions)
    config = serve_config(
        *DEFAULTS, "--kafka-bootstrap", cluster.bootstrap, "--topic", topic, "--dlq-topic", dlq_topic, *args
    )
    server = IngestServer(config)
    try:
        await server.start()
        yield InProcessServer(server, cluster, topic, dlq_topic)
    finally:
        server.request_stop()
        await server.shutdown()


class ServerThread(InProcessServer):
    """`serving(...)` on an event loop of its own in a background thread, for
    tests that are not coroutines; ready when constructed. `stop()` (also run
    at the fixture's teardown) shuts the server down and raises what failed."""

    def __init__(self, cluster: KafkaCluster, *args: str, start_timeout_s: float = 60.0, **options) -> None:
        self._started: concurrent.futures.Future[InProcessServer] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._joined = False
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(cluster, args, options),), name="in-process-server", daemon=True
        )
        self._thread.start()
        try:
            started = self._started.result(start_timeout_s)
        except BaseException:
            self.stop()
            raise
        super().__init__(started.server, cluster, started.topic, started.dlq_topic)

    async def _main(self, cluster: KafkaCluster, args: tuple[str, ...], options: dict) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with serving(cluster, *args, **options) as started:
                self._started.set_result(started)
                await self._stop.wait()
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
            self._stopped.set_exception(exc)
        else:
            self._stopped.set_result(None)

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stops the server (request_stop and shutdown on its loop), joins the thread."""
        if self._joined:
            return
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the in-process server did not stop within {timeout_s} s"
        self._joined = True
        if self._started.done() and self._started.exception() is None:
            self._stopped.result(0)  # raises what failed during the shutdown


@contextlib.contextmanager
def in_process_servers(cluster: KafkaCluster, **defaults) -> Iterator[Callable[..., ServerThread]]:
    """Yields `start(*flags, partitions=6, dlq_partitions=3)`, which starts a
    ServerThread (`defaults`: of those keywords); every one is stopped on exit."""
    started: list[ServerThread] = []

    def start(*args: str, **options) -> ServerThread:
        server = ServerThread(cluster, *args, **{**defaults, **options})
        started.append(server)
        return server

    try:
        yield start
    finally:
        errors = []
        for server in started:
            try:
                server.stop()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
