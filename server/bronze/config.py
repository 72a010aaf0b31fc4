"""`keystone-ingest bronze` settings (also what `serve` gives the Bronze worker it runs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from keystone_ingest.server.bronze.layout import CODECS
from keystone_ingest.server.config import BronzeOptions, KafkaClientOptions, LogOptions, _host_port


@dataclass
class BronzeWorkerConfig(LogOptions, KafkaClientOptions, BronzeOptions):
    kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata={"metavar": "HOST:PORT[,...]", "help": "Kafka bootstrap servers"}
    )
    topic: str = field(default="orders", metadata={"metavar": "NAME", "help": "topic of accepted orders"})
    dlq_topic: str = field(
        default="orders.dlq",
        metadata={"metavar": "NAME", "help": "dead-letter topic (rejected orders, written to _quarantine)"},
    )
    row_group_rows: int = field(default=131_072, metadata={"help": "rows per Parquet row group"})
    parquet_compression: str = field(
        default="zstd", metadata={"help": "Parquet codec", "choices": tuple(sorted(CODECS))}
    )
    dedup_records: int = field(
        default=500_000,
        metadata={"help": "records a partition's dedup window spans (a repeat further back than this is kept)"},
    )
    dedup_window_s: float = field(
        default=300.0, metadata={"help": "time a partition's dedup window spans, seconds of record timestamps"}
    )
    write_threads: int = field(default=4, metadata={"help": "threads encoding and uploading the files of a flush"})
    metrics_listen: str = field(
        default="",
        metadata={"metavar": "HOST:PORT", "help": "Prometheus /metrics address of the worker; empty to disable"},
    )
    shutdown_grace_s: float = field(
        default=30.0, metadata={"help": "how long a stop may take to write and commit what was consumed, seconds"}
    )
    ready_file: str | None = field(
        default=None,
        metadata={"metavar": "PATH", "help": "write {pid, metrics_port} here once the worker has joined its group"},
    )

    def __post_init__(self) -> None:
        self.check_bronze_options()
        if not self.bronze_uri:
            raise ValueError("--bronze-uri is required")
        if self.ready_file == "":
            self.ready_file = None
        if self.metrics_listen:
            _host_port(self.metrics_listen)
        for name in ("row_group_rows", "dedup_records", "write_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.dedup_window_s <= 0:
            raise ValueError(f"--dedup-window-s must be positive, got {self.dedup_window_s}")

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return _host_port(self.metrics_listen) if self.metrics_listen else None
