"""Every failure on the data path is classified once, here, and mapped to a gRPC
status in exactly one function (`to_status`).

A stage raises an `IngestError` subclass; callers read its `retriable` attribute
to decide what to do, never its message. The gRPC layer calls `to_status` and
nothing else: a retriable error tells the client to resend the same batch with
the same batch_id (the batch_id window and the dedup window make that safe); a
permanent one tells it that resending will not help.

Per-order and per-batch validation failures are not errors in this sense: they
are answered in the `BatchAck` (`ACK_STATUS_REJECTED`, `RecordError`s), because
the stream stays usable and nothing needs resending.
"""

from __future__ import annotations

import grpc


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
