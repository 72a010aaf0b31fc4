"""The batch_id window: a resent batch is answered from its first ack, once.

Upstream services resend a batch whenever they did not see its ack (a broken
stream, a timeout, a restart on either side). The window remembers the counts
of every batch acked within its bounds, so a resend is answered
`ACK_STATUS_DUPLICATE_BATCH` with those counts and nothing is published or
written again. It is checked before the native core so the order dedup window
never sees the resend either.

Two copies of one batch in flight at once (a client resending on a second stream
before the first answer) must not both be processed: the first claims the id,
the second waits for the first's outcome. If the first fails, its claim is
released and the second processes the batch itself.

Bounded by count and age, oldest first; one entry costs roughly the batch_id
string plus ~150 bytes of dict and tuple overhead.

In memory only: a restarted server starts with an empty window (Bronze drops
repeated event_ids whatever the window knew).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple


class AckCounts(NamedTuple):
    accepted: int
    duplicates: int
    rejected: int


class BatchIdWindow:
    def __init__(
        self, max_ids: int = 200_000, max_age_s: float = 86_400.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self._clock = clock
        self._acked: OrderedDict[str, tuple[float, AckCounts]] = OrderedDict()
        self._claims: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._acked)

    async def claim(self, batch_id: str) -> AckCounts | None:
        """The first ack's counts if `batch_id` was acked within the window;
        otherwise `None`, and the caller now owns the id: it must call
        `complete()` or `release()` exactly once."""
        while True:
            self._expire()
            hit = self._acked.get(batch_id)
            if hit is not None:
                return hit[1]
            claim = self._claims.get(batch_id)
            if claim is None:
                self._claims[batch_id] = asyncio.get_running_loop().create_future()
                return None
            # Shielded: a waiter that gives up must not cancel the owner's claim.
            await asyncio.shield(claim)

    def complete(self, batch_id: str, counts: AckCounts) -> None:
        """Records the ack of an owned batch_id and wakes every waiter."""
        self._acked[batch_id] = (self._clock(), counts)
        self._acked.move_to_end(batch_id)
        self._expire()
        self._wake(batch_id)

    def release(self, batch_id: str) -> None:
        """Gives up an owned batch_id without an ack; the next claim processes it."""
        self._wake(batch_id)

    def _wake(self, batch_id: str) -> None:
        claim = self._claims.pop(batch_id, None)
        if claim is not None and not claim.done():
            claim.set_result(None)

    def _expire(self) -> None:
        acked = self._acked
        while len(acked) > self.max_ids:
            acked.popitem(last=False)
        oldest_allowed = self._clock() - self.max_age_s
        while acked:
            stamp, _ = next(iter(acked.values()))
            if stamp >= oldest_allowed:
                break
            acked.popitem(last=False)
