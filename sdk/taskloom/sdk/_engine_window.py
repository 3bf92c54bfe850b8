"""Checkpoints of one run that are queued but not durable yet (``durability="async"``).

With asynchronous durability a finished step's checkpoint is queued on the run
store's group-commit writer and the run goes on at once: the next step starts
while the write is in flight, and a chain of steps shares one commit instead of
paying a commit and two event-loop hops each. What keeps this safe:

- Order: the writer commits batches in the order they were queued, so when a
  checkpoint is durable, every checkpoint queued before it -- in particular those
  of the steps it depends on -- is durable too. A resume never finds a step's
  checkpoint without the checkpoints of its needs.
- A bound: at most ``limit`` checkpoints of a run are unsettled at any moment;
  a step that finds the window full waits until the oldest half is durable
  before it queues its own. A crash
  re-runs at most that many finished steps (at least once, as with
  ``durability="sync"``, where a crash during a commit re-runs that step).
- Failures are not lost: a failed commit is raised by the next checkpoint of the
  run that notices it, and at the latest by ``settle``, which the run awaits
  before it reports success. The run store refuses every later checkpoint of a
  run whose checkpoint failed, so none of them lands after the lost one. A run
  never says "succeeded" before every one of its checkpoints is durable.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

DEFAULT_LIMIT = 256
"""Most checkpoints of one run that may be queued and not yet durable."""


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (the run failed or was cancelled anyway)."""
    if not future.cancelled():
        future.exception()


class CheckpointWindow:
    """The unsettled checkpoint writes of one run, oldest first."""

    __slots__ = ("_futures", "_limit", "_low")

    def __init__(self, limit: int = DEFAULT_LIMIT, *, low: int | None = None) -> None:
        """Hold at most ``limit`` unsettled writes; a full window waits until ``low`` are
        left (half the limit unless given)."""
        self._futures: collections.deque[asyncio.Future[None]] = collections.deque()
        self._limit = max(1, limit)
        self._low = max(0, min(self._limit, self._limit // 2 if low is None else low))

    def __len__(self) -> int:
        return len(self._futures)

    async def add(self, submit: Callable[[], asyncio.Future[None]]) -> None:
        """Queue a write with ``submit`` once there is room; raise a failed earlier write.

        The bound is strict: a full window (``limit`` unsettled writes) waits until
        ``low`` are left before it queues, whatever number of tasks add at once.
        """
        futures = self._futures
        while futures and futures[0].done():
            self._check(futures.popleft())
        if len(futures) >= self._limit:
            # Several tasks of the run (map workers) may wait here at once: each waits
            # for the oldest write without cancelling it for the others (shield), and
            # only the first to see it settled takes it off the window.
            while len(futures) > self._low:
                oldest = futures[0]
                if not oldest.done():
                    await asyncio.shield(oldest)
                if futures and futures[0] is oldest:
                    futures.popleft()
                    self._check(oldest)
        futures.append(submit())  # no await since the check: the bound holds

    async def settle(self) -> None:
        """Wait until every tracked write is durable; raise the first failure."""
        futures = self._futures
        try:
            while futures:
                await futures[0]
                futures.popleft()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop tracking: the writes stay queued and are committed, nobody waits for them."""
        for future in self._futures:
            if future.done():
                _retrieve(future)
            else:
                future.add_done_callback(_retrieve)
        self._futures.clear()

    @staticmethod
    def _check(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return  # a waiter was cancelled, not the write: it stays queued
        error = future.exception()
        if error is not None:
            raise error
