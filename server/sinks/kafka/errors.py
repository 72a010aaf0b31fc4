"""The sink's one mapping from a producer failure to an `IngestError` (retriable or permanent)."""

from __future__ import annotations

from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from keystone_ingest.server.errors import IngestError, SinkFailed, SinkUnavailable

# The broker no longer accepts this producer's id or sequence numbers: every
# later record batch would fail the same way until a new producer (new id) is
# made, which the sink does; resending the batch then succeeds.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, ProducerFenced, InvalidProducerEpoch)


def classify(exc: BaseException) -> IngestError:
    """The sink's one mapping from a producer failure to an `IngestError`."""
    if isinstance(exc, IngestError):
        return exc
    text = f"Kafka: {type(exc).__name__}: {exc}".rstrip(": ")
    # KafkaTimeoutError (no room in the producer's queue in time) and
    # ProducerClosed (the producer is being replaced or stopped) carry no
    # `retriable` flag, yet a later attempt can succeed; so does a batch the
    # broker refused for the producer's id or sequence, once the sink has
    # replaced the producer.
    if isinstance(exc, (KafkaTimeoutError, ProducerClosed, TimeoutError, ConnectionError, *PRODUCER_STATE_ERRORS)):
        return SinkUnavailable(text, retry_after_s=1.0)
    if getattr(exc, "retriable", False):
        return SinkUnavailable(text, retry_after_s=1.0)
    return SinkFailed(text)
