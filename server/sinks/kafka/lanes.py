"""Segments (one native record batch each) and lanes (one topic-partition's
segments in arrival order): what publish() fills and the lanes hand to a producer."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from keystone_ingest.core import RecordBatchBuilder


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
