"""Kafka sink: one record per accepted order, rejected orders to the dead-letter topic.

    sink = KafkaSink(KafkaConfig(bootstrap="broker:9092"), metrics=metrics)
    await sink.start()
    await sink.publish(batch)   # returns once every record of the batch is acked (acks=all)
    await sink.stop()           # flushes, then closes the producer

Records. Each accepted order becomes one record on `topic`: key = order_id
(UTF-8), value = the order's `Order` bytes exactly as the client sent them (a
slice of the request), headers `event_id`, `batch_id`, `source`,
`content-type: application/x-protobuf; messageType=keystone.ingest.v1.Order`
and, with authentication, `producer` (the authenticated caller), timestamp =
when the server received the batch. Each rejected order becomes one record on
`dlq_topic`: no key, value = the rejected `Order`'s bytes, the same headers
plus `error.reason`, `error.index` (its position in the batch, as decimal
text) and `error.message` (the rejection's message).

Partitioning. An order goes to partition ``key_hash % partitions``, where
`key_hash` is the native core's ``murmur2(order_id) & 0x7fffffff``: the
partition the Java client's default partitioner picks for that key, so Java
consumers and Kafka Streams joins keyed by order_id line up. The partition count
is read once at start; adding partitions to a live topic moves keys only after
a restart (as with any Kafka producer, order per key holds only within a count).

Ordering guarantee. Records of one order_id land on one partition in the order
the server accepted them, also across batches published concurrently by many
streams: `publish()` appends all of a batch's records to per-partition *lanes*
without awaiting in between, so if publish(A) is called before publish(B), each
of A's records on a partition precedes each of B's. A lane hands its record
batches (*segments*) to aiokafka one at a time, oldest first; aiokafka keeps at
most one request in flight per partition and retries a failed record batch
before anything queued behind it, and the idempotent producer (sequence numbers
per partition) keeps the broker from appending a retried batch twice or out of
order. The one exception is a failed publish: when `publish()` raises, records
of it already handed to a producer may still be delivered; the client resends
the batch (same batch_id), so those orders may then appear twice, after
records of later batches, with the same event_id for consumers to drop the copy.

Batching. A lane fills one record batch (up to `max_batch_bytes` before
compression) with the records of every publish that arrives while the lane's
previous record batch is waiting for aiokafka to take it, so under load record
batches grow by themselves (no linger needed); `linger_ms` adds a fixed wait on
top when set. The record batches are the native core's (RecordBatchBuilder):
publish() makes one call per partition, which encodes the partition's records
straight from the request bytes; a record batch is compressed when its turn
comes, in a worker thread, and aiokafka stamps its producer id, epoch and
sequence numbers when it first sends it.

Outages. aiokafka reconnects on its own: every `retry_backoff_ms` it re-sends
a failed record batch, opening a new connection (and refreshing metadata) when
the old one is gone, so it never gives up on a record batch and publishing
resumes within about that pause once a leader is reachable again. The sink adds
what aiokafka lacks:
  - a probe that asks for metadata when no delivery proved the cluster
    reachable lately (exponential backoff with jitter while it is not), which
    is what `available` and `unavailable_since` (health) follow;
  - a send deadline: `publish()` raises SinkUnavailable after
    `send_timeout_s`, with `retry_after_s` for the client (RetryInfo). Its
    segments still in a lane, not yet handed to a producer, are withdrawn
    when no other waiting publish shares them, so a long outage does not pile
    up records nobody waits for, and only what a producer already holds (at
    most three record batches per partition: one being sent, one queued in
    aiokafka, one being handed over) can still reach Kafka after the failure;
  - producer replacement. aiokafka assigns a record batch its sequence
    numbers when it first sends it and never takes them back: once a record
    batch it holds fails (a permanent error such as a record too large, a
    partition leaderless past request_timeout_ms, its sender task dying, the
    broker refusing the producer's id or sequence: OutOfOrderSequenceNumber,
    UnknownProducerId, fenced), a real broker refuses every later record batch
    of that producer on that partition. So does a producer whose oldest record
    batch has waited `replace_after_s` for its ack (stuck, e.g. on brokers
    that moved). The sink then replaces it: nothing new is handed to the old
    producer; what it holds gets `replace_drain_s` (2 s) to finish; what is
    still unacked then fails with ProducerReplaced (retriable: the client
    resends it, and a broker that had appended some of it now holds those
    records twice, since a new producer id cannot be deduplicated against
    the old one); the old producer is closed; a new one (new producer id) is
    started, retried with backoff until the cluster answers; the lanes then
    hand it everything they queued meanwhile, which no producer ever saw, so
    nothing is lost and nothing of that is duplicated.

Errors. Failures come out as `SinkUnavailable` (retriable: broker unreachable,
leader moving, send deadline passed, buffer full, producer replaced or refused
by the broker, which a new producer fixes) or `SinkFailed` (resending cannot
help: record too large, authorization), classified by the aiokafka error's
`retriable` attribute and its type, never by its message.

Ownership: `publish()` copies what it needs from the `Batch` into record
batches before its first await; the caller may drop the batch at any time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    ProducerClosed,
)
from keystone_ingest.proto.v1.ingest_pb2 import Order
from keystone_ingest.retry import Backoff, retry
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.errors import ProducerReplaced, ShuttingDown, SinkFailed, SinkUnavailable
from keystone_ingest.server.limits import ByteBudget, WhenFull
from keystone_ingest.server.sinks.kafka.config import (
    BATCH_HEADER_ROOM,
    CODEC_GROWTH,
    MIN_RETRY_AFTER_S,
    PRODUCER_STATES,
    RECORD_OVERHEAD,
    KafkaConfig,
)
from keystone_ingest.server.sinks.kafka.errors import PRODUCER_STATE_ERRORS, classify
from keystone_ingest.server.sinks.kafka.lanes import Lane, RecordLanes, Segment, compress_record_batch
from keystone_ingest.server.sinks.kafka.logs import AIOKAFKA_LOG_FILTER, AIOKAFKA_LOGGERS
from keystone_ingest.server.sinks.kafka.producer import (
    connect,
    create_topics,
    new_producer,
    read_message_limits,
    retire,
    why_unreachable,
)

log = logging.getLogger(__name__)


class KafkaSink:
    def __init__(self, config: KafkaConfig, metrics: Any | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0  # bumped with every producer installed
        self._ready = asyncio.Event()  # set while a producer takes record batches
        self._replacement: asyncio.Task | None = None
        self.replacements = 0
        # The encode stage: publish() appends to the lanes, their tasks hand segments to the producer.
        self._lanes = RecordLanes(
            config.topic, config.dlq_topic, config.compression, config.level, config.max_batch_bytes
        )
        self._buffer = ByteBudget(config.max_buffer_bytes)
        self._probe_task: asyncio.Task | None = None
        self._stopping = False
        self._last_ok = 0.0  # monotonic time of the last proof the cluster takes writes
        self._unavailable_since: float | None = None
        self._unavailable_counted_to = 0.0  # kafka_unavailable_seconds_total is counted up to here
        self._backoff = Backoff(config.reconnect_backoff_s, config.reconnect_backoff_max_s)
        # max.message.bytes of each topic (read at start; absent if the
        # cluster would not say), and the record batch size that fits them all.
        self._max_message_bytes: dict[str, int] = {}
        self._last_produce_error: tuple[float, str] | None = None  # (monotonic time, aiokafka error name)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, get a producer id and both topics' partition counts; raise
        SinkUnavailable if that does not succeed within start_timeout_s."""
        c = self.config
        if c.create_topics:
            await create_topics(c)
        self._max_message_bytes = await read_message_limits(c)
        self._fit_record_batches()
        for name in AIOKAFKA_LOGGERS:
            logging.getLogger(name).addFilter(AIOKAFKA_LOG_FILTER)  # idempotent
        producer = self._new_producer()
        try:
            async with asyncio.timeout(c.start_timeout_s):
                partitions = await connect(producer, c)
        except BaseException as exc:
            await retire(producer)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                raise
            detail = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            cause = await why_unreachable(c)
            if cause is not None:
                detail += f"; a connection to {c.bootstrap.split(',')[0]} says {type(cause).__name__}: {cause}"
            # Refused credentials or certificates stay refused; anything else may pass later.
            error = SinkFailed if getattr(cause, "retriable", True) is False else SinkUnavailable
            raise error(
                f"cannot reach Kafka at {c.bootstrap} (topics {c.topic}, {c.dlq_topic}) within "
                f"{c.start_timeout_s} s: {detail}",
                retry_after_s=5.0,
            ) from exc
        for topic, count in partitions.items():
            for lane in self._lanes.add_topic(topic, count):
                lane.task = asyncio.create_task(self._run_lane(lane), name=f"kafka-lane-{topic}-{lane.partition}")
                lane.task.add_done_callback(partial(self._lane_died, lane))
        self._install(producer)
        self._probe_task = asyncio.create_task(self._probe(), name="kafka-probe")
        self._probe_task.add_done_callback(self._probe_ended)
        log.info(
            "kafka producer started",
            extra={"bootstrap": c.bootstrap, "partitions": partitions, "compression": c.compression},
        )

    async def _start_replacement(self) -> AIOKafkaProducer:
        """One attempt at a connected producer whose topics still have the
        partitions the lanes were made for. Every failure is worth another
        attempt: the cluster may be restarting, or the topics being re-created."""
        producer = self._new_producer()
        try:
            async with asyncio.timeout(self.config.start_timeout_s):
                counts = await connect(producer, self.config)
            lanes = self._lanes.partitions
            if any(counts[t] < n for t, n in lanes.items()):
                raise SinkUnavailable(f"topics now have partitions {counts}, fewer than the {lanes} at start")
        except BaseException as exc:
            await retire(producer)
            if isinstance(exc, Exception) and not isinstance(exc, SinkUnavailable):
                raise SinkUnavailable(f"the Kafka producer did not start: {type(exc).__name__}: {exc}") from exc
            raise
        return producer

    def _new_producer(self) -> AIOKafkaProducer:
        retries = self.metrics.kafka_retries_total.labels(kind="produce") if self.metrics is not None else None

        def retried(error: str) -> None:
            # The last one is kept to say why a batch timed out.
            self._last_produce_error = (time.monotonic(), error)
            if retries is not None:
                retries.inc()

        return new_producer(self.config, self._lanes.batch_bytes, on_retry=retried)

    def _timeout_reason(self) -> str:
        """What the brokers last said while this send deadline ran, if anything."""
        if self._last_produce_error is None:
            return ""
        at, error = self._last_produce_error
        return f" (Kafka answered {error})" if time.monotonic() - at <= self.config.send_timeout_s else ""

    def _install(self, producer: AIOKafkaProducer) -> None:
        """Make `producer` the one the lanes hand record batches to."""
        self._producer = producer
        self._generation += 1
        self._ready.set()
        self._mark_ok()
        self._publish_state()

    def _fit_record_batches(self) -> None:
        """Caps record batches to fit the topics' max.message.bytes: a topic
        with a smaller limit than --max-batch-bytes gets smaller record
        batches, not a refusal of every large one."""
        if self._max_message_bytes:
            smallest = min(self._max_message_bytes.values())
            fits = int((smallest - BATCH_HEADER_ROOM) / CODEC_GROWTH)
            if fits < self.config.max_batch_bytes:
                self._lanes.batch_bytes = max(1, fits)
                log.info(
                    "record batches capped to fit the topics' max.message.bytes",
                    extra={"max_message_bytes": self._max_message_bytes, "batch_bytes": self._lanes.batch_bytes},
                )

    def _check_record_sizes(self, batch: Batch) -> None:
        """Refuse, before anything is published, a batch holding an order that
        no record batch of its topic can carry: the broker would refuse it
        after the rest of the batch went out, and no resend could succeed."""
        for topic, count, table in (
            (self.config.topic, batch.accepted, "spans"),
            (self.config.dlq_topic, batch.rejected, "rejects"),
        ):
            limit = self._max_message_bytes.get(topic)
            if limit is None or not count:
                continue
            lengths = getattr(batch, table).column("length").to_numpy()
            largest = int(lengths.argmax())
            if int(lengths[largest]) + RECORD_OVERHEAD + BATCH_HEADER_ROOM > limit:
                # Only now the order's event_id, parsed from its bytes: the check reads the lengths alone.
                offset = int(getattr(batch, table).column("offset")[largest].as_py())
                event_id = Order.FromString(batch.raw[offset : offset + int(lengths[largest])]).event_id
                raise SinkFailed(
                    f"order {event_id!r} of batch {batch.batch_id!r} is {int(lengths[largest])} bytes, "
                    f"too large for a Kafka record on topic {topic} (max.message.bytes {limit}); "
                    f"the batch was not published"
                )

    async def stop(self, timeout_s: float | None = None) -> None:
        """Wait (up to timeout_s, default send_timeout_s) for every record
        handed to the sink to be acked or failed, then close the producer.
        publish() raises ShuttingDown from now on."""
        if self._stopping:
            return
        self._stopping = True
        timeout_s = self.config.send_timeout_s if timeout_s is None else timeout_s
        unsettled = self._lanes.unsettled
        if unsettled:
            _, pending = await asyncio.wait({s.done for s in unsettled}, timeout=timeout_s)
            if pending:
                log.error(
                    "kafka records not acked at shutdown",
                    extra={
                        "record_batches": len(pending),
                        "records": sum(s.builder.record_count() for s in unsettled),
                    },
                )
        tasks = [lane.task for lane in self._lanes if lane.task]
        tasks += [t for t in (self._probe_task, self._replacement) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task that swallowed its cancel must not hang shutdown.
            _, running = await asyncio.wait(tasks, timeout=max(1.0, timeout_s))
            if running:
                log.error("kafka sink tasks did not stop", extra={"tasks": sorted(t.get_name() for t in running)})
        for segment in list(unsettled):
            self._settle(segment, ShuttingDown("the server stopped before Kafka acked these records"))
        if self._producer is not None:
            await retire(self._producer, max(1.0, timeout_s / 2))
        self._ready.clear()
        self._account_unavailable_time()
        log.info("kafka producer stopped")

    # -- health -------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True while the cluster takes writes: the last delivery or metadata
        probe succeeded, no send failed or timed out since, no record batch is
        overdue, and the producer is not being replaced."""
        return (
            self._producer is not None
            and not self._stopping
            and self._replacement is None
            and self._unavailable_since is None
        )

    @property
    def unavailable_since(self) -> float | None:
        """time.monotonic() of the first failure since the cluster last took writes, or None."""
        return self._unavailable_since

    @property
    def state(self) -> str:
        """One of PRODUCER_STATES: connected, unavailable, replacing."""
        if self._replacement is not None:
            return "replacing"
        return "unavailable" if self._unavailable_since is not None or self._stopping else "connected"

    @property
    def retry_after_s(self) -> float:
        """When a client should resend a batch that failed here: the sink's
        current reconnect backoff, between 0.5 s and reconnect_backoff_max_s."""
        return max(MIN_RETRY_AFTER_S, min(self._backoff.ceiling_s, self.config.reconnect_backoff_max_s))

    def stats(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "state": self.state,
            "producer_generation": self._generation,
            "replacements": self.replacements,
            "buffered_bytes": self._buffer.used_bytes,
            "unsettled_record_batches": len(self._lanes.unsettled),
            "partitions": self._lanes.partitions,
            "max_message_bytes": dict(self._max_message_bytes),
            "record_batch_bytes": self._lanes.batch_bytes,
        }

    def _mark_ok(self) -> None:
        self._last_ok = time.monotonic()
        if self._unavailable_since is None:
            return
        # One partition delivering does not end an outage of another.
        if self._replacement is not None or self._lanes.oldest_handed_age_s() > self.config.send_timeout_s:
            return
        self._account_unavailable_time()
        log.info("kafka reachable again", extra={"after_s": round(self._last_ok - self._unavailable_since, 3)})
        self._unavailable_since = None
        self._backoff.reset()
        self._publish_state()

    def _mark_failed(self, reason: str) -> None:
        if self._unavailable_since is None and not self._stopping:
            self._unavailable_since = self._unavailable_counted_to = time.monotonic()
            log.warning("kafka unavailable", extra={"reason": reason})
            self._publish_state()

    def _account_unavailable_time(self) -> None:
        if self._unavailable_since is None or self.metrics is None:
            return
        now = time.monotonic()
        self.metrics.kafka_unavailable_seconds_total.inc(max(0.0, now - self._unavailable_counted_to))
        self._unavailable_counted_to = now

    def _publish_state(self) -> None:
        if self.metrics is None:
            return
        current = self.state
        for state in PRODUCER_STATES:
            self.metrics.kafka_producer_state.labels(state=state).set(1 if state == current else 0)

    async def _probe(self) -> None:
        # Wakes every probe_interval_s, or after the next backoff delay while
        # Kafka is unavailable. Notices an outage (and its end) while nothing
        # is being published, marks a partition whose record batch is overdue,
        # and replaces a producer that is stuck.
        interval = self.config.probe_interval_s
        replace_after_s = self.config.replace_after_s
        assert replace_after_s is not None  # KafkaConfig.__post_init__ resolves the default
        while True:
            unavailable = self._unavailable_since is not None
            await asyncio.sleep(self._backoff.next_delay_s() if unavailable else interval)
            self._account_unavailable_time()
            if self._replacement is not None:
                continue  # the replacement retries on its own
            waited_s = self._lanes.oldest_handed_age_s()
            if waited_s > replace_after_s:
                self._replace("stalled", f"a record batch has waited {waited_s:.1f} s for its ack")
                continue
            if waited_s > self.config.send_timeout_s:
                self._mark_failed(f"a record batch has waited {waited_s:.1f} s for its ack")
            elif time.monotonic() - self._last_ok < interval and not unavailable:
                continue  # deliveries prove the cluster reachable
            if unavailable:
                self._count_retry("probe")
            try:
                assert self._producer is not None
                async with asyncio.timeout(max(5 * interval, 2.0)):
                    ok = await self._producer.client.force_metadata_update()
            except (TimeoutError, KafkaError, OSError):
                ok = False
            if ok:
                self._mark_ok()
            else:
                self._mark_failed("metadata request failed on every broker")

    def _probe_ended(self, task: asyncio.Task) -> None:
        # Only stop() ends the probe; anything else is a bug that would freeze
        # health and stall detection, so it starts again.
        if task.cancelled() or self._stopping:
            return
        log.error("kafka probe failed; restarting it", exc_info=task.exception())
        self._probe_task = asyncio.get_running_loop().create_task(self._probe(), name="kafka-probe")
        self._probe_task.add_done_callback(self._probe_ended)

    # -- producer replacement -------------------------------------------------------------

    def _replace(self, kind: str, reason: str) -> None:
        """Start replacing the producer (once; later calls while it runs do nothing)."""
        if self._stopping or self._replacement is not None or self._producer is None:
            return
        self._ready.clear()  # the lanes hand nothing more to the old producer
        self._replacement = asyncio.create_task(self._replace_producer(kind, reason), name="kafka-replace-producer")
        self._replacement.add_done_callback(self._replacement_ended)
        self._mark_failed(f"replacing the producer: {reason}")
        self._publish_state()

    async def _replace_producer(self, kind: str, reason: str) -> None:
        started = time.monotonic()
        old, old_generation = self._producer, self._generation
        assert old is not None
        log.warning("replacing kafka producer", extra={"kind": kind, "reason": reason, "generation": old_generation})
        if self.metrics is not None:
            self.metrics.kafka_producer_replacements_total.labels(reason=kind).inc()
        # 1. What the old producer holds may still be acked: give it a moment.
        held = self._lanes.handed(old_generation)
        if held:
            await asyncio.wait({s.done for s in held}, timeout=self.config.replace_drain_s)
        # 2. Nothing leaves the old producer any more. What it still holds
        #    fails retriably (the broker may have appended some of it); the
        #    client resends those batches.
        await retire(old, timeout_s=0.1)  # its requests had their replace_drain_s
        lost = self._lanes.handed(old_generation)
        for segment in lost:
            self._settle(
                segment,
                ProducerReplaced(
                    f"the Kafka producer was replaced ({reason}) before these records were acked; resend the batch",
                    retry_after_s=self.retry_after_s,
                ),
            )
        # 3. A new producer (a new producer id), retried for as long as Kafka is away.
        producer = await retry(
            self._start_replacement,
            what="starting a new Kafka producer",
            backoff=self._backoff,
            on_failure=lambda _: self._count_retry("producer_start"),
        )
        self.replacements += 1
        self._replacement = None
        self._install(producer)
        log.warning(
            "kafka producer replaced",
            extra={
                "kind": kind,
                "generation": self._generation,
                "seconds": round(time.monotonic() - started, 3),
                "record_batches_failed": len(lost),
                "records_failed": sum(s.builder.record_count() for s in lost),
            },
        )

    def _replacement_ended(self, task: asyncio.Task) -> None:
        if self._replacement is task:
            self._replacement = None
        if not task.cancelled() and task.exception() is not None:
            # A bug: without a producer nothing would ever be published again.
            log.error("kafka producer replacement failed", exc_info=task.exception())
            self._replace("bug", f"the previous replacement failed: {task.exception()!r}")

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, batch: Batch) -> None:
        """Return when every accepted order of `batch` is acked on `topic` and
        every rejected one on `dlq_topic`; raise SinkUnavailable or SinkFailed."""
        if self._stopping or not self._lanes:
            raise ShuttingDown("the Kafka sink is stopped" if self._stopping else "the Kafka sink is not started")
        if self._buffer.full or self._buffer.waiting:
            await self._room_in_buffer()
        self._check_record_sizes(batch)
        # Everything from here up to the first await is synchronous: that is
        # what keeps concurrent publishes in call order on every partition (a
        # publish that waited for room above goes in the order it was let in).
        segments = self._lanes.append(batch)
        if not segments:
            return
        for segment in segments:
            self._account(segment)
            segment.waiters += 1
        started = time.monotonic()
        try:
            _, pending = await asyncio.wait({s.done for s in segments}, timeout=self.config.send_timeout_s)
        except asyncio.CancelledError:
            self._give_up(segments)
            raise
        if self.metrics is not None:
            self.metrics.kafka_publish_seconds.observe(time.monotonic() - started)
        if pending:
            self._give_up(s for s in segments if not s.done.done())
            self._count_error("send_timeout")
            self._mark_failed("send deadline passed")
            raise SinkUnavailable(
                f"Kafka did not ack batch {batch.batch_id!r} within {self.config.send_timeout_s} s"
                f"{self._timeout_reason()}",
                retry_after_s=self.retry_after_s,
            )
        for segment in segments:
            exc = segment.done.exception()
            if exc is not None:
                self._count_error("producer_replaced" if isinstance(exc, ProducerReplaced) else type(exc).__name__)
                error = classify(exc)
                if error.retriable:  # a fresh error per publish, with the sink's current delay
                    raise type(error)(error.message, retry_after_s=self.retry_after_s) from exc
                raise error from exc

    async def _room_in_buffer(self) -> None:
        """The buffer is full: refuse, or wait for acks to make room (config.when_full)."""
        if self.config.when_full is WhenFull.BLOCK:
            try:
                async with asyncio.timeout(self.config.send_timeout_s):
                    await self._buffer.acquire(0)
                return
            except TimeoutError:
                pass
        self._count_error("buffer_full")
        raise SinkUnavailable(
            f"Kafka send buffer full ({self._buffer.used_bytes} bytes not yet acked)", retry_after_s=self.retry_after_s
        )

    def _give_up(self, segments) -> None:
        """A publish stops waiting for these segments. One that no publish
        waits for any more and that no producer has taken is withdrawn: none
        of its records ever reached Kafka, and the client resends them."""
        for segment in segments:
            segment.waiters -= 1
            if segment.waiters > 0 or segment.handed_at or segment.done.done():
                continue
            if not self._lanes.withdraw(segment):
                continue  # being handed over right now; its lane checks its waiters itself
            self._settle(segment, SinkUnavailable("withdrawn: every publish waiting for these records gave up"))

    def _account(self, segment: Segment) -> None:
        if segment.builder.closed() and segment.accounted:
            return  # its size is final and counted
        size = segment.builder.size()
        self._buffer.take(size - segment.accounted)
        segment.accounted = size

    async def _run_lane(self, lane: Lane) -> None:
        # Wakes when publish() put records in the lane. Hands its segments to
        # the producer oldest first. send_batch() returns only once aiokafka
        # took the partition's previous record batch for sending; meanwhile new
        # records collect in lane.open, which is what makes batches grow under load.
        linger_s = self.config.linger_ms / 1000
        while True:
            await lane.wakeup.wait()
            lane.wakeup.clear()
            while True:
                if linger_s and not lane.full and lane.open is not None:
                    wait_s = lane.open.created + linger_s - time.monotonic()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)
                segment = self._lanes.next_segment(lane)
                if segment is None:
                    break
                lane.sending = segment
                try:
                    await self._hand_over(lane, segment)
                finally:
                    lane.sending = None

    async def _hand_over(self, lane: Lane, segment: Segment) -> None:
        """Give `segment` to the current producer; across a replacement, to the next one."""
        if not segment.builder.closed():
            await asyncio.to_thread(compress_record_batch, segment.builder)
        self._account(segment)
        while True:
            if segment.waiters <= 0:
                # Every publish waiting for it gave up while it waited for its turn.
                self._settle(segment, SinkUnavailable("withdrawn: every publish waiting for these records gave up"))
                return
            if not self._ready.is_set():
                await self._ready.wait()
                continue
            producer, generation = self._producer, self._generation
            assert producer is not None
            try:
                delivered = await producer.send_batch(segment.builder, lane.topic, partition=lane.partition)
            except KafkaError as exc:
                # Refused before aiokafka took it: the builder is untouched and
                # may go to this producer again, or to the next one.
                self._count_retry("hand_over")
                if generation != self._generation or not self._ready.is_set():
                    continue  # replaced meanwhile
                if isinstance(exc, KafkaTimeoutError):
                    continue  # the partition's previous record batch is still not sent: wait on
                if isinstance(exc, ProducerClosed) or not getattr(exc, "retriable", False):
                    # aiokafka's sender died and the producer refuses everything
                    # now, or the record batch ahead of this one failed for good.
                    kind = "producer_state" if isinstance(exc, PRODUCER_STATE_ERRORS) else "refused"
                    self._replace(kind, f"the producer refused a record batch: {type(exc).__name__}: {exc}")
                    if self._ready.is_set():  # no replacement while stopping
                        self._settle(segment, exc)
                        return
                    continue
                self._mark_failed(f"{type(exc).__name__}: {exc}")  # e.g. no metadata for the topic
                await asyncio.sleep(self._backoff.next_delay_s())
                continue
            segment.handed_at = time.monotonic()
            segment.generation = generation
            lane.handed.append(segment)
            delivered.add_done_callback(partial(self._delivered, segment))
            return

    def _lane_died(self, lane: Lane, task: asyncio.Task) -> None:
        # A lane ends only when stop() cancels it, or by a bug; either way
        # nothing it holds may be left waiting forever.
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "kafka lane failed", exc_info=task.exception(), extra={"topic": lane.topic, "partition": lane.partition}
            )
        error = (
            ShuttingDown("the Kafka sink stopped")
            if task.cancelled()
            else SinkUnavailable(f"Kafka lane {lane.topic}[{lane.partition}] failed: {task.exception()!r}")
        )
        for segment in lane.segments():
            if not segment.handed_at:
                self._settle(segment, error)
        lane.open, lane.sending = None, None
        lane.full.clear()

    def _delivered(self, segment: Segment, fut: asyncio.Future) -> None:
        if segment.done.done():  # settled when its producer was replaced
            return
        exc = SinkUnavailable("the Kafka send was cancelled") if fut.cancelled() else fut.exception()
        if exc is None:
            self._settle(segment, None)
            self._mark_ok()
            return
        if isinstance(exc, ProducerClosed):  # closed under it (replaced or stopping)
            self._settle(
                segment,
                ProducerReplaced(
                    "the Kafka producer was closed before these records were acked; resend the batch",
                    retry_after_s=self.retry_after_s,
                ),
            )
            return
        self._settle(segment, exc)
        if segment.generation != self._generation or self._stopping:
            return
        # The producer gave this record batch sequence numbers that the broker
        # never took: its later record batches on the partition would be refused.
        kind = "producer_state" if isinstance(exc, PRODUCER_STATE_ERRORS) else "failed_batch"
        if classify(exc).retriable:
            self._mark_failed(f"{type(exc).__name__}: {exc}")
        self._replace(kind, f"a record batch failed: {type(exc).__name__}: {exc}")

    def _settle(self, segment: Segment, exc: BaseException | None) -> None:
        if segment.done.done():
            return
        self._lanes.unsettled.discard(segment)
        self._buffer.release(segment.accounted)
        segment.accounted = 0
        try:
            segment.lane.handed.remove(segment)
        except ValueError:
            pass
        if exc is None:
            m = self.metrics
            if m is not None:
                m.kafka_send_seconds.observe(time.monotonic() - segment.handed_at)
                m.kafka_records_total.labels(topic=segment.topic).inc(segment.builder.record_count())
            segment.done.set_result(None)
        else:
            segment.done.set_exception(exc)

    def _count_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.kafka_errors_total.labels(kind=kind).inc()

    def _count_retry(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.kafka_retries_total.labels(kind=kind).inc()
