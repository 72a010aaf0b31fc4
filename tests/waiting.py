"""The one way tests wait for something to happen: poll its condition until it
holds, and fail naming it when it does not within a bound.

    wait_until(lambda: server.metric("keystone_ingest_streams_open") == 0, 30, what="every stream closed")
    await wait_until_async(lambda: sink.stats()["replacements"] >= 1, 30, what="the producer replaced")

The timeout is a bound on a hang, never a claim about speed. Coroutines use
`wait_until_async` (the same loop, yielding to the event loop between polls),
so that the predicate runs on the loop that owns what it looks at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until", "wait_until_async"]

What = str | Callable[[], str]


def wait_until(
    predicate: Callable[[], object], timeout_s: float, *, what: What = "condition", step_s: float = 0.05
) -> float:
    """Polls `predicate` every `step_s` until it returns something true;
    returns the seconds that took. Raises AssertionError naming `what` (a
    text, or a function that tells the state at the timeout) and the
    predicate's last value if it still does not hold after `timeout_s`."""
    started = time.monotonic()
    while not (value := predicate()):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(_message(what, timeout_s, value))
        time.sleep(step_s)
    return time.monotonic() - started


async def wait_until_async(
    predicate: Callable[[], object], timeout_s: float, *, what: What = "condition", step_s: float = 0.05
) -> float:
    """`wait_until` for coroutines: the event loop runs between polls."""
    started = time.monotonic()
    while not (value := predicate()):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(_message(what, timeout_s, value))
        await asyncio.sleep(step_s)
    return time.monotonic() - started


def _message(what: What, timeout_s: float, value: object) -> str:
    return f"not reached within {timeout_s} s: {what() if callable(what) else what} (last: {value!r})"
