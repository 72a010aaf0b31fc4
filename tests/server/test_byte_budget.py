"""The byte budget that bounds request bytes in flight, and the memory limiter behind it."""

from __future__ import annotations

import asyncio
import time

import pytest
from keystone_ingest.server.limits import ByteBudget, MemoryLimiter, resident_bytes
from waiting import wait_until_async


def test_acquire_waits_while_the_limit_is_reached_and_serves_waiters_in_order():
    async def scenario():
        budget = ByteBudget(100)
        assert await budget.acquire(60) is False
        order: list[str] = []

        async def take(name: str, n: int) -> None:
            waited = await budget.acquire(n)
            order.append(f"{name}:{waited}")

        big = asyncio.create_task(take("big", 70))
        await wait_until_async(lambda: budget.waiting == 1, 5, what="big waiting", step_s=0)
        small = asyncio.create_task(take("small", 10))  # would fit, but queues behind big
        await wait_until_async(lambda: budget.waiting == 2, 5, what="small waiting behind big", step_s=0)
        assert order == [] and budget.used_bytes == 60
        budget.release(60)
        await asyncio.gather(big, small)
        assert order == ["big:True", "small:True"]
        assert budget.used_bytes == 80

    asyncio.run(scenario())


def test_a_request_larger_than_the_limit_goes_through_alone():
    async def scenario():
        budget = ByteBudget(100)
        assert await budget.acquire(500) is False
        waiter = asyncio.create_task(budget.acquire(1))
        await wait_until_async(lambda: budget.waiting == 1, 5, what="the small request waiting", step_s=0)
        assert not waiter.done()
        budget.release(500)
        assert await waiter is True
        assert budget.used_bytes == 1

    asyncio.run(scenario())


def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_one_in():
    async def scenario():
        budget = ByteBudget(100)
        await budget.acquire(100)
        first = asyncio.create_task(budget.acquire(90))
        second = asyncio.create_task(budget.acquire(10))
        await wait_until_async(lambda: budget.waiting == 2, 5, what="both waiting", step_s=0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        budget.release(100)
        await second
        assert budget.used_bytes == 10

    asyncio.run(scenario())


def test_a_budget_needs_a_positive_limit():
    with pytest.raises(ValueError, match="positive"):
        ByteBudget(0)


class Rss:
    """A settable resident-memory reading for the limiter's logic."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


MiB = 1 << 20


def test_the_memory_limit_pauses_at_the_high_mark_and_resumes_under_the_low_mark():
    rss = Rss(100 * MiB)
    limiter = MemoryLimiter(400 * MiB, read_rss=rss)
    assert limiter.high_bytes == 320 * MiB  # a fifth below the limit (at least 32 MiB)
    assert limiter.low_bytes == 280 * MiB  # a tenth of the limit below that (at least 16 MiB)
    for value, over in [(319, False), (320, True), (300, True), (279, False), (310, False), (321, True)]:
        rss.value = value * MiB
        limiter.check()
        assert limiter.over is over, value
    small = MemoryLimiter(100 * MiB, read_rss=rss)
    assert (small.high_bytes, small.low_bytes) == (68 * MiB, 52 * MiB)


def test_freed_memory_is_handed_back_from_the_low_mark_up_at_most_every_trim_interval():
    rss = Rss(100 * MiB)
    limiter = MemoryLimiter(400 * MiB, trim_interval_s=0.5, read_rss=rss)
    trims = []
    for t, value in [
        (0.0, 100),
        (0.1, 290),
        (0.2, 295),
        (0.6, 300),
        (0.7, 320),
        (0.8, 330),
        (1.3, 250),
        (1.4, 290),
        (1.5, 295),
    ]:
        rss.value = value * MiB
        if limiter.check(now=t):
            trims.append(t)
    # At 0.1 (first time past the low mark), 0.6 (an interval later), 0.7
    # (admission just paused: at once) and 1.4 (an interval later); never under the low mark.
    assert trims == [0.1, 0.6, 0.7, 1.4]


class Held:
    """The request bytes in flight a limiter is told of; counts how often it looks."""

    def __init__(self) -> None:
        self.bytes = 0
        self.looks = 0

    def __call__(self) -> int:
        self.looks += 1
        return self.bytes


async def still_waiting_after_two_more_looks(limiter: MemoryLimiter, held: Held, waiting: asyncio.Future) -> None:
    """Until admission has judged the room twice more, then: it still waits,
    and it looked once per check interval, not in a busy loop. The
    condition, not a sleep, says when to look."""
    looks, started = held.looks, time.monotonic()
    await wait_until_async(lambda: held.looks >= looks + 3, 5, what="admission looked again twice", step_s=0.01)
    assert not waiting.done()
    assert time.monotonic() - started >= 2 * limiter.check_interval_s


def test_admission_waits_for_room_and_goes_ahead_when_nothing_else_is_in_flight():
    async def body() -> None:
        rss = Rss(300 * MiB)
        limiter = MemoryLimiter(400 * MiB, check_interval_s=0.01, read_rss=rss)
        held = Held()
        # Room: 300 MiB resident + 2 x (in flight + this batch) must stay under
        # the high mark (320 MiB for a 400 MiB limit).
        rss.value = 200 * MiB
        assert await limiter.admit(50 * MiB, held) is False
        rss.value = 300 * MiB
        held.bytes = 40 * MiB  # 300 + 2 x 50 = 400: no room
        waiting = asyncio.ensure_future(limiter.admit(10 * MiB, held))
        await still_waiting_after_two_more_looks(limiter, held, waiting)
        rss.value = 200 * MiB  # batches finished and memory went back: 200 + 100 < 320
        assert await asyncio.wait_for(waiting, 1) is True
        # Over the limit with nothing in flight: one batch always goes ahead.
        rss.value = 500 * MiB
        limiter.check()
        assert limiter.over
        held.bytes = 0
        assert await asyncio.wait_for(limiter.admit(10 * MiB, held), 1) is False
        # Under the floor (1/128 of the limit: 3.125 MiB) batches go ahead even
        # while paused; past it they wait.
        assert limiter.floor_bytes == 400 * MiB // 128
        held.bytes = 2 * MiB
        assert await asyncio.wait_for(limiter.admit(MiB, held), 1) is False
        held.bytes = 3 * MiB
        waiting = asyncio.ensure_future(limiter.admit(MiB, held))
        await still_waiting_after_two_more_looks(limiter, held, waiting)
        held.bytes = 2 * MiB  # a batch answered: 2 + 1 fits under the floor
        assert await asyncio.wait_for(waiting, 1) is True

    asyncio.run(body())


def test_a_limit_of_zero_admits_everything_and_a_negative_one_is_refused():
    async def body() -> None:
        limiter = MemoryLimiter(0, read_rss=Rss(10 << 40))
        assert not limiter.enabled
        assert await limiter.admit(1 << 30, lambda: 1 << 40) is False

    asyncio.run(body())
    with pytest.raises(ValueError, match="a memory limit cannot be negative"):
        MemoryLimiter(-1)


def test_the_resident_set_size_is_read_from_the_process():
    assert 10 * MiB < resident_bytes() < 4096 * MiB


def test_reaching_the_limit_asks_each_holder_of_memory_once_to_let_go():
    rss = Rss(100 * MiB)
    limiter = MemoryLimiter(400 * MiB, read_rss=rss)
    calls: list[str] = []
    limiter.on_pressure.append(lambda: calls.append("bronze"))
    for value in (100, 330, 350, 300, 270, 325):  # over at 330, still over, under the low mark, over again
        rss.value = value * MiB
        limiter.check()
    assert calls == ["bronze", "bronze"]
