"""Retry schedules: attempts, backoff bounds, jitter, retry_after, permanent errors, deadlines;
and the rate-limit token buckets."""

from __future__ import annotations

from typing import Any

import pytest
from engine_support import FakeTime
from hypothesis import given
from hypothesis import strategies as st

from taskloom.contracts import (
    AuthenticationFailed,
    ExecutorTimeout,
    InvalidRequest,
    ProviderUnavailable,
    RateLimited,
    RetryPolicy,
)
from taskloom.sdk import backoff_delay
from taskloom.sdk._engine.ratelimit import ExecutorLimits, TokenBucket
from taskloom.sdk._engine.retry import call_with_retries

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 8),
    initial_delay_s=st.floats(0, 5),
    max_delay_s=st.floats(0, 60),
    multiplier=st.floats(1, 4),
    jitter=st.floats(0, 1),
)


@given(policies, st.integers(1, 10), st.floats(0, 0.999999))
def test_backoff_is_within_bounds(policy: RetryPolicy, attempt: int, rand: float) -> None:
    """The delay is the capped exponential base scaled into [1 - jitter, 1]."""
    base = min(policy.max_delay_s, policy.initial_delay_s * policy.multiplier ** (attempt - 1))
    delay = backoff_delay(policy, attempt, ProviderUnavailable("x"), rand)
    assert base * (1 - policy.jitter) - 1e-9 <= delay <= base + 1e-9


@given(policies, st.integers(1, 10), st.floats(0, 0.999999), st.floats(0, 120))
def test_retry_after_wins_when_longer(
    policy: RetryPolicy, attempt: int, rand: float, after: float
) -> None:
    """A RateLimited retry_after is honoured: the delay is the max of it and the backoff."""
    plain = backoff_delay(policy, attempt, ProviderUnavailable("x"), rand)
    limited = backoff_delay(policy, attempt, RateLimited("slow", retry_after=after), rand)
    assert limited == max(plain, after)


async def _schedule(policy: RetryPolicy, errors: list[BaseException], **kw: Any) -> tuple[Any, ...]:
    time = FakeTime()
    calls: list[int] = []
    retried: list[tuple[int, float]] = []

    async def attempt(number: int) -> str:
        calls.append(number)
        if errors:
            raise errors.pop(0)
        return "ok"

    try:
        result: Any = await call_with_retries(
            attempt,
            policy=policy,
            sleep=time.sleep,
            random=lambda: 0.5,
            clock=time.clock,
            on_retry=lambda n, d, e: retried.append((n, d)),
            **kw,
        )
    except Exception as exc:
        result = exc
    return result, calls, time.sleeps, retried


@given(policies, st.integers(0, 10))
async def test_schedule_respects_attempts_and_records_each_delay(
    policy: RetryPolicy, failures: int
) -> None:
    """Retryable errors are retried up to max_attempts, sleeping exactly the backoff delays."""
    errors: list[BaseException] = [ExecutorTimeout("t") for _ in range(failures)]
    result, calls, sleeps, retried = await _schedule(policy, errors)
    attempts = min(failures + 1, policy.max_attempts)
    assert calls == list(range(1, attempts + 1))
    expected = [backoff_delay(policy, n, ExecutorTimeout("t"), 0.5) for n in range(1, attempts)]
    assert sleeps == expected == [d for _, d in retried]
    if failures < policy.max_attempts:
        assert result == "ok"
    else:
        assert isinstance(result, ExecutorTimeout)


@pytest.mark.parametrize(
    "error", [InvalidRequest("bad"), AuthenticationFailed("no"), ValueError("x")]
)
async def test_permanent_errors_are_never_retried(error: BaseException) -> None:
    """Permanent errors and non-taskloom exceptions fail on the first attempt without sleeping."""
    result, calls, sleeps, _ = await _schedule(RetryPolicy(max_attempts=5), [error])
    assert result is error and calls == [1] and sleeps == []


async def test_retry_after_is_slept() -> None:
    """The injected sleep receives retry_after when it is longer than the backoff."""
    policy = RetryPolicy(max_attempts=3, initial_delay_s=1, jitter=0)
    result, _, sleeps, _ = await _schedule(policy, [RateLimited("slow", retry_after=7.5)])
    assert result == "ok" and sleeps == [7.5]


async def test_no_retry_past_the_deadline() -> None:
    """A retry whose wait would end at or after the deadline is not started."""
    policy = RetryPolicy(max_attempts=10, initial_delay_s=10, jitter=0, max_delay_s=100)
    errors: list[BaseException] = [ProviderUnavailable("x") for _ in range(10)]
    result, calls, sleeps, _ = await _schedule(policy, errors, deadline_at=1_000_000.0 + 35)
    assert isinstance(result, ProviderUnavailable)
    assert sleeps == [10.0, 20.0] and calls == [1, 2, 3]


async def test_request_bucket_spaces_calls_at_the_rate() -> None:
    """60 requests per minute with a burst of one: each further call waits one second."""
    time = FakeTime()
    bucket = TokenBucket(60, clock=time.clock, sleep=time.sleep)
    waits = [await bucket.take() for _ in range(4)]
    assert waits[0] == 0.0
    assert all(abs(w - 1.0) < 1e-9 for w in waits[1:])
    assert abs(time.now - 1_000_003.0) < 1e-9


async def test_token_bucket_debt_delays_the_next_call() -> None:
    """Tokens are debited after a call; a bucket in debt makes the next caller wait it off."""
    time = FakeTime()
    limits = ExecutorLimits(
        concurrency=None,
        requests_per_minute=None,
        tokens_per_minute=600,
        clock=time.clock,
        sleep=time.sleep,
    )
    await limits.admit()
    limits.spent(30)  # capacity 10 (one second), now 20 in debt
    await limits.admit()
    assert abs(sum(time.sleeps) - 2.0) < 1e-6  # 20 tokens at 10 per second
