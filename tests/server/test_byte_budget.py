"""The byte budget that bounds request bytes in flight."""

from __future__ import annotations

import asyncio

import pytest

from keystone_ingest.server.limits import ByteBudget


def test_acquire_waits_while_the_limit_is_reached_and_serves_waiters_in_order():
    async def scenario():
        budget = ByteBudget(100)
        assert await budget.acquire(60) is False
        order: list[str] = []

        async def take(name: str, n: int) -> None:
            waited = await budget.acquire(n)
            order.append(f"{name}:{waited}")

        big = asyncio.create_task(take("big", 70))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 10))  # would fit, but queues behind big
        await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        budget.release(100)
        await second
        assert budget.used_bytes == 10

    asyncio.run(scenario())


def test_a_budget_needs_a_positive_limit():
    with pytest.raises(ValueError, match="positive"):
        ByteBudget(0)
