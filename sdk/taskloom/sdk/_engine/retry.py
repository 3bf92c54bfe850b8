"""Retries: exponential backoff with jitter, on retryable errors only.

The schedule is a pure function (:func:`backoff_delay`) so that tests can check
it exactly; :func:`call_with_retries` runs it with an injected ``sleep``,
``random`` and ``clock``, so a test of a ten-attempt schedule takes no time.

Rules: only ``RetryableError`` is retried (``PermanentError`` and every other
exception fail at once); attempt ``n`` that failed waits
``min(max_delay_s, initial_delay_s * multiplier**(n-1)) * (1 - jitter * r)`` with
``r`` uniform in [0, 1); the provider's ``retry_after`` (a 429's, or a 503's
``Retry-After``) wins when it is longer; no retry starts once it could not begin
before the step's deadline. A provider wait longer than ``max_retry_wait_s`` fails
at once (a ``Retry-After: 86400`` must not hold a step for a day): ``RateLimited``
(or ``ProviderUnavailable`` for an outage) naming the wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from taskloom.contracts import ProviderUnavailable, RateLimited, RetryableError, RetryPolicy

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Random = Callable[[], float]
OnRetry = Callable[[int, float, RetryableError], None]


def backoff_delay(policy: RetryPolicy, attempt: int, error: BaseException, rand: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (from 1) before the next one."""
    base = min(policy.max_delay_s, policy.initial_delay_s * policy.multiplier ** (attempt - 1))
    delay = base * (1.0 - policy.jitter * rand)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return max(0.0, delay)


def too_long_a_wait(policy: RetryPolicy, error: RetryableError) -> RetryableError | None:
    """The error to fail with at once when the provider asked for a wait over the limit."""
    wait = getattr(error, "retry_after", None)
    if not isinstance(wait, int | float) or wait <= policy.max_retry_wait_s:
        return None
    message = (
        f"{error} (the provider asked to wait {wait:g} s before retrying, longer than "
        f"max_retry_wait_s={policy.max_retry_wait_s:g}; retry later or raise "
        "retry.max_retry_wait_s)"
    )
    if isinstance(error, RateLimited):
        return RateLimited(message, retry_after=wait, status=error.status)
    return ProviderUnavailable(message, retry_after=wait, status=error.status)


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
    failed: RetryableError | None = None
    try:
        return await attempt_fn(1)
    except RetryableError as exc:
        failed = exc
    return await retry_after(
        failed,
        attempt_fn,
        policy=policy,
        sleep=sleep,
        random=random,
        clock=clock,
        deadline_at=deadline_at,
        on_retry=on_retry,
    )


async def retry_after(
    failed: RetryableError,
    attempt_fn: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    sleep: Sleep,
    random: Random,
    clock: Clock,
    deadline_at: float | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """``call_with_retries`` once attempt 1 failed with ``failed``: wait, call attempt 2,
    and so on. A caller on a hot path makes attempt 1 itself (no coroutine of this
    module in between when it succeeds) and hands its error here."""
    attempt = 1
    while True:
        if attempt >= policy.max_attempts:
            raise failed
        too_long = too_long_a_wait(policy, failed)
        if too_long is not None:
            raise too_long from failed
        delay = backoff_delay(policy, attempt, failed, random())
        if deadline_at is not None and clock() + delay >= deadline_at:
            raise failed
        if on_retry is not None:
            on_retry(attempt, delay, failed)
        await sleep(delay)
        attempt += 1
        try:
            return await attempt_fn(attempt)
        except RetryableError as exc:
            failed = exc
