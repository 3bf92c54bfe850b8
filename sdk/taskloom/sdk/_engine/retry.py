"""Retries: exponential backoff with jitter, on retryable errors only.

The schedule is a pure function (:func:`backoff_delay`) so that tests can check
it exactly; :func:`call_with_retries` runs it with an injected ``sleep``,
``random`` and ``clock``, so a test of a ten-attempt schedule takes no time.

Rules: only ``RetryableError`` is retried (``PermanentError`` and every other
exception fail at once); attempt ``n`` that failed waits
``min(max_delay_s, initial_delay_s * multiplier**(n-1)) * (1 - jitter * r)`` with
``r`` uniform in [0, 1); a ``RateLimited`` error's ``retry_after`` wins when it is
longer; no retry starts once it could not begin before the step's deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from taskloom.contracts import RateLimited, RetryableError, RetryPolicy

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Random = Callable[[], float]
OnRetry = Callable[[int, float, RetryableError], None]


def backoff_delay(policy: RetryPolicy, attempt: int, error: BaseException, rand: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1) before the next one."""
    base = min(policy.max_delay_s, policy.initial_delay_s * policy.multiplier ** (attempt - 1))
    delay = base * (1.0 - policy.jitter * rand)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = max(delay, float(error.retry_after))
    return max(0.0, delay)


async def call_with_retries(
    attempt_fn: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    sleep: Sleep,
    random: Random,
    clock: Clock,
    deadline_at: float | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """Call ``attempt_fn(attempt)`` until it returns, retrying per ``policy``.

    Raises the last error when attempts run out, when it is not retryable, or
    when waiting would pass ``deadline_at`` (by ``clock``).
    """
    attempt = 1
    while True:
        try:
            return await attempt_fn(attempt)
        except RetryableError as exc:
            if attempt >= policy.max_attempts:
                raise
            delay = backoff_delay(policy, attempt, exc, random())
            if deadline_at is not None and clock() + delay >= deadline_at:
                raise
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            await sleep(delay)
            attempt += 1
