"""Prometheus metrics of one server process, served on their own port.

Every metric lives on a `Metrics` object with its own registry (not the global
one), so tests and several servers in one process never collide. Names follow
Prometheus conventions: `_total` for counters, base units (seconds, bytes).
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

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
            "Batches answered, by ack status (accepted, duplicate_batch, rejected) or error (unavailable, internal, ...)",
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
            p + "memory_limited", "1 while resident memory is past the memory limit's high mark and admission waits", registry=r
        )
        self.memory_limit_waits_total = Counter(
            p + "memory_limit_waits_total", "Batches that waited for resident memory to fall (--memory-limit-bytes)",
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
        self.bronze_files_total = Counter(p + "bronze_files_total", "Bronze Parquet files made visible", ["table"], registry=r)
        self.bronze_bytes_total = Counter(p + "bronze_bytes_total", "Bytes of Bronze Parquet files", ["table"], registry=r)
        self.bronze_rows_total = Counter(p + "bronze_rows_total", "Rows in Bronze Parquet files", ["table"], registry=r)
        self.bronze_publish_failures_total = Counter(
            p + "bronze_publish_failures_total",
            "Attempts to publish a Bronze file (local rename or S3 upload) that failed; each is retried with backoff",
            registry=r,
        )
        self.bronze_publishing = Gauge(
            p + "bronze_publishing", "1 while Bronze files publish; 0 while publishing fails (the log holds the rows)",
            registry=r,
        )
        # -- write-ahead log (server/wal.py)
        self.wal_bytes = Gauge(p + "wal_bytes", "Bytes held by write-ahead log segments", registry=r)
        self.wal_segments = Gauge(p + "wal_segments", "Write-ahead log segment files", registry=r)
        self.wal_backlog_records = Gauge(
            p + "wal_backlog_records", "Committed batches not yet entirely in durable Bronze Parquet", registry=r
        )
        self.wal_records_total = Counter(p + "wal_records_total", "Batches committed to the write-ahead log", registry=r)
        self.wal_appended_bytes_total = Counter(
            p + "wal_appended_bytes_total", "Bytes appended to the write-ahead log", registry=r
        )
        self.wal_fsync_seconds = Histogram(
            p + "wal_fsync_seconds",
            "Duration of each write-ahead log fsync (one per group commit; its count is the number of fsyncs)",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.wal_refused_total = Counter(
            p + "wal_refused_total", "Batches refused (UNAVAILABLE) because the log held its --wal-max-bytes", registry=r
        )
        self.wal_replayed_records_total = Counter(
            p + "wal_replayed_records_total",
            "Records read back from the log for Bronze (after a restart, or when the feed fell behind)",
            registry=r,
        )
        self.wal_truncated_bytes_total = Counter(
            p + "wal_truncated_bytes_total", "Bytes cut from the log's tail at start (torn or corrupt records)", registry=r
        )
        self.wal_corrupt_records_total = Counter(
            p + "wal_corrupt_records_total", "Corrupt records found in the log at start", registry=r
        )
        self.dedup_keys = Gauge(p + "dedup_keys", "Keys held by the order dedup window", registry=r)
        self.batch_id_window = Gauge(p + "batch_id_window_size", "batch_ids held by the idempotency window", registry=r)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint in a daemon thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
