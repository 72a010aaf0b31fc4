"""Per-caller limits: a rate of batches and a number of open streams.

A caller is its authenticated name, or without authentication its address
(`ipv4:10.1.2.3`, the port dropped, so many connections from one host are one
caller). Both limits answer RESOURCE_EXHAUSTED (`Overloaded`); the rate limit's
answer carries a `google.rpc.RetryInfo` saying when the next batch will be
taken, which the client library honours before it resends.

The rate is a token bucket per caller: `burst` batches at once, refilled at
`rate_per_s`. Buckets of callers that stayed away long enough to be full again
are dropped when there are many, so addresses seen once do not accumulate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from keystone_ingest.server.errors import Overloaded

_MAX_IDLE_BUCKETS = 10_000


class CallerQuotas:
    def __init__(
        self,
        *,
        rate_per_s: float = 0.0,
        burst: int = 100,
        max_streams: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_streams = max_streams
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self.streams: dict[str, int] = {}

    def take_batch(self, caller: str) -> None:
        """Counts one batch of `caller`; raises Overloaded (with retry_after_s) beyond the rate."""
        if self.rate_per_s <= 0:
            return
        now = self._clock()
        tokens, then = self._buckets.get(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            wait_s = (1.0 - tokens) / self.rate_per_s
            raise Overloaded(
                f"caller {caller} is over its rate of {self.rate_per_s:g} batches/s (burst {self.burst}); "
                f"resend after the delay in RetryInfo",
                retry_after_s=wait_s,
            )
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_IDLE_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        for name, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate_per_s >= self.burst:
                del self._buckets[name]

    def open_stream(self, caller: str) -> None:
        """Counts a stream of `caller`; raises Overloaded beyond max_streams. Pair with close_stream."""
        open_now = self.streams.get(caller, 0)
        if open_now >= self.max_streams:
            raise Overloaded(
                f"caller {caller} already has {open_now} streams open, the most allowed "
                f"(--max-streams-per-caller); send on those",
                retry_after_s=1.0,
            )
        self.streams[caller] = open_now + 1

    def close_stream(self, caller: str) -> None:
        left = self.streams.get(caller, 0) - 1
        if left > 0:
            self.streams[caller] = left
        else:
            self.streams.pop(caller, None)
