"""Byte budgets: memory held by batches in flight is bounded by configuration,
not by load.

The service takes a batch's bytes from the stream's budget and the server's
before handing it to the pipeline and gives them back when the batch is
answered. A reader that cannot take them waits, and while it waits it does not
read the stream, so HTTP/2 flow control slows that sender down: overload turns
into backpressure, never into unbounded queues. Waiters are served first come,
first served, so a stream with large batches is not starved by small ones.
"""

from __future__ import annotations

import asyncio
import collections


class ByteBudget:
    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("a byte budget needs a positive limit")
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._waiters: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()

    async def acquire(self, n: int) -> bool:
        """Takes `n` bytes, waiting while they would exceed the limit; returns
        whether it had to wait. A request larger than the whole limit goes
        through alone (when nothing else is held), so it cannot wait forever."""
        if not self._waiters and self._fits(n):
            self.used_bytes += n
            return False
        waiter = asyncio.get_running_loop().create_future()
        entry = (waiter, n)
        self._waiters.append(entry)
        try:
            await waiter  # the bytes are taken for us by _wake
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(n)  # granted just as we were cancelled: give them back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return True

    def release(self, n: int) -> None:
        self.used_bytes -= n
        self._wake()

    def _fits(self, n: int) -> bool:
        return self.used_bytes == 0 or self.used_bytes + n <= self.limit_bytes

    def _wake(self) -> None:
        # First come, first served: stop at the first waiter that does not fit.
        while self._waiters and self._fits(self._waiters[0][1]):
            waiter, n = self._waiters.popleft()
            if not waiter.done():
                self.used_bytes += n
                waiter.set_result(None)
