"""Every failure on the data path is classified once, here, and mapped to a gRPC
status in exactly one function (`to_status`; `to_rpc_status` wraps its answer
with the details the status carries on the wire).

A stage raises an `IngestError` subclass; callers read its `retriable` attribute
to decide what to do, never its message. The gRPC layer calls `to_rpc_status`
and nothing else: a retriable error tells the client to resend the same batch
with the same batch_id (the batch_id window and the dedup window make that
safe), after `retry_after_s` when the error knows it (google.rpc.RetryInfo); a
permanent one tells it that resending will not help.

Per-order and per-batch validation failures are not errors in this sense: they
are answered in the `BatchAck` (`ACK_STATUS_REJECTED`, `RecordError`s), because
the stream stays usable and nothing needs resending.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class IngestError(Exception):
    """Base of every classified failure. Subclasses fix `retriable` and `status`."""

    retriable: bool = False
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class SinkUnavailable(IngestError):
    """A sink cannot take the batch now (broker unreachable, request timed out,
    S3 throttling); the same batch will succeed later."""

    retriable = True
    status = grpc.StatusCode.UNAVAILABLE


class SinkFailed(IngestError):
    """A sink refused the batch for a reason that resending will not change
    (record too large for the topic, access denied, bucket missing)."""

    retriable = False
    status = grpc.StatusCode.INTERNAL


class ProducerReplaced(SinkUnavailable):
    """The Kafka producer holding these records was replaced before they were
    acked; the broker may or may not have appended them. Resend the batch."""


class Unauthenticated(IngestError):
    """No bearer token, or one no caller holds."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(IngestError):
    """A known caller without the permission the call needs."""

    status = grpc.StatusCode.PERMISSION_DENIED


class ShuttingDown(IngestError):
    """The server is draining and takes no new batches; another replica (or this
    one after its restart) will."""

    retriable = True
    status = grpc.StatusCode.UNAVAILABLE


class Overloaded(IngestError):
    """A limit on batches or bytes in flight is reached; slow down and resend."""

    retriable = True
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from an exception to the status a client sees.

    Unclassified exceptions are bugs: they become INTERNAL with a message that
    does not leak internals beyond the exception type.
    """
    if isinstance(exc, IngestError):
        return exc.status, exc.message
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the batch was not acked"


def to_rpc_status(exc: BaseException) -> grpc.Status:
    """`to_status(exc)` as a `grpc.Status` to abort a call with. A retriable
    error that knows when to come back (`retry_after_s`) carries a
    `google.rpc.RetryInfo` in the `grpc-status-details-bin` trailer, which the
    client library (and any gRPC client that reads rich status) honours."""
    code, message = to_status(exc)
    status = status_pb2.Status(code=code.value[0], message=message)
    retry_after_s = getattr(exc, "retry_after_s", None)
    if getattr(exc, "retriable", False) and retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(0.0, retry_after_s) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)
