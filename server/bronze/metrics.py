"""Prometheus metrics of one Bronze worker (its own registry and port, like the server's)."""

from __future__ import annotations

from collections.abc import Callable

from keystone_ingest.server.metrics import serve_registry
from prometheus_client import CollectorRegistry, Counter, Gauge


class BronzeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "keystone_bronze_"
        self.lag_records = Gauge(
            p + "lag_records",
            "Records in the topic-partition not yet committed to Bronze (high watermark - Bronze's end)",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            p + "lag_seconds",
            (
                "How far Bronze is behind in time: now - timestamp of the last record committed to "
                "Bronze, while records wait"
            ),
            ["topic", "partition"],
            registry=r,
        )
        self.records_total = Counter(p + "records_total", "Records consumed", ["topic"], registry=r)
        self.duplicates_total = Counter(
            p + "duplicates_total",
            "Records dropped as repeats of an event already in the partition's dedup window",
            ["topic"],
            registry=r,
        )
        self.quarantined_total = Counter(
            p + "quarantined_total",
            "Records of the orders topic that could not be decoded or validated, written to _quarantine",
            registry=r,
        )
        self.flushes_total = Counter(p + "flushes_total", "Flushes committed", registry=r)
        self.files_total = Counter(p + "files_total", "Parquet files published", ["table"], registry=r)
        self.rows_total = Counter(p + "rows_total", "Rows in published Parquet files", ["table"], registry=r)
        self.bytes_total = Counter(p + "bytes_total", "Bytes of Parquet files written", ["table"], registry=r)
        self.publish_failures_total = Counter(
            p + "publish_failures_total",
            "Failed attempts to write, publish or commit (each retried with backoff)",
            registry=r,
        )
        self.fenced_flushes_total = Counter(
            p + "fenced_flushes_total",
            (
                "Flushes abandoned, files deleted, because their partitions had gone to another "
                "worker (a pause past the session timeout)"
            ),
            registry=r,
        )
        self.buffered_bytes = Gauge(p + "buffered_bytes", "Arrow bytes gathered for the next flush", registry=r)
        self.assigned_partitions = Gauge(p + "assigned_partitions", "Topic-partitions this worker owns", registry=r)
        self.deleted_files_total = Counter(
            p + "recovered_files_total",
            "Files of flushes cut short (a crash) deleted before their offsets were written again",
            registry=r,
        )
        self._close: Callable[[], None] | None = None

    def forget_partition(self, topic: str, partition: int) -> None:
        for gauge in (self.lag_records, self.lag_seconds):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass  # never reported

    def serve(self, host: str, port: int) -> int:
        port, self._close = serve_registry(self.registry, host, port)
        return port

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None
