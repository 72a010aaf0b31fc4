"""Prometheus metrics of one server process, served on their own port.

Every metric lives on a `Metrics` object with its own registry (not the global
one), so tests and several servers in one process never collide. Names follow
Prometheus conventions: `_total` for counters, base units (seconds, bytes).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Batch latency spans sub-millisecond (duplicate batch_ids) to seconds (broker
# trouble); Kafka acks cluster around the linger time and the broker round trip.
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "keystone_ingest_"
        self.orders_total = Counter(
            p + "orders_total", "Orders received, by outcome (accepted, duplicate, rejected)", ["outcome"], registry=r
        )
        self.batches_total = Counter(
            p + "batches_total",
            (
                "Batches answered, by ack status (accepted, duplicate_batch, rejected) or error "
                "(unavailable, internal, ...)"
            ),
            ["status"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            p + "batch_seconds", "Time from receiving a batch to its ack", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.batches_in_flight = Gauge(p + "batches_in_flight", "Batches received and not yet answered", registry=r)
        self.bytes_in_flight = Gauge(p + "bytes_in_flight", "Request bytes of batches not yet answered", registry=r)
        self.streams_open = Gauge(p + "streams_open", "Open StreamOrders calls", registry=r)
        self.memory_rss_bytes = Gauge(p + "memory_rss_bytes", "Resident memory of the server process", registry=r)
        self.memory_limited = Gauge(
            p + "memory_limited",
            "1 while resident memory is past the memory limit's high mark and admission waits",
            registry=r,
        )
        self.memory_limit_waits_total = Counter(
            p + "memory_limit_waits_total",
            "Batches that waited for resident memory to fall (--memory-limit-bytes)",
            registry=r,
        )
        self.backpressure_waits_total = Counter(
            p + "backpressure_waits_total",
            "Times a call waited for a byte budget (per stream or server) before reading its next batch",
            registry=r,
        )
        self.kafka_send_seconds = Histogram(
            p + "kafka_send_seconds",
            "Time from handing a record batch to the producer to the broker's ack (acks=all)",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.kafka_records_total = Counter(p + "kafka_records_total", "Records acked by Kafka", ["topic"], registry=r)
        self.kafka_errors_total = Counter(p + "kafka_errors_total", "Kafka send failures", ["kind"], registry=r)
        self.kafka_available = Gauge(p + "kafka_available", "1 while the producer can reach the cluster", registry=r)
        self.kafka_producer_state = Gauge(
            p + "kafka_producer_state",
            "1 for the Kafka producer's current state (connected, unavailable, replacing), 0 for the others",
            ["state"],
            registry=r,
        )
        self.kafka_retries_total = Counter(
            p + "kafka_retries_total",
            "Kafka retries: produce (a Produce request, or one partition's answer in it, that failed retriably: "
            "the producer sends those record batches again), "
            "probe (metadata request while Kafka is unreachable), producer_start (starting a replacement producer), "
            "hand_over (a record batch the producer could not take yet, offered again)",
            ["kind"],
            registry=r,
        )
        self.kafka_producer_replacements_total = Counter(
            p + "kafka_producer_replacements_total",
            "Kafka producers replaced by a new one (new producer id), by reason "
            "(producer_state, failed_batch, refused, stalled)",
            ["reason"],
            registry=r,
        )
        self.kafka_unavailable_seconds_total = Counter(
            p + "kafka_unavailable_seconds_total", "Seconds during which Kafka could not take writes", registry=r
        )
        self.kafka_publish_seconds = Histogram(
            p + "kafka_publish_seconds",
            "Time a batch waited for Kafka: from handing its records to the sink to the last ack, or to its failure",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.dedup_keys = Gauge(p + "dedup_keys", "Keys held by the order dedup window", registry=r)
        self.batch_id_window = Gauge(p + "batch_id_window_size", "batch_ids held by the idempotency window", registry=r)
        self._http: Callable[[], None] | None = None

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint in a daemon thread; returns the bound port."""
        port, self._http = serve_registry(self.registry, host, port)
        return port

    def close(self) -> None:
        if self._http is not None:
            self._http()
            self._http = None


def serve_registry(registry: CollectorRegistry, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serves `registry` on /metrics from a daemon thread: (bound port, stop)."""
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.server_port, stop
