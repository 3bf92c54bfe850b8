"""Per-executor limits: a concurrency semaphore and token buckets per minute.

Requests per minute is a classic token bucket: each call takes one token.
Tokens per minute cannot be known before the reply, so that bucket works on
*debt*: a call may start while the bucket is positive, and its reported usage is
subtracted afterwards (possibly below zero), which makes the next callers wait
until the debt is repaid. The burst is one second's worth of the rate (at least
one request), so limits are spread evenly instead of spent in a spike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate_per_minute`` tokens a minute, holding at most ``capacity``."""

    def __init__(
        self,
        rate_per_minute: float,
        *,
        capacity: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, self.rate)
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._stamp:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float = 1.0) -> float:
        """Wait until ``amount`` tokens are there and take them; return the seconds waited."""
        waited = 0.0
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return waited
            delay = (need - self.level) / self.rate
            waited += delay
            await self._sleep(delay)

    async def wait_positive(self) -> float:
        """Wait until the bucket is out of debt (level > 0); return the seconds waited."""
        waited = 0.0
        while True:
            self._refill()
            if self.level > 0:
                return waited
            delay = (1e-9 - self.level) / self.rate
            waited += delay
            await self._sleep(delay)

    def debit(self, amount: float) -> None:
        """Take ``amount`` tokens now, going into debt if needed."""
        self._refill()
        self.level -= amount


class ExecutorLimits:
    """What one executor id allows: concurrent calls, requests and tokens per minute."""

    def __init__(
        self,
        *,
        concurrency: int | None,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        self.requests = (
            TokenBucket(requests_per_minute, clock=clock, sleep=sleep)
            if requests_per_minute
            else None
        )
        self.tokens = (
            TokenBucket(
                tokens_per_minute,
                capacity=tokens_per_minute / 60.0 or 1.0,
                clock=clock,
                sleep=sleep,
            )
            if tokens_per_minute
            else None
        )
        self.active = bool(self.requests or self.tokens)
        self.plain = self.semaphore is None and not self.active
        """No slot to take and no rate to wait for: a call can go straight to the executor."""

    async def admit(self) -> None:
        """Wait until the rate limits allow one more call."""
        if self.tokens is not None:
            await self.tokens.wait_positive()
        if self.requests is not None:
            await self.requests.take(1.0)

    def spent(self, tokens: int) -> None:
        """Record the tokens a finished call used."""
        if self.tokens is not None and tokens:
            self.tokens.debit(float(tokens))
