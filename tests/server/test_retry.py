"""keystone_ingest.retry: the one backoff and retry loop of the server, the Bronze worker and the client."""

import asyncio

import pytest
from keystone_ingest.retry import Backoff, retry
from keystone_ingest.server.errors import SinkFailed, SinkUnavailable


def test_delays_grow_exponentially_within_the_upper_half_of_each_ceiling():
    backoff = Backoff(0.1, 1.0)
    for ceiling in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        assert ceiling / 2 <= backoff.next_delay_s() <= ceiling
    backoff.reset()
    assert backoff.attempts == 0 and backoff.ceiling_s == 0.1


def test_a_delay_the_server_asked_for_replaces_the_backoff_with_a_tenth_of_jitter():
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next_delay_s(asked_s=3.0) for _ in range(50)]
    assert all(3.0 <= d <= 3.3 for d in delays) and len(set(delays)) > 1


def test_the_deadline_counts_from_the_first_failure_and_caps_the_last_delay():
    backoff = Backoff(10.0, 10.0, deadline_s=0.05)
    assert not backoff.expired  # no failure yet
    assert backoff.next_delay_s() <= 0.05
    asyncio.run(asyncio.sleep(0.06))  # the deadline passing is the subject, not a sync
    assert backoff.expired and backoff.next_delay_s() == 0.0
    backoff.reset()
    assert not backoff.expired


def test_retry_tries_a_retriable_error_again_and_resets_after_a_success():
    outcomes = [SinkUnavailable("broker away"), OSError("not classified"), "done"]
    attempts = []
    backoff = Backoff(0.001, 0.001)

    async def operation():
        attempts.append(1)
        outcome = outcomes[len(attempts) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    # The second error carries no `retriable`: it is permanent and raised as is.
    with pytest.raises(OSError, match="not classified"):
        asyncio.run(retry(operation, what="test", backoff=backoff))
    assert len(attempts) == 2 and backoff.attempts == 1
    assert asyncio.run(retry(operation, what="test", backoff=backoff)) == "done"
    assert backoff.attempts == 0


def test_retry_raises_a_permanent_error_at_once_and_reports_every_failure():
    failures = []

    async def operation():
        raise SinkFailed("bucket missing")

    with pytest.raises(SinkFailed, match="bucket missing"):
        asyncio.run(retry(operation, what="test", backoff=Backoff(0.001, 0.001), on_failure=failures.append))
    assert [f.message for f in failures] == ["bucket missing"]


def test_retry_gives_up_with_the_last_error_once_the_deadline_passes():
    attempts = []

    async def operation():
        attempts.append(1)
        raise SinkUnavailable(f"attempt {len(attempts)}")

    with pytest.raises(SinkUnavailable) as failed:
        asyncio.run(retry(operation, what="test", backoff=Backoff(0.01, 0.01, deadline_s=0.1)))
    assert failed.value.message == f"attempt {len(attempts)}"
    assert len(attempts) >= 2  # retried (every 5-10 ms) until 0.1 s had passed
