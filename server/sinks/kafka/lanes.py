"""The encode stage of the Kafka sink: segments (one native record batch each),
lanes (one topic-partition's segments in arrival order), and `RecordLanes`,
which encodes a batch's records into the lanes. The sink (sink.py) hands the
lanes' segments to a producer and settles them."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from typing import Any

from aiokafka.partitioner import murmur2
from keystone_ingest.core import RecordBatchBuilder, partition_counts
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.sinks.kafka.config import CONTENT_TYPE


def compress_record_batch(builder: RecordBatchBuilder) -> None:
    # A worker thread's job: the core compresses with the GIL released. A
    # function of its own so that profiles can tell this work from the core's.
    builder.close()


def retrieve(fut: asyncio.Future) -> None:
    # A segment whose publishers all gave up waiting still settles; reading
    # its exception here keeps asyncio from logging it as never retrieved.
    if not fut.cancelled():
        fut.exception()


class Segment:
    """One record batch: filled by publish(), handed to a producer by its lane,
    settled (`done`) when the broker acked it or it failed or was withdrawn."""

    __slots__ = ("accounted", "builder", "created", "done", "generation", "handed_at", "lane", "waiters")

    def __init__(self, lane: Lane, builder: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.lane = lane
        self.builder = builder
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.add_done_callback(retrieve)
        self.created = time.monotonic()
        self.handed_at = 0.0  # when a producer took it (0: no producer has it)
        self.generation = 0  # which producer took it
        self.accounted = 0  # bytes counted against max_buffer_bytes
        self.waiters = 0  # publish() calls still waiting for it

    @property
    def topic(self) -> str:
        return self.lane.topic


class Lane:
    """The records bound for one topic-partition, in arrival order."""

    __slots__ = ("full", "handed", "open", "partition", "sending", "task", "topic", "wakeup")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.open: Segment | None = None  # takes appends
        self.full: collections.deque[Segment] = collections.deque()  # closed, waiting for their turn
        self.sending: Segment | None = None  # being handed to a producer
        self.handed: collections.deque[Segment] = collections.deque()  # held by a producer, not yet settled
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    def segments(self) -> list[Segment]:
        return [s for s in (*self.handed, self.sending, *self.full, self.open) if s is not None]


class RecordLanes:
    """A lane per partition of the orders topic and of the dead-letter topic.

    `append(batch)` encodes every record of a batch into the open record batch
    of its partition's lane without awaiting, so concurrent publishes keep
    their call order on every partition. `unsettled` holds every segment made
    and not yet settled; whoever settles one discards it there."""

    def __init__(self, topic: str, dlq_topic: str, compression: str, level: int, batch_bytes: int) -> None:
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.compression = compression
        self.level = level
        self.batch_bytes = batch_bytes  # before compression; the sink caps it to the topics' limits
        self.by_topic: dict[str, list[Lane]] = {}
        self.unsettled: set[Segment] = set()

    def add_topic(self, topic: str, partitions: int) -> list[Lane]:
        """The lanes of `topic`, one per partition (read once, at start)."""
        self.by_topic[topic] = [Lane(topic, p) for p in range(partitions)]
        return self.by_topic[topic]

    def __bool__(self) -> bool:
        return bool(self.by_topic)

    def __iter__(self) -> Iterator[Lane]:
        for lanes in self.by_topic.values():
            yield from lanes

    @property
    def partitions(self) -> dict[str, int]:
        return {topic: len(lanes) for topic, lanes in self.by_topic.items()}

    def append(self, batch: Batch) -> set[Segment]:
        """Encode the batch's accepted orders (to the orders topic) and its
        rejects (to the dead-letter topic); return the segments holding them."""
        segments: set[Segment] = set()
        headers = [
            ("batch_id", batch.batch_id.encode()),
            ("source", batch.source.encode()),
            ("content-type", CONTENT_TYPE),
        ]
        if batch.producer is not None:  # the authenticated caller (server/security/auth.py)
            headers.append(("producer", batch.producer.encode()))
        timestamp_ms = batch.received_ns // 1_000_000
        if batch.accepted:
            self._append_orders(batch, timestamp_ms, headers, segments)
        if batch.rejected:
            self._append_rejects(batch, timestamp_ms, headers, segments)
        return segments

    def next_segment(self, lane: Lane) -> Segment | None:
        """The lane's oldest segment not yet handed over, if it holds records."""
        if lane.full:
            return lane.full.popleft()
        segment = lane.open
        if segment is None or not segment.builder.record_count():
            return None
        lane.open = None
        return segment

    def withdraw(self, segment: Segment) -> bool:
        """Take a segment no producer has out of its lane; False when it is
        not there (being handed over right now, or already handed)."""
        lane = segment.lane
        if lane.open is segment:
            lane.open = None
        elif segment in lane.full:
            lane.full.remove(segment)
        else:
            return False
        return True

    def oldest_handed_age_s(self) -> float:
        """How long the oldest record batch a producer holds has waited for its ack."""
        now = time.monotonic()
        oldest = 0.0
        for lane in self:
            if lane.handed:
                oldest = max(oldest, now - lane.handed[0].handed_at)
        return oldest

    def handed(self, generation: int) -> list[Segment]:
        """The segments the producer of `generation` holds."""
        return [s for lane in self for s in lane.handed if s.generation == generation]

    def _append_orders(self, batch: Batch, timestamp_ms: int, headers: list, segments: set[Segment]) -> None:
        # One call into the core per partition: it encodes the partition's
        # records straight from the request bytes, in arrival order, and says
        # where it stopped when the record batch filled up.
        lanes = self.by_topic[self.topic]
        rows = batch.accepted
        for p, count in enumerate(partition_counts(batch.result, len(lanes))):
            if not count:
                continue
            lane = lanes[p]
            segment = self._open_segment(lane)
            start = 0
            while True:
                start = segment.builder.append_orders(
                    batch.result, batch.raw, p, len(lanes), start, timestamp_ms, headers
                )
                segments.add(segment)
                if start >= rows:
                    break
                segment = self._roll(lane)  # full: an empty record batch takes any record
            lane.wakeup.set()

    def _append_rejects(self, batch: Batch, timestamp_ms: int, headers: list, segments: set[Segment]) -> None:
        # All rejects of a batch go to one partition chosen by its batch_id:
        # they stay together and in batch order for whoever inspects them, a
        # resend of the batch lands where the first attempt did, and a
        # rejected order has no trustworthy key (its order_id may be what is wrong).
        lanes = self.by_topic[self.dlq_topic]
        lane = lanes[(murmur2(batch.batch_id.encode()) & 0x7FFFFFFF) % len(lanes)]
        segment = self._open_segment(lane)
        start = 0
        while True:
            start = segment.builder.append_rejects(batch.result, batch.raw, start, timestamp_ms, headers)
            segments.add(segment)
            if start >= batch.rejected:
                break
            segment = self._roll(lane)
        lane.wakeup.set()

    def _open_segment(self, lane: Lane) -> Segment:
        if lane.open is None:
            # A record batch belongs to no producer until one takes it
            # (aiokafka stamps the producer id and sequence numbers when it
            # first sends it), so a segment queued during a replacement goes
            # to the next one.
            builder = RecordBatchBuilder(self.compression, self.level, self.batch_bytes)
            lane.open = Segment(lane, builder, asyncio.get_running_loop())
            self.unsettled.add(lane.open)
        return lane.open

    def _roll(self, lane: Lane) -> Segment:
        """The open segment is full: queue it (it is compressed when its turn
        comes, off the event loop) and open the next."""
        assert lane.open is not None
        lane.full.append(lane.open)
        lane.open = None
        return self._open_segment(lane)
