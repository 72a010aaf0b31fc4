"""Byte budgets: memory held by batches in flight is bounded by configuration,
not by load.

The service takes a batch's bytes from the stream's budget and the server's
before handing it to the pipeline and gives them back when the batch is
answered. A reader that cannot take them waits, and while it waits it does not
read the stream, so HTTP/2 flow control slows that sender down: overload turns
into backpressure, never into unbounded queues. Waiters are served first come,
first served, so a stream with large batches is not starved by small ones.

`MemoryLimiter` is the backstop behind them: admission also waits while the
process's resident memory nears `--memory-limit-bytes`.

Every bounded buffer counts its bytes with a `ByteBudget`, and each sink
names in its configuration what it does when its buffer is full (`WhenFull`).
Budgets are taken and given back on the event loop only: the threads that
encode and compress get bytes already counted, so no budget needs a lock.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import enum
import logging
import os
import time
from collections.abc import Callable

import pyarrow as pa

log = logging.getLogger(__name__)


class WhenFull(enum.Enum):
    """What a sink does with more data when its buffer is full (docs/operations.md,
    "When a buffer is full", says what each means for an operator)."""

    REFUSE = "refuse"
    """Fail the batch at once, retriable, with a retry delay: the client backs
    off (or goes to another replica) and the server's memory stays free."""
    BLOCK = "block"
    """Wait for room, up to the sink's deadline: the stream is not read
    meanwhile, so HTTP/2 flow control slows the sender down."""
    SPILL = "spill"
    """Append what is buffered to local files and go on; nothing waits."""
    FLUSH = "flush"
    """Write what is buffered to its destination now, as finished files."""


class ByteBudget:
    """Bytes held against a limit. `acquire` waits for room (first come, first
    served); `take` counts bytes whose size is only known as they grow, and
    may pass the limit; `full` says whether more should be refused."""

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

    def take(self, n: int) -> None:
        """Counts `n` more bytes (fewer when negative) without waiting."""
        if n < 0:
            self.release(-n)
        else:
            self.used_bytes += n

    @property
    def full(self) -> bool:
        return self.used_bytes >= self.limit_bytes

    @property
    def waiting(self) -> int:
        """Callers waiting for room."""
        return len(self._waiters)

    def _fits(self, n: int) -> bool:
        return self.used_bytes == 0 or self.used_bytes + n <= self.limit_bytes

    def _wake(self) -> None:
        # First come, first served: stop at the first waiter that does not fit.
        while self._waiters and self._fits(self._waiters[0][1]):
            waiter, n = self._waiters.popleft()
            if not waiter.done():
                self.used_bytes += n
                waiter.set_result(None)


class MemoryLimiter:
    """The process-wide guard behind the byte budgets: keeps the server's
    resident memory under `limit_bytes`.

    The budgets bound what the server itself holds per batch; they cannot see
    gRPC's transport buffers, allocator slack or rows parked behind a slow
    Bronze writer. This reads the real figure (RSS) every `check_interval_s`
    and acts at two marks:
      - from the low mark up, it hands freed memory back to the OS (Arrow's
        pool, glibc's `malloc_trim`, in a worker thread) every `trim_interval_s`:
        glibc keeps freed pages of its arenas resident until trimmed, and under
        churn they are a quarter of RSS;
      - at the high mark, new batches wait (their streams are not read, so
        HTTP/2 flow control slows the senders) until RSS is back under the low
        mark, and the holders in `on_pressure` let go of what they can.
    The high mark sits a fifth below the limit (at least 32 MiB): what is
    inside the process when admission pauses (batches being processed,
    transport buffers, the Bronze writer's copies) still grows it, and that
    headroom is what keeps RSS under the limit itself. The low mark is a tenth
    of the limit lower (at least 16 MiB), so admission does not flap.
    One rule keeps a paused server working: batches are admitted regardless
    while the request bytes in flight stay under `floor_bytes` (1/128 of the
    limit: ~10 batches of 1,000 orders at 400 MiB), and a batch always is when
    nothing else is in flight. Memory grows with concurrency, not with the
    rate, so at that floor the server keeps close to its full rate (measured:
    40 overloading streams at a 400 MiB limit, 103k orders/s; one batch at a
    time, as before the floor, gave 24k), and a limit set below what the
    process needs at rest slows it down, never to zero.
    """

    def __init__(
        self,
        limit_bytes: int,
        *,
        check_interval_s: float = 0.1,
        trim_interval_s: float = 0.25,
        metrics=None,
        read_rss: Callable[[], int] | None = None,
    ) -> None:
        if limit_bytes < 0:
            raise ValueError("a memory limit cannot be negative")
        self.limit_bytes = limit_bytes
        self.high_bytes = limit_bytes - max(limit_bytes // 5, 32 << 20)
        self.low_bytes = self.high_bytes - max(limit_bytes // 10, 16 << 20)
        self.floor_bytes = limit_bytes // 128
        self.check_interval_s = check_interval_s
        self.trim_interval_s = trim_interval_s
        self.over = False
        self.rss_bytes = 0
        self._metrics = metrics
        self._read_rss = read_rss or resident_bytes
        self._below = asyncio.Event()
        self._below.set()
        self._task: asyncio.Task | None = None
        self._trimmed_at = float("-inf")
        # Called (on the event loop) each time RSS reaches the high mark: the
        # parts of the server that hold memory past admission let go of what they can.
        self.on_pressure: list[Callable[[], None]] = []

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="memory-limiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.over = False  # whatever still waits goes ahead
        self._below.set()

    async def admit(self, n: int, in_flight_bytes: Callable[[], int]) -> bool:
        """Waits until a batch of `n` request bytes has room, or nothing else is
        in flight; returns whether it had to wait. Room is judged on RSS read
        now plus what the batches in flight and this one will still allocate
        (about twice their request bytes: the core's result, the Kafka
        records), since a burst of admissions lands long before RSS shows it."""
        held = in_flight_bytes()
        if self._has_room(n, held):
            return False
        if self._metrics is not None:
            self._metrics.memory_limit_waits_total.inc()
        while not self._has_room(n, (held := in_flight_bytes())):
            # Looks again after one interval (batches finishing free memory),
            # or sooner when the sampler sees RSS fall under the low mark.
            # Not paused, there is nothing to be woken by: only the interval.
            if self._below.is_set():
                await asyncio.sleep(self.check_interval_s)
                continue
            try:
                async with asyncio.timeout(self.check_interval_s):
                    await self._below.wait()
            except TimeoutError:
                pass
        return True

    def _has_room(self, n: int, held: int) -> bool:
        if not self.enabled or held + n <= self.floor_bytes or not held:
            return True  # the floor: a paused server keeps working, more slowly
        if self.over:
            return False
        return self._read_rss() + _AMPLIFICATION * (held + n) < self.high_bytes

    def check(self, now: float | None = None) -> bool:
        """One sample; returns whether freed memory should be handed back now
        (`_watch` does it in a thread; tests call this directly)."""
        rss = self._read_rss()
        self.rss_bytes = rss
        was_over = self.over
        if rss >= self.high_bytes:
            self.over = True
        elif rss < self.low_bytes:
            self.over = False
        if self.over != was_over:
            log.warning(
                "memory limit: admission paused" if self.over else "memory limit: admission resumed",
                extra={"rss_bytes": rss, "limit_bytes": self.limit_bytes, "high_bytes": self.high_bytes},
            )
            if self.over:
                self._below.clear()
                for relieve in self.on_pressure:
                    relieve()
            else:
                self._below.set()
        if self._metrics is not None:
            self._metrics.memory_rss_bytes.set(rss)
            self._metrics.memory_limited.set(1 if self.over else 0)
        now = time.monotonic() if now is None else now
        if rss >= self.low_bytes and (self.over != was_over or now - self._trimmed_at >= self.trim_interval_s):
            self._trimmed_at = now
            return True
        return False

    async def _watch(self) -> None:
        # Wakes every check_interval_s; reading statm costs a few microseconds,
        # a trim 1 to 10 ms (hence the thread, and the interval between them).
        while True:
            if self.check():
                await asyncio.to_thread(release_free_memory)
            await asyncio.sleep(self.check_interval_s)


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_AMPLIFICATION = 2
"""Bytes a batch in flight will still allocate per request byte (its core
result and Kafka records; measured 1.5x to 2.5x for generated orders)."""


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_BYTES


def release_free_memory() -> None:
    """Hand freed memory back to the OS: Arrow's pool keeps freed blocks for
    reuse, and glibc keeps freed heap pages until trimmed."""
    try:
        pa.default_memory_pool().release_unused()
    except Exception:  # an old pyarrow or a pool without it: nothing to do
        pass
    if _libc is not None:
        _libc.malloc_trim(0)


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim  # noqa: B018 (glibc only)
except (OSError, AttributeError):
    _libc = None
