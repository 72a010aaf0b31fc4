"""Client library for `keystone.ingest.v1.OrderIngest`: one stream, acks matched in order, resends on failure.

    async with AsyncIngestClient("127.0.0.1:50051", max_in_flight=8) as client:
        ack = await client.ingest(batch)                   # send and wait
        future = await client.send(other_batch)            # pipelined: returns once queued
        ...
        await client.flush()                               # every sent batch acked (or failed)

    with IngestClient("127.0.0.1:50051") as client:        # the same API, blocking
        ack = client.ingest(batch)

How a batch travels. `send` waits for a free slot (at most `max_in_flight`
batches are unacked at once), gives the batch a `batch_id` if it has none,
serialises it once and queues it. A background task owns the one
bidirectional stream: a writer task writes queued batches, a reader task
takes the acks. The server answers each batch with exactly one `BatchAck`, in
the order the batches arrived, so the acks are matched first-in first-out; an
ack naming another batch_id is a protocol violation and fails loudly.

When the stream breaks with a retriable status (`RETRIABLE_CODES`: the
server restarting or draining, overload, a lost connection) or a batch waits
longer than `ack_timeout_s` for its ack, the client opens a new stream after
an exponential backoff with jitter (or after the delay the server asked for in
`google.rpc.RetryInfo`) and resends every unacked batch, in order, with the
same batch_id and the same bytes. The server's batch_id window answers a
batch it had already taken with `ACK_STATUS_DUPLICATE_BATCH` and the counts
of its first ack, so a resend never ingests twice (after a resend,
DUPLICATE_BATCH means "ingested by an earlier attempt"). A permanent status
fails the futures of the unacked batches with `IngestRpcError`. If no batch is
acked for `RetryPolicy.deadline_s` after a failure, the client gives up on the
unacked batches the same way.

Ownership: `send` sets `batch_id` (and `source`, when empty) on the
`OrderBatch` it is given, then serialises it; changing the message afterwards
does not change what is sent or resent.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import Message
from keystone_ingest.client.targets import channel_target
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.retry import Backoff

log = logging.getLogger(__name__)

SERVICE = "keystone.ingest.v1.OrderIngest"
STREAM_METHOD = f"/{SERVICE}/StreamOrders"
UNARY_METHOD = f"/{SERVICE}/IngestOrders"

# The server's default --max-message-bytes. A larger batch would break the
# stream with RESOURCE_EXHAUSTED on every resend, so it is refused up front;
# lower it to match a server configured lower.
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024
# How long close() waits for the server to end a half-closed, fully acked stream.
_CLOSE_GRACE_S = 5.0

Metadata = Sequence[tuple[str, str | bytes]]
MetadataSource = Metadata | Callable[[], Metadata] | None
BatchLike = ingest_pb2.OrderBatch | bytes | bytearray | memoryview

# -- errors ---------------------------------------------------------------------

# The one classification of gRPC statuses. Retriable: resending the same
# batch with the same batch_id later can succeed (the server is restarting,
# draining, overloaded or unreachable; CANCELLED here is the server or a proxy
# cancelling, as the client never cancels a call it still needs). Every other
# status is permanent: INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED,
# INTERNAL (the server's `SinkFailed`), UNIMPLEMENTED, UNKNOWN, ...
RETRIABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


def is_retriable(code: grpc.StatusCode) -> bool:
    return code in RETRIABLE_CODES


class IngestClientError(Exception):
    """Base of the client's errors."""


class IngestRpcError(IngestClientError):
    """A batch was not acked: the RPC failed permanently, or retriable failures
    lasted past the retry deadline (`gave_up` is then True).

    Attributes:
        code: the gRPC status of the last failure.
        details: the server's (or the transport's) description of it.
        retriable: `is_retriable(code)`; with `gave_up` True, the caller may
            still resend the same batch later with the same batch_id.
        gave_up: True when the retry deadline ran out.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, gave_up: bool = False) -> None:
        self.code = code
        self.details = details
        self.retriable = is_retriable(code)
        self.gave_up = gave_up
        prefix = "gave up retrying: " if gave_up else ""
        super().__init__(f"{prefix}{code.name}: {details}")


class AckMismatchError(IngestClientError):
    """The server acked another batch_id than the one expected next: the
    pairing of batches and acks on that stream can no longer be trusted."""


class ClientClosedError(IngestClientError):
    """The client was closed (or aborted) before the batch was acked."""


class BatchTooLarge(ValueError):
    """The serialised batch exceeds `max_batch_bytes`; split it."""


# -- retry policy -------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a deadline.

    The n-th consecutive retry waits a random time between half and all of
    `min(max_backoff_s, initial_backoff_s * multiplier**n)`; a `RetryInfo`
    delay sent by the server replaces it. The deadline counts from the first
    failure after the last successful ack: a server that keeps acking
    between failures is retried for as long as it makes progress.
    """

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    deadline_s: float = 60.0

    def backoff(self) -> Backoff:
        """The delays of one run of consecutive failures (keystone_ingest.retry)."""
        return Backoff(
            self.initial_backoff_s, self.max_backoff_s, multiplier=self.multiplier, deadline_s=self.deadline_s
        )


# -- google.rpc.Status / RetryInfo ----------------------------------------------------
#
# google.rpc's messages are not part of protobuf (they live in
# googleapis-common-protos). Only two fields are needed, so wire-compatible
# stand-ins are declared in a private descriptor pool: an embedded message is
# read as bytes and parsed with protobuf's own Any and Duration.


def _rpc_detail_classes() -> tuple[type[Message], type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(name="keystone_client_rpc.proto", package="keystone_client_rpc")
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    status.field.add(name="message", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    status.field.add(
        name="details",
        number=3,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    retry_info = file.message_type.add(name="RetryInfo")
    retry_info.field.add(name="retry_delay", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("keystone_client_rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("keystone_client_rpc.RetryInfo")),
    )


_RpcStatus, _RetryInfo = _rpc_detail_classes()
_RETRY_INFO_TYPE = "google.rpc.RetryInfo"


def retry_delay_from_trailers(trailing_metadata: Metadata | None) -> float | None:
    """The delay of a `google.rpc.RetryInfo` in `grpc-status-details-bin`, in seconds, or None."""
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            for detail in _RpcStatus.FromString(value).details:
                packed = any_pb2.Any.FromString(detail)
                if packed.type_url.rsplit("/", 1)[-1] == _RETRY_INFO_TYPE:
                    delay = duration_pb2.Duration.FromString(_RetryInfo.FromString(packed.value).retry_delay)
                    return max(0.0, delay.seconds + delay.nanos / 1e9)
        except Exception:  # a malformed detail must not turn a retriable failure into a crash
            log.warning("unreadable grpc-status-details-bin ignored", exc_info=True)
    return None


# -- batch ids and payloads ------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_batch_id() -> str:
    """A ULID: 26 characters, sortable by creation time (ms), 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def with_batch_id(payload: bytes, batch_id: str) -> bytes:
    """`payload` (a serialised OrderBatch) with its batch_id set to `batch_id`.

    Appends field 1 rather than re-serialising: protobuf parsers keep the last
    value of a non-repeated field, so this overrides any batch_id already in
    the bytes. Lets a caller reuse one serialisation under many ids.
    """
    encoded = batch_id.encode()
    length = len(encoded)
    header = bytearray(b"\x0a")
    while length >= 0x80:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return payload + bytes(header) + encoded


# -- the asyncio client ----------------------------------------------------------------------


@dataclass
class ClientStats:
    """Counters of one client, for summaries and logs."""

    batches_sent: int = 0  # batches given to `send`
    batches_acked: int = 0
    batches_failed: int = 0
    writes: int = 0  # stream writes, resends included
    resends: int = 0
    reconnects: int = 0  # streams reopened after a retriable failure


@dataclass(eq=False)
class _Outstanding:
    batch_id: str
    payload: bytes
    future: asyncio.Future[ingest_pb2.BatchAck]
    written_at: float = 0.0  # time.monotonic() of the latest write
    writes: int = 0


@dataclass
class _WriteState:
    in_write: bool = False
    failed: bool = False


async def _status_lost_in_write(broken: BaseException, writer: asyncio.Task, writes: _WriteState) -> BaseException:
    """Works around grpc/grpc#36066: when the server ends a stream while a write
    is under way, grpc.aio may replace the server's status with a local
    INTERNAL "Internal error from Core" from the failed write. That INTERNAL
    says nothing about the batches, so it is retried as a lost stream; a
    permanent server status shows up again on the next stream."""
    if not isinstance(broken, _StreamBroken) or broken.code != grpc.StatusCode.INTERNAL or broken.mismatch:
        return broken
    if writes.in_write:
        await asyncio.wait({writer}, timeout=1.0)  # the failing write ends with the call
    if not writes.failed:
        return broken
    return _StreamBroken(
        grpc.StatusCode.UNAVAILABLE,
        f"stream ended while writing; its status was lost ({broken.details})",
    )


@dataclass
class _StreamBroken(Exception):
    code: grpc.StatusCode
    details: str
    server_delay_s: float | None = None
    mismatch: bool = False


class AsyncIngestClient:
    """Streams batches to one server over one bidirectional stream (see the module docstring).

    Args:
        target: `host:port` (any gRPC target string), or several replicas:
            `host:port,host:port` or `dns:///name:port`, with failover
            (client/targets.py).
        max_in_flight: batches sent but not acked, at most; `send` waits beyond it.
        source: put in `OrderBatch.source` when a message sent has none.
        credentials: `grpc.ChannelCredentials` for TLS/mTLS; None means plaintext.
        metadata: call metadata (e.g. `[("authorization", "Bearer ...")]`), or a
            callable returning it, called for every new stream and unary call
            so that tokens can be refreshed.
        channel_options: extra gRPC channel arguments.
        retry: backoff and deadline for retriable failures.
        ack_timeout_s: a batch not acked this long after it was written counts
            as a broken stream (a stuck server or a dead connection); None
            waits forever. Also the timeout of a unary call.
        max_batch_bytes: larger serialised batches are refused by `send`.
    """

    def __init__(
        self,
        target: str,
        *,
        max_in_flight: int = 8,
        source: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        metadata: MetadataSource = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        retry: RetryPolicy = RetryPolicy(),
        ack_timeout_s: float | None = 60.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.target = target
        self.max_in_flight = max_in_flight
        self.source = source
        self.retry = retry
        self.ack_timeout_s = ack_timeout_s
        self.max_batch_bytes = max_batch_bytes
        self.stats = ClientStats()
        self._credentials = credentials
        self._metadata = metadata
        self._channel_options = list(channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._stream_rpc: grpc.aio.StreamStreamMultiCallable | None = None
        self._unary_rpc: grpc.aio.UnaryUnaryMultiCallable | None = None
        self._runner: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        # Not yet written on the current stream / written and waiting for their ack, in send order.
        self._queued: collections.deque[_Outstanding] = collections.deque()
        self._written: collections.deque[_Outstanding] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self._dead: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel and start the stream task (`send` does it when needed)."""
        if self._runner is not None:
            return
        if self._closed:
            raise ClientClosedError("client is closed")
        target, options = channel_target(self.target)
        options += self._channel_options  # the caller's win: gRPC takes the last of a repeated key
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        # No request serialiser: batches go out as the bytes `send` prepared.
        self._stream_rpc = self._channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )
        self._unary_rpc = self._channel.unary_unary(
            UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._wakeup = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name=f"keystone-ingest-stream:{self.target}")
        self._runner.add_done_callback(self._runner_ended)

    async def __aenter__(self) -> AsyncIngestClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        # Leaving on an exception does not wait for acks that may never come.
        await self.close(cancel_pending=exc_type is not None)

    async def flush(self) -> None:
        """Wait until every batch sent so far is acked or failed. Never raises for a batch."""
        futures = [item.future for item in (*self._written, *self._queued)]
        if futures:
            await asyncio.wait(futures)

    async def close(self, *, cancel_pending: bool = False) -> None:
        """Flush, end the stream and close the channel.

        With `cancel_pending`, unacked batches fail with `ClientClosedError` at once instead.
        """
        if self._closed:
            return
        if self._runner is not None:
            if cancel_pending:
                self._fail_outstanding(ClientClosedError("client closed before the batch was acked"))
            else:
                await self.flush()
            self._closing = True
            assert self._wakeup is not None  # start() made it with the runner
            self._wakeup.set()
            if not cancel_pending:
                # The writer half-closes the stream; the server then ends it.
                try:
                    async with asyncio.timeout(_CLOSE_GRACE_S):
                        await asyncio.shield(self._runner)
                except TimeoutError:
                    log.warning("server did not end the stream after close", extra={"target": self.target})
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    # -- sending -------------------------------------------------------------------

    async def send(self, batch: BatchLike, *, batch_id: str | None = None) -> asyncio.Future[ingest_pb2.BatchAck]:
        """Queue one batch; returns a future of its ack once it holds an in-flight slot.

        `batch` is an `OrderBatch` (given a new batch_id when it has none, or
        `batch_id` when passed) or its serialised bytes, which must then carry
        `batch_id` already (see `with_batch_id`). The future fails with
        `IngestRpcError`, `AckMismatchError` or `ClientClosedError`.
        """
        batch_id, payload = self._prepare(batch, batch_id)
        if self._runner is None:
            await self.start()
        slots, wakeup = self._slots, self._wakeup
        assert slots is not None and wakeup is not None  # start() made them
        self._check_usable()
        await slots.acquire()
        try:
            self._check_usable()  # the client may have died or closed while we waited
        except ClientClosedError:
            slots.release()
            raise
        future: asyncio.Future[ingest_pb2.BatchAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(self._release_slot)
        self._queued.append(_Outstanding(batch_id, payload, future))
        self.stats.batches_sent += 1
        wakeup.set()
        return future

    async def ingest(self, batch: BatchLike, *, batch_id: str | None = None) -> ingest_pb2.BatchAck:
        """Send one batch on the stream and wait for its ack."""
        return await (await self.send(batch, batch_id=batch_id))

    async def ingest_unary(
        self, batch: BatchLike, *, batch_id: str | None = None, timeout_s: float | None = None
    ) -> ingest_pb2.BatchAck:
        """Send one batch with the unary `IngestOrders` call, retrying like the stream does.

        Unary calls do not count against `max_in_flight`.
        """
        batch_id, payload = self._prepare(batch, batch_id)
        if self._runner is None:
            await self.start()
        unary_rpc = self._unary_rpc
        assert unary_rpc is not None  # start() made it
        self._check_usable()
        outage = self.retry.backoff()
        while True:
            try:
                ack = await unary_rpc(payload, timeout=timeout_s or self.ack_timeout_s, metadata=self._call_metadata())
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
                if not is_retriable(code):
                    raise IngestRpcError(code, details) from error
                if outage.expired:
                    raise IngestRpcError(code, details, gave_up=True) from error
                delay_s = outage.next_delay_s(retry_delay_from_trailers(error.trailing_metadata()))
                log.warning(
                    "unary ingest failed; retrying",
                    extra={"target": self.target, "batch_id": batch_id, "code": code.name, "delay_s": delay_s},
                )
                await asyncio.sleep(delay_s)
                continue
            if ack.batch_id and ack.batch_id != batch_id:
                raise AckMismatchError(f"sent batch {batch_id!r}, server acked {ack.batch_id!r}")
            return ack

    def _prepare(self, batch: BatchLike, batch_id: str | None) -> tuple[str, bytes]:
        if isinstance(batch, ingest_pb2.OrderBatch):
            if batch_id is not None and batch.batch_id and batch.batch_id != batch_id:
                raise ValueError(f"batch carries batch_id {batch.batch_id!r}, send was given {batch_id!r}")
            if batch_id:
                batch.batch_id = batch_id
            elif not batch.batch_id:
                batch.batch_id = new_batch_id()
            if not batch.source and self.source:
                batch.source = self.source
            batch_id, payload = batch.batch_id, batch.SerializeToString()
        elif isinstance(batch, (bytes, bytearray, memoryview)):
            if not batch_id:
                raise TypeError("a serialised batch needs its batch_id: send(payload, batch_id=...)")
            payload = bytes(batch)
        else:
            raise TypeError(f"expected an OrderBatch or bytes, got {type(batch).__name__}")
        if len(payload) > self.max_batch_bytes:
            raise BatchTooLarge(f"batch {batch_id!r} is {len(payload)} bytes, more than {self.max_batch_bytes}")
        return batch_id, payload

    def _check_usable(self) -> None:
        if self._dead is not None:
            raise ClientClosedError(f"client stopped after an internal error: {self._dead!r}") from self._dead
        if self._closing or self._closed:
            raise ClientClosedError("client is closing")

    def _release_slot(self, _future: asyncio.Future) -> None:
        assert self._slots is not None  # only futures made by send(), after start()
        self._slots.release()

    def _call_metadata(self) -> Metadata | None:
        metadata = self._metadata() if callable(self._metadata) else self._metadata
        return tuple(metadata) if metadata else None

    # -- the stream task ---------------------------------------------------------------

    async def _run(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None  # start() made it before this task
        outage = self.retry.backoff()
        while True:
            # Wakes when a batch is queued or close() is called: a stream is
            # opened when there is something to send, and kept open after.
            while not self._queued:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
            acked_before = self.stats.batches_acked
            try:
                await self._stream_once()
                continue
            except _StreamBroken as broken:
                broke = broken
            # Unacked batches go back to the front of the queue, in their order.
            self._queued.extendleft(reversed(self._written))
            self._written.clear()
            if self.stats.batches_acked > acked_before:
                outage.reset()
            if broke.mismatch:
                self._fail_outstanding(AckMismatchError(broke.details))
                log.error("ack does not match the batch sent", extra={"target": self.target, "details": broke.details})
                continue
            if not self._queued:
                # Nothing was unacked: no resend, no backoff; a new stream opens with the next batch.
                log.info("idle stream ended", extra={"target": self.target, "code": broke.code.name})
                continue
            if not is_retriable(broke.code):
                log.error(
                    "stream failed permanently; failing unacked batches",
                    extra={
                        "target": self.target,
                        "code": broke.code.name,
                        "details": broke.details,
                        "unacked": len(self._queued),
                    },
                )
                self._fail_outstanding(IngestRpcError(broke.code, broke.details))
                outage.reset()
                continue
            if outage.expired:
                log.error(
                    "retry deadline passed; failing unacked batches",
                    extra={
                        "target": self.target,
                        "code": broke.code.name,
                        "details": broke.details,
                        "unacked": len(self._queued),
                        "deadline_s": self.retry.deadline_s,
                    },
                )
                self._fail_outstanding(IngestRpcError(broke.code, broke.details, gave_up=True))
                outage.reset()
                continue
            delay_s = outage.next_delay_s(broke.server_delay_s)
            self.stats.reconnects += 1
            log.warning(
                "stream broken; reconnecting",
                extra={
                    "target": self.target,
                    "code": broke.code.name,
                    "details": broke.details,
                    "unacked": len(self._queued),
                    "delay_s": round(delay_s, 3),
                },
            )
            await asyncio.sleep(delay_s)

    async def _stream_once(self) -> None:
        """One stream, until the server ends it. Returns when it ended cleanly with
        nothing unacked (or close() finished it); raises `_StreamBroken` otherwise."""
        assert self._stream_rpc is not None  # start() made it before the stream task
        call = self._stream_rpc(metadata=self._call_metadata())
        writes = _WriteState()
        reader = asyncio.create_task(self._read_acks(call), name="keystone-ingest-acks")
        writer = asyncio.create_task(self._write_batches(call, writes), name="keystone-ingest-writes")
        pending = {reader, writer}
        try:
            while True:
                # Wakes when: the reader ends (the server ended the stream, cleanly
                # or with a status), the writer ends (half-closed on close(), or a
                # write failed: the reader then gets the status), or the oldest
                # unacked batch reaches its ack timeout.
                done, pending = await asyncio.wait(
                    pending, timeout=self._ack_wait_s(), return_when=asyncio.FIRST_COMPLETED
                )
                if reader in done:
                    read_error = reader.exception()
                    if read_error is not None:
                        raise await _status_lost_in_write(read_error, writer, writes)
                    return
                if writer in done:
                    write_error = writer.exception()
                    if write_error is not None and not isinstance(
                        write_error, (grpc.aio.AioRpcError, asyncio.InvalidStateError)
                    ):
                        raise write_error
                if not done and self._ack_overdue():
                    raise _StreamBroken(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no ack within {self.ack_timeout_s} s for batch {self._written[0].batch_id!r}",
                    )
        finally:
            call.cancel()
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    def _ack_wait_s(self) -> float | None:
        if self.ack_timeout_s is None:
            return None
        if not self._written:
            return self.ack_timeout_s
        return max(0.0, self._written[0].written_at + self.ack_timeout_s - time.monotonic())

    def _ack_overdue(self) -> bool:
        if self.ack_timeout_s is None or not self._written:
            return False
        return time.monotonic() - self._written[0].written_at >= self.ack_timeout_s

    async def _write_batches(self, call: grpc.aio.StreamStreamCall, writes: _WriteState) -> None:
        wakeup = self._wakeup
        assert wakeup is not None  # start() made it before the stream task
        while True:
            while not self._queued:
                if self._closing:
                    await call.done_writing()
                    return
                wakeup.clear()
                await wakeup.wait()
            item = self._queued.popleft()
            if item.future.done():  # cancelled by its caller: nobody waits for this ack
                continue
            item.written_at = time.monotonic()
            item.writes += 1
            if item.writes > 1:
                self.stats.resends += 1
            self.stats.writes += 1
            # In `_written` before the write, so an ack can never find it missing.
            self._written.append(item)
            writes.in_write = True
            try:
                await call.write(item.payload)
            except grpc.aio.AioRpcError:
                writes.failed = True
                raise
            finally:
                writes.in_write = False

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            try:
                ack = await call.read()
            except grpc.aio.AioRpcError as error:
                raise _StreamBroken(
                    error.code(), error.details() or "", retry_delay_from_trailers(error.trailing_metadata())
                ) from None
            if ack is grpc.aio.EOF:
                if self._written or (self._queued and not self._closing):
                    # The server ended the stream with OK while batches were
                    # unacked: it is draining. Resend them elsewhere (or later).
                    raise _StreamBroken(
                        grpc.StatusCode.UNAVAILABLE,
                        f"server ended the stream with {len(self._written)} batches unacked",
                    )
                return
            if not self._written:
                raise _StreamBroken(
                    grpc.StatusCode.INTERNAL, f"ack for batch {ack.batch_id!r} with no batch unacked", mismatch=True
                )
            item = self._written[0]
            if ack.batch_id and ack.batch_id != item.batch_id:
                raise _StreamBroken(
                    grpc.StatusCode.INTERNAL,
                    f"expected the ack of batch {item.batch_id!r}, server acked {ack.batch_id!r}",
                    mismatch=True,
                )
            self._written.popleft()
            self.stats.batches_acked += 1
            if not item.future.done():
                item.future.set_result(ack)

    def _fail_outstanding(self, error: BaseException) -> None:
        items = [*self._written, *self._queued]
        self._written.clear()
        self._queued.clear()
        for item in items:
            if not item.future.done():
                self.stats.batches_failed += 1
                item.future.set_exception(error)
                # Marks the exception as retrieved, so a caller that only reads
                # the summary is not warned about each failed future.
                item.future.exception()

    def _runner_ended(self, runner: asyncio.Task[None]) -> None:
        # The stream task must never die with batches waiting: whatever ended
        # it, their futures fail now instead of hanging.
        error = None if runner.cancelled() else runner.exception()
        if error is not None:
            self._dead = error
            log.error("client stream task died", exc_info=error, extra={"target": self.target})
        if self._written or self._queued:
            self._fail_outstanding(error or ClientClosedError("client closed before the batch was acked"))


# -- the blocking client ----------------------------------------------------------------------

T = TypeVar("T")


class IngestClient:
    """The blocking flavour of `AsyncIngestClient`, same arguments and methods.

    Runs an `AsyncIngestClient` on a private event loop in a daemon thread;
    `send` returns a `concurrent.futures.Future`. Thread-safe: several threads
    may send at once (they share the in-flight bound and the stream).
    """

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="keystone-ingest-client", daemon=True)
        self._thread.start()

        async def create() -> AsyncIngestClient:
            client = AsyncIngestClient(target, **options)
            await client.start()
            return client

        try:
            self._client = self._call(create())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def stats(self) -> ClientStats:
        return self._client.stats

    def send(self, batch: BatchLike, *, batch_id: str | None = None) -> concurrent.futures.Future[ingest_pb2.BatchAck]:
        """Queue one batch (blocking while `max_in_flight` batches are unacked); returns a future of its ack."""

        async def send() -> concurrent.futures.Future[ingest_pb2.BatchAck]:
            result: concurrent.futures.Future[ingest_pb2.BatchAck] = concurrent.futures.Future()
            result.set_running_or_notify_cancel()
            ack_future = await self._client.send(batch, batch_id=batch_id)
            ack_future.add_done_callback(lambda done: _copy_outcome(done, result))
            return result

        return self._call(send())

    def ingest(
        self, batch: BatchLike, *, batch_id: str | None = None, timeout_s: float | None = None
    ) -> ingest_pb2.BatchAck:
        """Send one batch on the stream and wait (at most `timeout_s`) for its ack."""
        return self.send(batch, batch_id=batch_id).result(timeout_s)

    def ingest_unary(
        self, batch: BatchLike, *, batch_id: str | None = None, timeout_s: float | None = None
    ) -> ingest_pb2.BatchAck:
        """As `AsyncIngestClient.ingest_unary`."""
        return self._call(self._client.ingest_unary(batch, batch_id=batch_id, timeout_s=timeout_s))

    def flush(self) -> None:
        """Wait until every batch sent so far is acked or failed."""
        self._call(self._client.flush())

    def close(self, *, cancel_pending: bool = False) -> None:
        """As `AsyncIngestClient.close`, then stops the private loop and its thread."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close(cancel_pending=cancel_pending))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel_pending=exc_type is not None)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("IngestClient methods cannot be called from its own callbacks; use the future")
        if self._loop.is_closed():
            coroutine.close()
            raise ClientClosedError("client is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


def _copy_outcome(source: asyncio.Future, target: concurrent.futures.Future) -> None:
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
