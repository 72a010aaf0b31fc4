"""The batch_id window on its own: claims, waiters, bounds."""

from __future__ import annotations

import asyncio

import pytest
from keystone_ingest.server.idempotency import AckCounts, BatchIdWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_an_acked_batch_id_answers_with_its_first_counts():
    async def scenario():
        window = BatchIdWindow()
        assert await window.claim("b1") is None
        window.complete("b1", AckCounts(7, 2, 1))
        assert await window.claim("b1") == AckCounts(7, 2, 1)
        assert await window.claim("b2") is None

    run(scenario())


def test_a_released_claim_lets_the_next_sender_process_the_batch():
    async def scenario():
        window = BatchIdWindow()
        assert await window.claim("b1") is None
        window.release("b1")
        assert await window.claim("b1") is None
        assert len(window) == 0

    run(scenario())


def test_a_second_copy_in_flight_waits_for_the_first_outcome():
    async def scenario(first_succeeds: bool):
        window = BatchIdWindow()
        assert await window.claim("b1") is None
        waiter = asyncio.create_task(window.claim("b1"))
        await asyncio.sleep(0)  # one turn of the loop, not a wait: nothing in claim() is timed
        assert not waiter.done()
        if first_succeeds:
            window.complete("b1", AckCounts(3, 0, 0))
            assert await waiter == AckCounts(3, 0, 0)
        else:
            window.release("b1")
            assert await waiter is None  # the waiter now owns the id

    run(scenario(True))
    run(scenario(False))


def test_a_cancelled_waiter_does_not_cancel_the_owner():
    async def scenario():
        window = BatchIdWindow()
        await window.claim("b1")
        waiter = asyncio.create_task(window.claim("b1"))
        await asyncio.sleep(0)  # one turn of the loop, not a wait: the waiter reaches its wait
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        window.complete("b1", AckCounts(1, 0, 0))
        assert await window.claim("b1") == AckCounts(1, 0, 0)

    run(scenario())


def test_the_window_forgets_the_oldest_beyond_its_count():
    async def scenario():
        window = BatchIdWindow(max_ids=3)
        for i in range(5):
            assert await window.claim(f"b{i}") is None
            window.complete(f"b{i}", AckCounts(i, 0, 0))
        assert len(window) == 3
        assert await window.claim("b0") is None
        assert await window.claim("b4") == AckCounts(4, 0, 0)

    run(scenario())


def test_the_window_forgets_batch_ids_older_than_its_age():
    async def scenario():
        clock = Clock()
        window = BatchIdWindow(max_age_s=60, clock=clock)
        await window.claim("old")
        window.complete("old", AckCounts(1, 0, 0))
        clock.now += 30
        await window.claim("new")
        window.complete("new", AckCounts(2, 0, 0))
        clock.now += 31
        assert await window.claim("old") is None
        assert await window.claim("new") == AckCounts(2, 0, 0)

    run(scenario())


def test_max_ids_must_be_positive():
    with pytest.raises(ValueError, match="max_ids"):
        BatchIdWindow(max_ids=0)
