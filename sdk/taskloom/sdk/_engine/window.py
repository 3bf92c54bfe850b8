"""Checkpoints of one run that are queued but not durable yet (``durability="async"``).

With asynchronous durability a finished step's checkpoint is queued on the run
store's group-commit writer and the run goes on at once: the next step starts
while the write is in flight, and a chain of steps shares one commit instead of
paying a commit and two event-loop hops each. What keeps this safe:

- Order: the writer commits batches in the order they were queued, so when a
  checkpoint is durable, every checkpoint queued before it -- in particular those
  of the steps it depends on -- is durable too. A resume never finds a step's
  checkpoint without the checkpoints of its needs.
- A bound: a leaf takes a slot of the window (``try_reserve`` / ``reserve``)
  *before* it calls its executor, and its checkpoint fills that slot
  (``add_reserved``); so at most ``limit`` leaves of a run are in flight or
  finished with their checkpoint not yet durable, and a crash re-runs at most
  ``limit`` steps or map items of a run, in flight or finished (at least once, as
  with ``durability="sync"``, where a crash re-runs only the steps in flight: those
  whose checkpoint was not durable yet). Reserving before the call matters: a map
  worker that waited for room only after its call returned held a finished item
  the window did not count (the bound was ``limit`` plus the map's concurrency).
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

T = TypeVar("T")

DEFAULT_LIMIT = 256
"""Most checkpoints of one run that may be queued and not yet durable."""


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (the run failed or was cancelled anyway)."""
    if not future.cancelled():
        future.exception()


class CheckpointWindow:
    """The unsettled checkpoint writes of one run, oldest first, at most ``limit`` of them.

    The writes settle in the order they were queued, so the unsettled ones are the
    tracked futures left after dropping the settled ones at the front: room is
    ``limit`` minus those (and minus room already promised to a woken waiter).
    ``try_add`` queues without suspending when there is room and nobody waits --
    the case of every step of a chain -- and costs no callback per write. Tasks
    that find the window full (map workers) wait in line; one callback on the
    oldest unsettled write wakes them, first come, first served, as room appears.
    The first failed write is kept and raised by every later ``add`` and by
    ``settle`` (the run store refuses the run's later checkpoints anyway).
    """

    __slots__ = ("_armed", "_error", "_futures", "_limit", "_promised", "_waiters")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._futures: collections.deque[asyncio.Future[None]] = collections.deque()
        self._limit = max(1, limit)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._promised = 0
        """Room given to woken waiters that have not queued their write yet."""
        self._armed = False
        """Whether a callback waits on the oldest unsettled write to wake the line."""
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._futures)

    def try_add(self, submit: Callable[[T], asyncio.Future[None]], arg: T) -> bool:
        """Queue ``submit(arg)`` now if there is room and nobody waits for it; else False.

        Raises the failure of an earlier write of the run, if one failed.
        """
        self._drop_settled()
        if self._error is not None:
            raise self._error
        if self._waiters or len(self._futures) + self._promised >= self._limit:
            return False
        self._futures.append(submit(arg))
        return True

    async def add(self, submit: Callable[[T], asyncio.Future[None]], arg: T) -> None:
        """Queue ``submit(arg)`` once there is room; raise a failed earlier write."""
        if self.try_add(submit, arg):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            await waiter
        except asyncio.CancelledError:
            promised = waiter.done() and not waiter.cancelled()
            if promised:
                self._promised -= 1  # room was promised: it is used right here
            # the run is being cancelled, but this step did finish: queue its checkpoint
            # anyway so it is not lost (over the bound if no room was promised)
            try:
                self._futures.append(submit(arg))
            except BaseException:
                if promised:
                    self._wake()  # the promised room was not used: pass it on
                raise
            self._arm()
            raise
        self._promised -= 1
        try:
            if self._error is not None:
                raise self._error
            self._futures.append(submit(arg))
        except BaseException:
            self._wake()  # the promised room was not used: the next in line may have it
            raise
        self._arm()  # the rest of the line waits for this write (or an older one) to settle

    def try_reserve(self) -> bool:
        """Take a slot for a leaf about to run, if there is room and nobody waits; else False.

        Raises the failure of an earlier write of the run, if one failed.
        """
        self._drop_settled()
        if self._error is not None:
            raise self._error
        if self._waiters or len(self._futures) + self._promised >= self._limit:
            return False
        self._promised += 1
        return True

    async def reserve(self) -> None:
        """Take a slot for a leaf about to run, waiting for room (first come, first served).

        The leaf fills the slot with ``add_reserved`` or gives it back with ``release``.
        """
        if self.try_reserve():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # room was promised to us: pass it on
            raise
        if self._error is not None:
            self.release()
            raise self._error

    def add_reserved(self, submit: Callable[[T], asyncio.Future[None]], arg: T) -> None:
        """Queue ``submit(arg)`` in a slot taken with ``reserve``; raise a failed earlier write."""
        self._promised -= 1
        try:
            self._drop_settled()
            if self._error is not None:
                raise self._error
            self._futures.append(submit(arg))
        except BaseException:
            self._wake()  # the slot was not used: the next in line may have it
            raise
        if self._waiters and not self._armed:  # (a chain's steps never wait: no call)
            self._arm()

    def release(self) -> None:
        """Give back a slot taken with ``reserve`` that no checkpoint will fill."""
        self._promised -= 1
        self._wake()

    async def settle(self) -> None:
        """Wait until every tracked write is durable; raise the first failure."""
        futures = self._futures
        try:
            if self._error is not None:
                raise self._error
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

    def _drop_settled(self) -> None:
        """Forget the settled writes at the front; keep the first failure among them."""
        futures = self._futures
        while futures and futures[0].done():
            future = futures.popleft()
            if future.cancelled():
                continue  # a waiter was cancelled, not the write: it stays queued
            error = future.exception()
            if error is not None and self._error is None:
                self._error = error

    def _arm(self) -> None:
        """Make sure the line is woken when room appears (now, if there is room)."""
        if self._armed or not self._waiters:
            return
        self._drop_settled()
        for future in self._futures:
            if not future.done():
                future.add_done_callback(self._on_settled)
                self._armed = True
                return
        if len(self._futures) + self._promised < self._limit:
            self._wake()  # nothing unsettled and room left: wake the line now
        # else all room is promised: each woken waiter arms the line once it has queued

    def _on_settled(self, _future: asyncio.Future[None]) -> None:
        self._armed = False
        self._wake()

    def _wake(self) -> None:
        """Promise the room there is to the first live waiters; re-arm for the rest."""
        self._drop_settled()
        waiters = self._waiters
        while waiters and len(self._futures) + self._promised < self._limit:
            waiter = waiters.popleft()
            if not waiter.done():  # (a cancelled waiter has left the line)
                waiter.set_result(None)
                self._promised += 1
        while waiters and waiters[0].done():
            waiters.popleft()
        self._arm()
