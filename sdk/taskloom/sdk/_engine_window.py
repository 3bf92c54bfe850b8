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
  a step that finds the window full waits for room before it queues its own. A crash
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
from typing import TypeVar

DURABILITY_MODES = ("async", "sync")
"""``Engine(durability=...)`` and ``[engine] durability``: "async" tracks checkpoints here."""

T = TypeVar("T")

DEFAULT_LIMIT = 256
"""Most checkpoints of one run that may be queued and not yet durable."""


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (the run failed or was cancelled anyway)."""
    if not future.cancelled():
        future.exception()


class CheckpointWindow:
    """The unsettled checkpoint writes of one run, oldest first, at most ``limit`` of them.

    Room is handed out first come, first served: a settled write gives its room to
    the longest-waiting task of the run (a map worker), or frees it. ``try_add``
    queues without suspending when there is room and nobody waits -- the case of
    every step of a chain -- so the common checkpoint costs no coroutine.
    """

    __slots__ = ("_free", "_futures", "_waiters")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._futures: collections.deque[asyncio.Future[None]] = collections.deque()
        self._free = max(1, limit)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._futures)

    def try_add(self, submit: Callable[[T], asyncio.Future[None]], arg: T) -> bool:
        """Queue ``submit(arg)`` now if there is room and nobody waits for it; else False.

        Raises the failure of an earlier write of the run, if one failed.
        """
        self._prune()
        # (room is free only while nobody live waits: a release serves waiters first)
        if self._free <= 0 or self._waiters:
            return False
        self._free -= 1
        self._queue(submit, arg)
        return True

    async def add(self, submit: Callable[[T], asyncio.Future[None]], arg: T) -> None:
        """Queue ``submit(arg)`` once there is room; raise a failed earlier write."""
        if self.try_add(submit, arg):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # the run is being cancelled, but this step did finish: queue its checkpoint
            # anyway so it is not lost -- in the room it was given, or over the bound
            if waiter.done() and not waiter.cancelled():
                self._queue(submit, arg)
            else:
                self._futures.append(submit(arg))
            raise
        try:
            self._prune()  # a write may have failed while this one waited for room
        except BaseException:
            self._release()
            raise
        self._queue(submit, arg)

    def _queue(self, submit: Callable[[T], asyncio.Future[None]], arg: T) -> None:
        """Submit a write in room already taken; the room comes back when it settles."""
        try:
            future = submit(arg)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._settled)
        self._futures.append(future)

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

    def _settled(self, _future: asyncio.Future[None]) -> None:
        self._release()

    def _release(self) -> None:
        """Give one room to the first task still waiting for it, or free it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _prune(self) -> None:
        futures = self._futures
        while futures and futures[0].done():
            self._check(futures.popleft())

    @staticmethod
    def _check(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return  # a waiter was cancelled, not the write: it stays queued
        error = future.exception()
        if error is not None:
            raise error
