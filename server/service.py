"""The gRPC face of the pipeline: `keystone.ingest.v1.OrderIngest`.

Batches arrive as raw bytes (the handlers have no request deserializer) and go
to `Pipeline.ingest` untouched; no Python protobuf object is made of a batch.

StreamOrders reads batches while earlier ones are still in the pipeline, up to
`max_in_flight_per_stream` batches and `max_stream_bytes_in_flight` bytes per
stream and `max_bytes_in_flight` bytes for the whole server, and answers them
in arrival order. When a limit is reached it stops reading, and HTTP/2 flow
control slows the sender: memory is bounded by configuration, not by load.
An error that means "resend" ends the stream with its status; batches already
in the pipeline still finish, so a resend of them is answered from the batch_id
window instead of being processed twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.errors import IngestError, ShuttingDown, to_rpc_status
from keystone_ingest.server.limits import ByteBudget, MemoryLimiter
from keystone_ingest.server.metrics import Metrics
from keystone_ingest.server.pipeline import Pipeline
from keystone_ingest.server.security.gate import Gate

log = logging.getLogger(__name__)

SERVICE_NAME = "keystone.ingest.v1.OrderIngest"


class IngestService:
    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        max_in_flight_per_stream: int = 8,
        max_bytes_in_flight: int = 64 << 20,
        max_stream_bytes_in_flight: int = 64 << 20,
        gate: Gate | None = None,
        memory: MemoryLimiter | None = None,
    ) -> None:
        self.pipeline = pipeline
        # The process-wide backstop behind the byte budgets (server/limits.py).
        self.memory = memory
        # Authentication, permissions and per-caller quotas (server/security/gate.py); None: none.
        self.gate = gate
        self.metrics = metrics
        self.max_in_flight_per_stream = max_in_flight_per_stream
        self.max_stream_bytes_in_flight = max_stream_bytes_in_flight
        # Bytes of requests not yet answered, across all calls of this server.
        self.bytes_in_flight = ByteBudget(max_bytes_in_flight)
        self._draining = False
        self._readers: set[asyncio.Task] = set()
        # Every batch still in the pipeline, whoever is waiting for it: shutdown
        # waits for these so nothing received is abandoned half-published.
        self._batches: set[asyncio.Task] = set()

    def handler(self) -> grpc.GenericRpcHandler:
        serialize = ingest_pb2.BatchAck.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "StreamOrders": grpc.stream_stream_rpc_method_handler(
                    self.stream_orders, request_deserializer=None, response_serializer=serialize
                ),
                "IngestOrders": grpc.unary_unary_rpc_method_handler(
                    self.ingest_orders, request_deserializer=None, response_serializer=serialize
                ),
            },
        )

    async def ingest_orders(self, raw: bytes, context: grpc.aio.ServicerContext) -> ingest_pb2.BatchAck:
        if self._draining:
            await _abort(context, ShuttingDown("the server is shutting down; resend the batch to another replica"))
        producer, caller = await self._admit(context)
        await self._wait_for_memory(len(raw))
        await self._take(self.bytes_in_flight, len(raw))
        try:
            return await self._submit(raw, producer, caller)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            self.bytes_in_flight.release(len(raw))

    async def stream_orders(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.BatchAck]:
        if self._draining:
            await _abort(context, ShuttingDown("the server is shutting down; reconnect and resend"))
        producer, caller = await self._admit(context)
        if self.gate is not None:
            try:
                self.gate.quotas.open_stream(caller)
            except IngestError as exc:
                await _abort(context, exc)
        slots = asyncio.Semaphore(self.max_in_flight_per_stream)
        stream_bytes = ByteBudget(self.max_stream_bytes_in_flight)
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()

        def give_back(n: int, _answer: asyncio.Future) -> None:
            stream_bytes.release(n)
            self.bytes_in_flight.release(n)

        async def read() -> None:
            try:
                async for raw in requests:
                    # Any limit reached: stop reading, and HTTP/2 flow control slows the sender.
                    await slots.acquire()
                    await self._wait_for_memory(len(raw))
                    await self._take(stream_bytes, len(raw))
                    try:
                        await self._take(self.bytes_in_flight, len(raw))
                    except asyncio.CancelledError:
                        stream_bytes.release(len(raw))
                        raise
                    answer = asyncio.ensure_future(self._submit(raw, producer, caller))
                    answer.add_done_callback(functools.partial(give_back, len(raw)))
                    # Once the call is aborted the answers behind the failed one
                    # are never awaited; their outcome (the client resends them)
                    # is not an "exception never retrieved".
                    answer.add_done_callback(_consume_outcome)
                    answers.put_nowait(answer)
            finally:
                answers.put_nowait(None)  # end of requests, or drained, or the call is gone

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        self.metrics.streams_open.inc()
        try:
            while (answer := await answers.get()) is not None:
                try:
                    ack = await asyncio.shield(answer)
                except Exception as exc:
                    await _abort(context, exc)
                slots.release()
                yield ack
            if self._draining:
                await _abort(context, ShuttingDown("the server is shutting down; reconnect and resend unacked batches"))
        finally:
            reader.cancel()
            self._readers.discard(reader)
            self.metrics.streams_open.dec()
            if self.gate is not None:
                self.gate.quotas.close_stream(caller)

    async def _wait_for_memory(self, n: int) -> None:
        if self.memory is not None:
            await self.memory.admit(n, lambda: self.bytes_in_flight.used_bytes)

    async def _take(self, budget: ByteBudget, n: int) -> None:
        if await budget.acquire(n):
            self.metrics.backpressure_waits_total.inc()

    async def _admit(self, context: grpc.aio.ServicerContext) -> tuple[str | None, str]:
        """(authenticated caller or None, quota key); aborts the call with
        UNAUTHENTICATED or PERMISSION_DENIED."""
        if self.gate is None:
            return None, ""
        try:
            return self.gate.admit(context)
        except IngestError as exc:
            await _abort(context, exc)

    async def _submit(self, raw: bytes, producer: str | None = None, caller: str = "") -> ingest_pb2.BatchAck:
        if self.gate is not None:
            self.gate.quotas.take_batch(caller)  # over the caller's rate: Overloaded, with RetryInfo
        task = asyncio.ensure_future(self.pipeline.ingest(raw, producer))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        # Shielded: a caller that goes away must not cancel a half-published batch.
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Stops reading new batches on every stream and waits for the batches
        already received to finish; their acks are still sent."""
        self._draining = True
        for reader in list(self._readers):
            reader.cancel()
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)


def _consume_outcome(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    status = to_rpc_status(exc)  # with RetryInfo when the error says when to retry
    if status.code == grpc.StatusCode.INTERNAL:
        log.error("batch failed", exc_info=exc)
    else:
        log.warning(
            "batch not acked",
            extra={
                "code": status.code.name,
                "detail": status.details,
                "retry_after_s": getattr(exc, "retry_after_s", None),
            },
        )
    await context.abort(status.code, status.details, status.trailing_metadata)
    # context.abort() always raises; grpc ships no types that would tell mypy so.
    raise AssertionError("context.abort() returned")
