"""The server's lifecycle: start the sinks, then gRPC; on a signal, shut down in order.

    server = IngestServer(config)
    await server.start()          # binds; server.port is the gRPC port
    await server.wait_stopped()   # until SIGTERM/SIGINT or server.request_stop()

`serve(config)` does both and installs the signal handlers; it is what
`keystone-ingest serve` runs. Tests use `IngestServer` directly with port 0.

Start: gRPC binds, the Kafka sink connects (creating the topics when asked),
the Bronze worker process starts (server/bronze/process.py; `--bronze-uri ''`
runs none), then batches are served. Kafka is the log: a batch is acked once
Kafka has it, and the Bronze worker writes Parquet from the topics on its own
time, so nothing the server holds matters after a crash.

Shutdown order, and why (the steps share one deadline, --shutdown-grace-s):
  1. health NOT_SERVING    load balancers stop sending new streams first
  2. drain the service     stop reading batches, finish those already received, ack them
  3. stop gRPC             end what is left (clients resend unacked batches elsewhere)
  4. stop Kafka            flush the producer: every record handed to it is acked or failed
  5. stop Bronze           SIGTERM: the worker writes and commits what it has consumed
  6. embedded broker, executor, metrics endpoint
The Bronze worker stops after the producer so that it can still read what
the last batches published, and before the embedded broker it reads from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from keystone_ingest.core import Core
from keystone_ingest.server.bronze.config import BronzeWorkerConfig
from keystone_ingest.server.bronze.process import BronzeProcess
from keystone_ingest.server.config import ServeConfig
from keystone_ingest.server.files import write_atomically
from keystone_ingest.server.idempotency import BatchIdWindow
from keystone_ingest.server.limits import MemoryLimiter, WhenFull
from keystone_ingest.server.metrics import Metrics
from keystone_ingest.server.pipeline import Pipeline
from keystone_ingest.server.security.gate import ServerSecurity
from keystone_ingest.server.service import SERVICE_NAME, IngestService
from keystone_ingest.server.sinks.kafka import KafkaConfig, KafkaSink
from keystone_ingest.server.sinks.kafka.security import KafkaSecurity

if TYPE_CHECKING:
    from keystone_ingest.dev.embedded import EmbeddedBroker

log = logging.getLogger(__name__)

HEALTH_POLL_S = 1.0


class IngestServer:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.bootstrap: str | None = config.kafka_bootstrap
        self._stop = asyncio.Event()
        self._embedded_broker: EmbeddedBroker | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._executor = ThreadPoolExecutor(config.core_threads, thread_name_prefix="core")
        self._health_task: asyncio.Task | None = None
        self.kafka: KafkaSink | None = None
        self.bronze: BronzeProcess | None = None
        self.service: IngestService | None = None
        self.memory = MemoryLimiter(config.memory_limit_bytes, metrics=self.metrics)

    async def start(self) -> None:
        c = self.config
        # Bind first: a taken address fails the start before any sink is up.
        # Nothing is served until the handlers are added and the server starts.
        self.security = ServerSecurity(c)  # TLS files and tokens: bad ones fail the start here
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", c.max_message_bytes),
                ("grpc.max_send_message_length", 4 << 20),
                ("grpc.so_reuseport", 0),
                # No bandwidth-delay probing: it grows each connection's HTTP/2
                # windows to megabytes, data the transport takes in before any
                # budget sees it (48 busy connections: +120 MiB of RSS). Fixed
                # windows kept loopback throughput the same (110k orders/s), and
                # carry ~100 MB/s a stream at an in-region round trip of 0.5 ms.
                ("grpc.http2.bdp_probe", 0),
                *self.security.grpc_options(),
            ],
            interceptors=self.security.interceptors(),
        )
        host, port = c.listen_address
        try:
            self.port = self.security.add_port(self._grpc, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {c.listen}: {exc}") from None
        if c.metrics_address:
            self.metrics_port = self.metrics.serve(*c.metrics_address)
        if self.bootstrap is None:
            self.bootstrap = await asyncio.to_thread(self._start_embedded_broker)
        self.kafka = KafkaSink(
            KafkaConfig(
                bootstrap=self.bootstrap,
                topic=c.topic,
                dlq_topic=c.dlq_topic,
                compression=c.compression,
                compression_level=c.compression_level,
                linger_ms=c.linger_ms,
                max_batch_bytes=c.max_batch_bytes,
                send_timeout_s=c.send_timeout_s,
                max_buffer_bytes=c.kafka_buffer_bytes,
                when_full=WhenFull(c.kafka_when_full),
                create_topics=c.create_topics,
                partitions=c.topic_partitions,
                replication=c.replication_factor,
                security=KafkaSecurity.from_config(c),
            ),
            metrics=self.metrics,
        )
        await self.kafka.start()
        embedded_without_groups = self._embedded_broker is not None and not self._embedded_broker.consumer_groups
        if c.bronze_uri and not embedded_without_groups:
            self.bronze = BronzeProcess(self._bronze_worker_config())
            await self.bronze.start()
        # Kafka records need the spans and rejects only; Bronze decodes its rows from Kafka.
        core = Core(
            dedup_max_keys=c.dedup_window,
            dedup_max_age_s=c.dedup_max_age_s,
            max_orders_per_batch=c.max_orders_per_batch,
            bronze_tables=False,
        )
        batch_ids = BatchIdWindow(c.batch_id_window, c.batch_id_max_age_s)
        max_bytes_in_flight = c.max_bytes_in_flight
        assert max_bytes_in_flight is not None  # ServeConfig.__post_init__ plans it when not given
        pipeline = Pipeline(core, self.kafka, batch_ids, self._executor, self.metrics)
        self.service = IngestService(
            pipeline,
            self.metrics,
            max_in_flight_per_stream=c.max_in_flight_per_stream,
            max_bytes_in_flight=max_bytes_in_flight,
            max_stream_bytes_in_flight=c.max_stream_bytes_in_flight,
            gate=self.security.gate,
            memory=self.memory,
        )
        self.memory.start()

        self._grpc.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        await self._grpc.start()
        await self._set_health(True)
        self._health_task = asyncio.create_task(self._watch_sinks(), name="health")
        if c.ready_file:
            write_atomically(
                c.ready_file,
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "port": self.port,
                        "metrics_port": self.metrics_port,
                        "kafka_bootstrap": self.bootstrap,
                        "bronze_uri": c.bronze_uri,
                        "bronze_pid": self.bronze and self.bronze.pid,
                        "bronze_metrics_port": self.bronze and self.bronze.metrics_port,
                    }
                ),
            )
        log.info(
            "serving",
            extra={
                "listen": f"{host}:{self.port}",
                "metrics_port": self.metrics_port,
                "kafka": self.bootstrap,
                "bronze": c.bronze_uri,
            },
        )

    def _bronze_worker_config(self) -> BronzeWorkerConfig:
        c = self.config
        shared = {f: getattr(c, f) for f in BronzeWorkerConfig.__dataclass_fields__ if hasattr(c, f)}
        return BronzeWorkerConfig(
            **{
                **shared,
                "kafka_bootstrap": self.bootstrap,
                "metrics_listen": c.bronze_metrics_listen,
                "ready_file": None,
            }
        )

    def _start_embedded_broker(self) -> str:
        from keystone_ingest.dev import embedded

        c = self.config
        broker = self._embedded_broker = embedded.start(
            c.dev_broker,
            topics=[c.topic, c.dlq_topic],
            partitions=c.topic_partitions,
            data_dir=c.dev_kafka_dir,
            libs=c.kafka_libs,
        )
        return broker.bootstrap

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def _watch_sinks(self) -> None:
        # Wakes every HEALTH_POLL_S to mirror Kafka's state into the health
        # service: NOT_SERVING while Kafka has been unable to take writes for
        # longer than --kafka-unavailable-threshold-s (a leader moving or a
        # producer being replaced is not worth draining traffic for). Bronze
        # does not count: acks depend on Kafka only, and Kafka holds the
        # records until a Bronze worker writes them.
        kafka = self.kafka
        assert kafka is not None  # start() made it before this task
        serving = True
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            kafka_ok = kafka.available
            since = kafka.unavailable_since
            kafka_down_s = 0.0 if since is None else time.monotonic() - since
            kafka_down = kafka_down_s >= self.config.kafka_unavailable_threshold_s
            self.metrics.kafka_available.set(1 if kafka_ok else 0)
            if serving == kafka_down:
                serving = not serving
                if serving:
                    log.warning("Kafka takes writes again: health SERVING")
                else:
                    log.warning(
                        "health NOT_SERVING",
                        extra={"kafka_available": kafka_ok, "kafka_unavailable_s": round(kafka_down_s, 1)},
                    )
                await self._set_health(serving)

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets a flag."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        c = self.config
        started = time.monotonic()
        log.info("shutting down", extra={"grace_s": c.shutdown_grace_s})
        if self._health_task is not None:
            self._health_task.cancel()
        await self._health.enter_graceful_shutdown()  # 1. every service NOT_SERVING
        if self.service is not None:  # 2. finish what was received
            try:
                async with asyncio.timeout(c.shutdown_grace_s):
                    await self.service.drain()
            except TimeoutError:
                log.error("batches still in flight at the shutdown deadline; they were not acked")
        await self.memory.stop()  # nothing waits for memory once calls are drained
        if self._grpc is not None:  # 3. end the calls that are left
            await self._grpc.stop(grace=max(0.0, c.shutdown_grace_s - (time.monotonic() - started)))
        if self.kafka is not None:  # 4. flush Kafka
            await self.kafka.stop()

        if self.bronze is not None:  # 5. the Bronze worker commits what it consumed
            left = max(1.0, c.shutdown_grace_s - (time.monotonic() - started))
            await self.bronze.stop(left)
        self._executor.shutdown(wait=True)  # 6. the rest
        if self._embedded_broker is not None:
            await asyncio.to_thread(self._embedded_broker.close)
        self.metrics.close()
        log.info("stopped", extra={"seconds": round(time.monotonic() - started, 3)})


async def serve(config: ServeConfig) -> None:
    server = IngestServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start()
    except BaseException:
        await server.shutdown()
        raise
    await server.wait_stopped()
