"""One batch through the stages: batch_id window, native core, Kafka, ack.

    ack = await pipeline.ingest(raw_order_batch_bytes)

`ingest` returns the `BatchAck` once every accepted order of the batch is
acknowledged by Kafka (acks=all) and every rejected one is on the dead-letter
topic, or raises an `IngestError` (see errors.py) when it is not and the
client must resend. Kafka is the log: Bronze is written from it by the Bronze
workers (server/bronze/), so nothing local stands between a batch and its ack.

When a batch is not acked its effects on the windows are undone: the core
forgets the batch's orders (so the resend is not taken for duplicates of
itself) and the batch_id claim is released. The windows live in memory only;
a restarted server starts with empty ones (the Kafka contract is at least
once, one event_id per order event; Bronze drops repeats by event_id).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor
from typing import Protocol

from keystone_ingest.core import BatchResult, Core, InvalidBatch, batch_id_of
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.idempotency import AckCounts, BatchIdWindow
from keystone_ingest.server.metrics import Metrics

log = logging.getLogger(__name__)

MAX_ERRORS_PER_ACK = 100
"""The proto's promise: at most this many RecordErrors in one BatchAck."""


class Publisher(Protocol):
    async def publish(self, batch: Batch) -> None:
        """Returns when every record of the batch is acked by Kafka."""


class Pipeline:
    def __init__(
        self,
        core: Core,
        kafka: Publisher,
        batch_ids: BatchIdWindow,
        executor: Executor,
        metrics: Metrics,
    ) -> None:
        self.core = core
        self.kafka = kafka
        self.batch_ids = batch_ids
        self.executor = executor
        self.metrics = metrics
        # The last batch's place in line for the Kafka hand-off (see _Turn).
        self._last_turn: asyncio.Future[None] | None = None

    async def ingest(self, raw: bytes, producer: str | None = None) -> ingest_pb2.BatchAck:
        started = time.perf_counter()
        m = self.metrics
        m.batches_in_flight.inc()
        m.bytes_in_flight.inc(len(raw))
        try:
            ack = await self._ingest(raw, producer)
        except BaseException:
            m.batches_total.labels("error").inc()
            raise
        finally:
            m.batches_in_flight.dec()
            m.bytes_in_flight.dec(len(raw))
        m.batch_seconds.observe(time.perf_counter() - started)
        m.batches_total.labels(ingest_pb2.AckStatus.Name(ack.status).removeprefix("ACK_STATUS_").lower()).inc()
        return ack

    async def _ingest(self, raw: bytes, producer: str | None = None) -> ingest_pb2.BatchAck:
        batch_id = batch_id_of(raw)
        if batch_id is None:
            # No usable id: the core will reject the batch with the exact reason.
            return await self._process(raw)
        first = await self.batch_ids.claim(batch_id)  # no suspension for an id not in flight
        if first is not None:
            return _duplicate_batch_ack(batch_id, first)
        try:
            ack = await self._process(raw, batch_id, producer)
        except BaseException:
            self.batch_ids.release(batch_id)
            raise
        if ack.status == ingest_pb2.ACK_STATUS_ACCEPTED:
            self.batch_ids.complete(batch_id, AckCounts(ack.accepted, ack.duplicates, ack.rejected))
            self.metrics.batch_id_window.set(len(self.batch_ids))
        else:
            # A rejected batch may come back corrected under the same id.
            self.batch_ids.release(batch_id)
        return ack

    async def _process(
        self, raw: bytes, batch_id: str | None = None, producer: str | None = None
    ) -> ingest_pb2.BatchAck:
        # Before any await: batches take their turn in the order they arrived.
        turn = _Turn(self._last_turn)
        self._last_turn = turn.mine
        try:
            return await self._process_in_turn(raw, batch_id, producer, turn)
        finally:
            turn.close()

    async def _process_in_turn(
        self, raw: bytes, batch_id: str | None, producer: str | None, turn: _Turn
    ) -> ingest_pb2.BatchAck:
        loop = asyncio.get_running_loop()
        now_ms = time.time_ns() // 1_000_000  # the dedup keys' insert time
        # decode, validate, dedup, Arrow encode: native, GIL released.
        processing = loop.run_in_executor(self.executor, functools.partial(self.core.process, raw, now_ms=now_ms))
        try:
            result = await processing
        except InvalidBatch as exc:
            log.info("batch rejected", extra={"code": exc.code, "offset": exc.offset, "detail": exc.message})
            return _rejected_batch_ack(batch_id_of(raw) or "", exc)
        batch = Batch(raw, result, producer=producer)
        try:
            # The cores run batches side by side and finish in any order; Kafka
            # must get them in arrival order (one order_id's records in the
            # order they came). The hand-off itself is synchronous, so waiting
            # for the batch before us to have made it is enough.
            await turn.wait()
            turn.pass_on()
            await self.kafka.publish(batch)
        except BaseException:
            # Not acked: the client resends, and the resend must not be taken
            # for a duplicate of this attempt.
            self.core.forget(result)
            raise
        m = self.metrics
        m.orders_total.labels("accepted").inc(result.accepted)
        m.orders_total.labels("duplicate").inc(result.duplicates)
        m.orders_total.labels("rejected").inc(result.rejected)
        m.dedup_keys.set(self.core.dedup_size)
        return accepted_ack(result)


def accepted_ack(result: BatchResult) -> ingest_pb2.BatchAck:
    """The ack of a batch Kafka took: its counts and the first rejected orders."""
    return ingest_pb2.BatchAck(
        batch_id=result.batch_id,
        status=ingest_pb2.ACK_STATUS_ACCEPTED,
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=result.rejected,
        errors=[
            ingest_pb2.RecordError(index=e.index, event_id=e.event_id, reason=e.reason)
            for e in result.errors(MAX_ERRORS_PER_ACK)
        ],
    )


def _duplicate_batch_ack(batch_id: str, first: AckCounts) -> ingest_pb2.BatchAck:
    return ingest_pb2.BatchAck(
        batch_id=batch_id,
        status=ingest_pb2.ACK_STATUS_DUPLICATE_BATCH,
        accepted=first.accepted,
        duplicates=first.duplicates,
        rejected=first.rejected,
    )


def _rejected_batch_ack(batch_id: str, exc: InvalidBatch) -> ingest_pb2.BatchAck:
    # BatchAck has no message field; the decoder's code and message travel in
    # the one RecordError, e.g. "truncated: truncated varint at byte 17 in orders[0]".
    return ingest_pb2.BatchAck(
        batch_id=batch_id,
        status=ingest_pb2.ACK_STATUS_REJECTED,
        errors=[ingest_pb2.RecordError(index=0, reason=f"{exc.code}: {exc.message}")],
    )


class _Turn:
    """A batch's place in line for the Kafka hand-off.

    `mine` is done once this batch has handed its records to the Kafka sink,
    or will not (rejected, failed, cancelled): the next batch waits for it.
    `pass_on()` is called right before the hand-off, which runs without
    suspending (KafkaSink.publish appends every record before its first
    await), and schedules `mine` for the loop's next turn, so the next batch
    can only run after our records are in their partitions' lanes. A batch
    that leaves early never lets the next one overtake the one before it.
    """

    def __init__(self, previous: asyncio.Future[None] | None) -> None:
        self.previous = previous
        self.mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        if self.previous is not None and not self.previous.done():
            await asyncio.shield(self.previous)  # our cancellation must not cancel theirs

    def pass_on(self) -> None:
        asyncio.get_running_loop().call_soon(self._release)

    def close(self) -> None:
        if self.mine.done():
            return
        if self.previous is None or self.previous.done():
            self._release()
        else:
            self.previous.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        if not self.mine.done():
            self.mine.set_result(None)
