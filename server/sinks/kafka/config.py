"""The Kafka sink's settings, the record batches' codecs and the records' constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keystone_ingest.server.limits import WhenFull

CONTENT_TYPE = b"application/x-protobuf; messageType=keystone.ingest.v1.Order"
COMPRESSIONS = ("zstd", "lz4", "snappy", "gzip", "none")
# Levels each codec's library takes (0: its default where it has levels).
LEVELS = {"zstd": (1, 19), "lz4": (0, 12), "gzip": (0, 9), "snappy": (0, 0), "none": (0, 0)}
MiB = 1024 * 1024

# The smallest delay a failed batch's RetryInfo asks for.
MIN_RETRY_AFTER_S = 0.5

# A record batch must fit the topic's max.message.bytes after compression.
# Batches are capped before compression (what the native builder measures,
# as Kafka's clients do), so the cap leaves room for the v2 batch header and for a codec
# that cannot shrink the records (zstd's worst case grows them by ~0.4%).
BATCH_HEADER_ROOM = 512
CODEC_GROWTH = 1.01
# Per record beyond key and value: headers (ids, source, content type, lineage)
# and the record's varints; used to tell an order too large for any batch.
RECORD_OVERHEAD = 512

PRODUCER_STATES = ("connected", "unavailable", "replacing")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str
    topic: str = "orders"
    dlq_topic: str = "orders.dlq"
    # The record batches' codec, applied by the native core. zstd at level 1:
    # on generated orders it compresses better than lz4 (the per-record
    # headers repeat) at a similar speed; higher levels cost more CPU per order
    # for a few percent.
    compression: str = "zstd"
    # The codec's level; None: 1 for zstd, the library's default for gzip and
    # lz4 (snappy and none have no levels).
    compression_level: int | None = None
    # 0: no fixed wait; lanes batch naturally while the previous batch is in flight.
    linger_ms: int = 0
    # Largest record batch before compression. Kept well under the brokers'
    # default message.max.bytes (1 MiB, checked after compression) so that even
    # incompressible orders fit.
    max_batch_bytes: int = MiB // 2
    # aiokafka's bound on connecting, on waiting for any response (then it
    # drops the connection and retries), and the broker's wait for acks=all.
    # 10 s rather than Java's 30 s: a silently dead broker (no RST) costs one
    # request timeout before aiokafka retries on the new leader, and that must
    # fit well inside send_timeout_s.
    request_timeout_ms: int = 10_000
    # aiokafka's pause before re-sending a failed record batch or asking for
    # metadata again. It is fixed (aiokafka has no exponential reconnect
    # backoff); a refused connection costs a SYN, so 100 ms is cheap and
    # bounds how soon publishing resumes once a broker is back.
    retry_backoff_ms: int = 100
    # The sink's own retries (metadata probes while Kafka is unreachable,
    # starting a replacement producer): exponential with jitter from the first
    # value up to the second, which also bounds the delay before a recovered
    # cluster is noticed by an idle sink.
    reconnect_backoff_s: float = 0.1
    reconnect_backoff_max_s: float = 1.0
    # Deadline for every record of one publish() to be acked; beyond it
    # publish() raises SinkUnavailable (the records may still be delivered).
    send_timeout_s: float = 30.0
    # A record batch handed to the producer and not acked for this long means
    # the producer is stuck: it is replaced (sink.py, "Outages"). None: the
    # larger of 60 s and twice send_timeout_s, so every publish waiting for
    # that record batch has already failed on its own deadline.
    replace_after_s: float | None = None
    # How long a producer being replaced may still finish the record batches
    # it holds before they fail with ProducerReplaced.
    replace_drain_s: float = 2.0
    # Deadline for start(): connect, producer id, both topics' metadata.
    start_timeout_s: float = 30.0
    # Bytes of records handed to the sink and not yet acked or failed, and what
    # publish() does beyond them: REFUSE fails the batch at once with
    # SinkUnavailable (the client backs off, or tries another replica); BLOCK
    # waits for room within send_timeout_s.
    max_buffer_bytes: int = 256 * MiB
    when_full: WhenFull = WhenFull.REFUSE
    client_id: str = "keystone-ingest"
    # Create the topics at start if missing (needs CreateTopics; the dev
    # broker lacks it and creates its topics itself).
    create_topics: bool = False
    partitions: int = 6
    replication: int = 3
    # How often an idle sink asks the cluster for metadata to keep `available` true.
    probe_interval_s: float = 1.0
    # TLS and SASL (sinks/kafka/security.KafkaSecurity); None: PLAINTEXT.
    security: Any = None

    def __post_init__(self) -> None:
        check_compression(self.compression, self.compression_level)
        if not self.bootstrap:
            raise ValueError("bootstrap must name at least one broker")
        if self.topic == self.dlq_topic:
            raise ValueError("topic and dlq_topic must differ")
        if self.replace_after_s is None:
            object.__setattr__(self, "replace_after_s", max(60.0, 2 * self.send_timeout_s))
        for name in (
            "max_batch_bytes",
            "request_timeout_ms",
            "retry_backoff_ms",
            "reconnect_backoff_s",
            "reconnect_backoff_max_s",
            "send_timeout_s",
            "replace_after_s",
            "replace_drain_s",
            "start_timeout_s",
            "max_buffer_bytes",
            "partitions",
            "replication",
            "probe_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.linger_ms < 0:
            raise ValueError("linger_ms must not be negative")
        if self.when_full not in (WhenFull.REFUSE, WhenFull.BLOCK):
            raise ValueError(f"the Kafka sink's buffer can refuse or block when full, not {self.when_full.value}")
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ValueError("reconnect_backoff_max_s must not be below reconnect_backoff_s")

    @property
    def level(self) -> int:
        """The level handed to the native codec (0: the library's default)."""
        if self.compression_level is not None:
            return self.compression_level
        return 1 if self.compression == "zstd" else 0


def check_compression(compression: str, level: int | None) -> None:
    """Refuse a codec the record batches cannot have, or a level it does not take."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"--compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    low, high = LEVELS[compression]
    if level is not None and not low <= level <= high:
        raise ValueError(f"--compression-level {level} is outside {compression}'s levels, {low} to {high}")
