"""Retrying, in one place: exponential backoff with jitter, and the loop that
retries an operation while its error is retriable.

    backoff = Backoff(0.2, 10.0)
    await retry(lambda: store.publish(path, key), what="publishing orders/...", backoff=backoff)

Errors are classified once, where they happen (server/errors.py: an
`IngestError` is retriable or not); this module only decides when to try again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TypeVar

from keystone_ingest.server.errors import IngestError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff:
    """Exponential backoff with jitter: the n-th delay is drawn from the upper
    half of min(max_s, initial_s * 2**n)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempts = 0

    @property
    def ceiling_s(self) -> float:
        return min(self.max_s, self.initial_s * 2 ** min(self.attempts, 30))

    def next_delay_s(self) -> float:
        ceiling = self.ceiling_s
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


async def retry(
    operation: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    on_failure: Callable[[IngestError], None] = lambda _: None,
) -> T:
    """Runs the blocking `operation` in a thread until it succeeds. A retriable
    IngestError is retried after the backoff's next delay (for as long as it
    takes: the caller bounds it by cancelling); a permanent one is raised.
    `on_failure` sees every failed attempt (metrics, health)."""
    while True:
        try:
            result = await asyncio.to_thread(operation)
        except IngestError as exc:
            on_failure(exc)
            if not exc.retriable:
                raise
            delay = backoff.next_delay_s()
            log.warning(
                "retrying",
                extra={"what": what, "error": exc.message, "attempt": backoff.attempts, "delay_s": round(delay, 2)},
            )
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        return result
