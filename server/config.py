"""`keystone-ingest serve` settings: flags and environment -> one validated `ServeConfig`.

Each flag `--some-flag` may also be set as `KEYSTONE_SOME_FLAG`; a flag on the
command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Any

from keystone_ingest.client.cli import add_argument_with_env

MiB = 1 << 20


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass
class KafkaClientOptions:
    """How a Kafka client of ours (the server's producer, the Bronze worker's
    consumer) authenticates to the brokers: one set of flags for both."""

    kafka_security_protocol: str = field(
        default="PLAINTEXT",
        metadata={
            "help": "how the Kafka clients talk to the brokers",
            "choices": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        },
    )
    kafka_sasl_mechanism: str | None = field(
        default=None,
        metadata={
            "help": "SASL mechanism; AWS_MSK_IAM is OAUTHBEARER with tokens signed from the AWS credential chain",
            "choices": ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"),
        },
    )
    kafka_sasl_username: str | None = field(
        default=None, metadata={"metavar": "NAME", "help": "SASL PLAIN/SCRAM user name"}
    )
    kafka_sasl_password: str | None = field(
        default=None,
        repr=False,
        metadata={
            "metavar": "SECRET",
            "secret": True,
            "help": "SASL PLAIN/SCRAM password; prefer the environment variable (a flag shows in ps)",
        },
    )
    kafka_ssl_ca: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "CA certificates (PEM) for the brokers' certificates; unset: the system's",
        },
    )
    kafka_ssl_cert: str | None = field(
        default=None, metadata={"metavar": "PATH", "help": "client certificate (PEM) for Kafka mutual TLS"}
    )
    kafka_ssl_key: str | None = field(
        default=None, metadata={"metavar": "PATH", "help": "private key (PEM) of --kafka-ssl-cert"}
    )
    kafka_msk_region: str | None = field(
        default=None,
        metadata={
            "metavar": "REGION",
            "help": "AWS region of the MSK cluster for AWS_MSK_IAM; unset: AWS_REGION / the AWS config",
        },
    )


@dataclass
class LogOptions:
    """How a process of ours logs (server/logs.py)."""

    log_level: str = field(
        default="info", metadata={"help": "log level", "choices": ("debug", "info", "warning", "error")}
    )
    log_format: str = field(
        default="auto",
        metadata={
            "help": "log format: auto is text on a terminal and JSON lines otherwise",
            "choices": ("auto", "json", "text"),
        },
    )


@dataclass
class BronzeOptions:
    """Where and how Bronze is written: the Bronze worker's settings that
    `serve` passes on to the worker it runs."""

    bronze_uri: str = field(
        default="file://./data/bronze",
        metadata={
            "metavar": "URI",
            "help": (
                "where Bronze Parquet goes: file://PATH or s3://BUCKET/PREFIX; with serve, empty "
                "runs no Bronze worker (ingest only)"
            ),
        },
    )
    bronze_group: str = field(
        default="keystone-bronze",
        metadata={
            "metavar": "NAME",
            "help": "Kafka consumer group of the Bronze workers; they share the topics' partitions",
        },
    )
    s3_endpoint_url: str | None = field(
        default=None,
        metadata={"metavar": "URL", "help": "S3 endpoint override for S3-compatible stores (MinIO, moto, ...)"},
    )
    s3_sse_kms_key_id: str | None = field(
        default=None,
        metadata={
            "metavar": "KEY",
            "help": (
                "encrypt Bronze objects with SSE-KMS under this KMS key id or ARN; unset: the "
                "bucket's default encryption"
            ),
        },
    )
    spool_dir: str = field(
        default="./data/bronze-spool",
        metadata={"metavar": "PATH", "help": "local directory where Bronze files are built before their S3 upload"},
    )
    roll_age_s: float = field(
        default=60.0, metadata={"help": "publish Bronze files at least this often, seconds (how stale Bronze may be)"}
    )
    bronze_roll_bytes: int = field(
        default=128 * MiB,
        metadata={"help": "publish the Bronze files being written once one of them reaches this size, bytes"},
    )
    bronze_max_buffered_bytes: int = field(
        default=256 * MiB,
        metadata={
            "help": (
                "Arrow bytes a Bronze worker gathers in memory before it appends them to the files being written, bytes"
            )
        },
    )
    bronze_when_full: str = field(
        default="spill",
        metadata={
            "choices": ("spill", "flush"),
            "help": (
                "what a Bronze worker does when --bronze-max-buffered-bytes is reached: spill appends to the "
                "files being written (local disk; files stay large), flush publishes them now (smaller files)"
            ),
        },
    )
    bronze_max_open_files: int = field(
        default=4096,
        metadata={
            "help": (
                "Bronze files (tables x days) a worker writes at once; a backfill over more days publishes more often"
            )
        },
    )

    bronze_session_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "a Bronze worker that stops heartbeating this long loses its partitions to the others, seconds"
        },
    )

    def check_bronze_options(self) -> None:
        for name in ("s3_endpoint_url", "s3_sse_kms_key_id"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        for name in ("bronze_roll_bytes", "bronze_max_buffered_bytes", "bronze_max_open_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.bronze_when_full not in ("spill", "flush"):
            raise ValueError(f"--bronze-when-full must be spill or flush, got {self.bronze_when_full!r}")
        for name in ("roll_age_s", "bronze_session_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.bronze_uri and not self.bronze_uri.startswith(("file://", "s3://", "/", ".")):
            raise ValueError(f"--bronze-uri must be file://PATH, s3://BUCKET/PREFIX or a path, got {self.bronze_uri!r}")


@dataclass
class ServeConfig(LogOptions, KafkaClientOptions, BronzeOptions):
    # -- network
    listen: str = field(
        default="127.0.0.1:50051",
        metadata={"metavar": "HOST:PORT", "help": "gRPC address to listen on, HOST:PORT (port 0 picks one)"},
    )
    metrics_listen: str = field(
        default="127.0.0.1:9464",
        metadata={"metavar": "HOST:PORT", "help": "Prometheus /metrics address, HOST:PORT; empty to disable"},
    )
    max_message_bytes: int = field(
        default=64 * MiB, metadata={"help": "largest OrderBatch accepted, in bytes (larger: RESOURCE_EXHAUSTED)"}
    )
    max_in_flight_per_stream: int = field(
        default=8, metadata={"help": "batches one stream may have unanswered before the server stops reading it"}
    )
    max_stream_bytes_in_flight: int = field(
        default=64 * MiB, metadata={"help": "request bytes one stream may have unanswered before it is no longer read"}
    )
    max_bytes_in_flight: int | None = field(
        default=None,
        metadata={
            "derived": True,
            "help": (
                "request bytes all calls together may have unanswered (backpressure beyond); "
                "default: a sixteenth of --memory-limit-bytes"
            ),
        },
    )
    memory_limit_bytes: int = field(
        default=1 << 30,
        metadata={
            "help": (
                "resident memory the server stays under: the default budgets are shares of it, and "
                "new batches wait (backpressure) while resident memory nears it, bytes; 0 disables"
            )
        },
    )
    # -- Kafka
    kafka_bootstrap: str | None = field(
        default=None,
        metadata={
            "metavar": "HOST:PORT[,...]",
            "help": "Kafka bootstrap servers, HOST:PORT[,...]; unset: start an embedded broker (--dev-broker)",
        },
    )
    dev_broker: str = field(
        default="kafka",
        metadata={
            "help": (
                "without --kafka-bootstrap, the embedded broker: one Apache Kafka node (needs Java "
                "17+ and make kafka's jars), or librdkafka's in-memory mock for machines without Java"
            ),
            "choices": ("kafka", "mock"),
        },
    )
    dev_kafka_dir: str = field(
        default="./data/kafka",
        metadata={"metavar": "PATH", "help": "data directory of the embedded Apache Kafka node (kept across restarts)"},
    )
    kafka_libs: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "jars of the embedded Apache Kafka node (default: .cache/kafka/libs, where make kafka puts them)",
        },
    )
    topic: str = field(
        default="orders", metadata={"metavar": "NAME", "help": "topic for accepted orders (one record per order)"}
    )
    dlq_topic: str = field(
        default="orders.dlq", metadata={"metavar": "NAME", "help": "dead-letter topic for rejected orders"}
    )
    compression: str = field(
        default="zstd",
        metadata={
            "help": "codec of the Kafka record batches, applied by the native core",
            "choices": ("zstd", "lz4", "snappy", "gzip", "none"),
        },
    )
    compression_level: int | None = field(
        default=None,
        metadata={
            "help": (
                "the codec's level (zstd 1-19, gzip 0-9, lz4 0-12); default: 1 for zstd, the "
                "library's default for the others"
            )
        },
    )
    linger_ms: int = field(
        default=0,
        metadata={"help": "how long the producer waits to fill a record batch, ms (batches already merge under load)"},
    )
    max_batch_bytes: int = field(
        default=MiB // 2,
        metadata={
            "help": "largest Kafka record batch before compression, bytes (stay under the topic's max.message.bytes)"
        },
    )
    send_timeout_s: float = field(
        default=30.0,
        metadata={"help": "deadline for Kafka to ack a batch's records before the batch fails (retriable)"},
    )
    kafka_buffer_bytes: int = field(
        default=256 * MiB,
        metadata={"help": "record bytes handed to the Kafka producer and not yet acked, at most, bytes"},
    )
    kafka_when_full: str = field(
        default="refuse",
        metadata={
            "choices": ("refuse", "block"),
            "help": (
                "what a batch meets when --kafka-buffer-bytes is reached: refuse answers UNAVAILABLE with "
                "RetryInfo at once (the client backs off or tries another replica), block waits for acks to "
                "make room within --send-timeout-s"
            ),
        },
    )
    kafka_unavailable_threshold_s: float = field(
        default=5.0,
        metadata={"help": "health NOT_SERVING once Kafka has been unable to take writes for this long, seconds"},
    )
    create_topics: bool = field(
        default=False, metadata={"help": "create the topics at start if missing (needs CreateTopics permission)"}
    )
    topic_partitions: int = field(default=6, metadata={"help": "partitions of topics created by this server"})
    replication_factor: int = field(default=3, metadata={"help": "replication factor of topics created by this server"})
    bronze_metrics_listen: str = field(
        default="127.0.0.1:9465",
        metadata={
            "metavar": "HOST:PORT",
            "help": "Prometheus /metrics address of the Bronze worker serve runs; empty to disable",
        },
    )
    # -- dedup and idempotency
    dedup_window: int = field(default=1_000_000, metadata={"help": "event_ids remembered for order dedup"})
    dedup_max_age_s: float = field(default=3600.0, metadata={"help": "how long an event_id is remembered, seconds"})
    batch_id_window: int = field(default=200_000, metadata={"help": "batch_ids remembered for batch idempotency"})
    batch_id_max_age_s: float = field(default=86_400.0, metadata={"help": "how long a batch_id is remembered, seconds"})
    # -- process
    core_threads: int = field(
        default=0,
        metadata={"help": "threads running the native core (it releases the GIL); 0: one per CPU"},
    )
    shutdown_grace_s: float = field(
        default=30.0, metadata={"help": "on SIGTERM/SIGINT, time allowed to finish batches in flight, seconds"}
    )
    ready_file: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "once serving, write the bound ports and Kafka bootstrap to this file as JSON (for scripts)",
        },
    )
    # -- security (README "Security"): checked in server/security/gate.py
    insecure: bool = field(
        default=False, metadata={"help": "allow listening on a non-loopback address without TLS (logged as a warning)"}
    )
    tls_cert: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "server certificate chain, PEM; with --tls-key serves TLS; reloaded when the file changes",
        },
    )
    tls_key: str | None = field(default=None, metadata={"metavar": "PATH", "help": "private key of --tls-cert, PEM"})
    tls_client_ca: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": "CA certificates (PEM) that client certificates must chain to: mutual TLS",
        },
    )
    auth_tokens_file: str | None = field(
        default=None,
        metadata={
            "metavar": "PATH",
            "help": (
                "callers, their permissions and the SHA-256 of their bearer tokens; every call then "
                "needs 'authorization: Bearer TOKEN'; reloaded when the file changes"
            ),
        },
    )
    max_orders_per_batch: int = field(
        default=100_000, metadata={"help": "orders one OrderBatch may hold (more: the batch is rejected)"}
    )
    max_streams_per_connection: int = field(
        default=100, metadata={"help": "concurrent calls one HTTP/2 connection may open"}
    )
    max_streams_per_caller: int = field(
        default=256,
        metadata={
            "help": (
                "concurrent StreamOrders calls of one caller (its name, or its address without "
                "authentication); more: RESOURCE_EXHAUSTED"
            )
        },
    )
    caller_rate_batches_s: float = field(
        default=0.0,
        metadata={
            "metavar": "PER_S",
            "help": (
                "batches per second one caller may send, on average; more: RESOURCE_EXHAUSTED with "
                "RetryInfo; 0: no limit"
            ),
        },
    )
    caller_burst_batches: int = field(
        default=100, metadata={"help": "batches one caller may send at once above --caller-rate-batches-s"}
    )
    keepalive_time_s: float = field(
        default=60.0, metadata={"help": "ping a connection idle this long, seconds; one that does not answer is closed"}
    )
    keepalive_timeout_s: float = field(
        default=20.0, metadata={"help": "how long a keepalive ping may go unanswered, seconds"}
    )
    min_client_ping_interval_s: float = field(
        default=10.0,
        metadata={"help": "clients pinging more often than this are disconnected (GOAWAY too_many_pings), seconds"},
    )

    def __post_init__(self) -> None:
        # An empty value (KEYSTONE_KAFKA_BOOTSTRAP= in a compose file) means unset.
        self.check_bronze_options()
        for name in ("kafka_bootstrap", "ready_file", "kafka_libs"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        if self.memory_limit_bytes < 0:
            raise ValueError(
                f"--memory-limit-bytes must not be negative (0 disables it), got {self.memory_limit_bytes}"
            )
        # The memory plan: the budgets that hold batches' data default to
        # shares of the memory limit, so one number sizes them together.
        # Together they are a quarter of it, about half with what their bytes
        # really hold (the core's results, Arrow copies); the rest is the
        # process at rest (~95 MiB), the dedup window, and what no budget sees
        # (gRPC's transport buffers, allocator slack), which the limiter's
        # watch of RSS covers.
        if self.max_bytes_in_flight is None:
            self.max_bytes_in_flight = self.planned_bytes(16)
        if self.core_threads == 0:
            self.core_threads = os.cpu_count() or 1
        from keystone_ingest.server.security.gate import check_config

        check_config(self)
        from keystone_ingest.server.sinks.kafka import check_compression

        check_compression(self.compression, self.compression_level)
        _host_port(self.listen)
        for address in (self.metrics_listen, self.bronze_metrics_listen):
            if address:
                _host_port(address)
        positive = (
            "max_message_bytes",
            "max_in_flight_per_stream",
            "max_stream_bytes_in_flight",
            "max_bytes_in_flight",
            "max_batch_bytes",
            "kafka_buffer_bytes",
            "dedup_window",
            "batch_id_window",
            "core_threads",
            "topic_partitions",
            "replication_factor",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("send_timeout_s", "kafka_unavailable_threshold_s", "dedup_max_age_s", "batch_id_max_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.linger_ms < 0 or self.shutdown_grace_s < 0:
            raise ValueError("--linger-ms and --shutdown-grace-s must not be negative")

    def planned_bytes(self, share: int) -> int:
        """1/share of the memory limit (of 1 GiB when there is none), at least 1 MiB."""
        return max(MiB, (self.memory_limit_bytes or 1 << 30) // share)

    @property
    def listen_address(self) -> tuple[str, int]:
        return _host_port(self.listen)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return _host_port(self.metrics_listen) if self.metrics_listen else None


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type = ServeConfig) -> None:
    """One flag per field of `config_cls`, defaulting to its environment variable."""
    for f in fields(config_cls):
        kind = {"int": int, "float": float, "bool": bool}.get(str(f.type).split(" ")[0], str)
        options: dict[str, Any] = (
            {"action": "store_true"}
            if kind is bool
            else {
                "type": kind,
                "choices": f.metadata.get("choices"),
                "metavar": None if "choices" in f.metadata else f.metadata.get("metavar", _metavar(f.name, kind)),
            }
        )
        help_text = f.metadata.get("help", "")
        if f.default is None and not f.metadata.get("derived"):
            help_text += " (default: unset)"
        add_argument_with_env(
            parser,
            "--" + f.name.replace("_", "-"),
            help=help_text,
            default=f.default,
            secret=f.metadata.get("secret", False),
            **options,
        )


def _metavar(name: str, kind: type) -> str:
    if kind is float:
        return "SECONDS" if name.endswith("_s") else "X"
    if kind is int:
        return "BYTES" if name.endswith("_bytes") else "MS" if name.endswith("_ms") else "N"
    return "TEXT"


def config_from_args(args: argparse.Namespace, config_cls: type = ServeConfig) -> Any:
    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls)})
