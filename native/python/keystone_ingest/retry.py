"""Retrying, in one place, for the server, the Bronze worker and the client.

    backoff = Backoff(0.2, 10.0, deadline_s=60.0)
    await retry(lambda: asyncio.to_thread(store.publish, path, key), what="publishing orders/...", backoff=backoff)

An error says itself whether trying again can help: its `retriable`
attribute (set once by its class: keystone_ingest.server.errors, aiokafka's
errors). This module only decides when to try again and when to stop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# A long outage logs its first failed attempt and then every this many at
# WARNING, the rest at DEBUG: one line a minute at a one-second ceiling.
LOG_EVERY_ATTEMPTS = 60


class Backoff:
    """Exponential backoff with jitter, optionally bounded by a deadline.

    The n-th consecutive delay is drawn from the upper half of
    `min(max_s, initial_s * multiplier**n)`, so callers that failed together
    do not return together. A delay the other side asked for (gRPC RetryInfo)
    replaces it, with a tenth of jitter on top. The deadline counts from the
    first failure since the last `reset()` (a success): something that keeps
    making progress between failures is retried for as long as it does.
    """

    def __init__(
        self, initial_s: float, max_s: float, *, multiplier: float = 2.0, deadline_s: float | None = None
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.deadline_s = deadline_s
        self.attempts = 0
        self._since: float | None = None

    @property
    def ceiling_s(self) -> float:
        """The longest the next delay may be."""
        return min(self.max_s, self.initial_s * self.multiplier ** min(self.attempts, 64))

    @property
    def remaining_s(self) -> float:
        """Time left before the deadline (infinite without one, or before a failure)."""
        if self.deadline_s is None or self._since is None:
            return math.inf
        return self._since + self.deadline_s - time.monotonic()

    @property
    def expired(self) -> bool:
        """The deadline has passed: give up instead of trying again."""
        return self.remaining_s <= 0

    def next_delay_s(self, asked_s: float | None = None) -> float:
        """Time to wait before the next attempt, never past the deadline."""
        if self._since is None:
            self._since = time.monotonic()
        if asked_s is not None:
            delay_s = asked_s * random.uniform(1.0, 1.1)
        else:
            ceiling = self.ceiling_s
            delay_s = random.uniform(ceiling / 2, ceiling)
        self.attempts += 1
        return max(0.0, min(delay_s, self.remaining_s))

    def reset(self) -> None:
        self.attempts = 0
        self._since = None


def is_retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    on_failure: Callable[[Exception], None] | None = None,
) -> T:
    """Awaits `operation()` until it succeeds. An error whose `retriable` is
    true is retried after the backoff's next delay, until the backoff's
    deadline (without one, until the caller cancels); then, or for any other
    error, the error is raised. `on_failure` sees every failed attempt
    (metrics, health)."""
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if on_failure is not None:
                on_failure(exc)
            if not is_retriable(exc) or backoff.expired:
                raise
            delay_s = backoff.next_delay_s()
            log.log(
                logging.WARNING if backoff.attempts % LOG_EVERY_ATTEMPTS == 1 else logging.DEBUG,
                "retrying",
                extra={
                    "what": what,
                    "error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
                    "attempt": backoff.attempts,
                    "delay_s": round(delay_s, 3),
                },
            )
            await asyncio.sleep(delay_s)
            continue
        backoff.reset()
        return result
