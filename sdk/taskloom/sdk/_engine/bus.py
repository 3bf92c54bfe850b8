"""The event bus: typed events fan out to subscribers that can never hurt a run.

``emit`` is synchronous and O(subscribers): it filters by type and run id and
puts the event on each matching subscriber's *bounded* queue. Each subscriber
has its own delivery task, so a slow one delays nobody else; when its queue is
full the event is dropped for that subscriber and counted; an exception from
its callback is counted and logged, never raised into the run (EV1). One queue
per subscriber, drained in order by one task, keeps each run's events in the
order they were emitted (EV2).

Callbacks may be plain functions, coroutine functions, or ``EventSink`` objects
(anything with ``emit(event)``).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from taskloom.contracts import EVENT_TYPES, Event, UsageError

logger = logging.getLogger("taskloom.events")

Callback = Callable[[Event], Any]


def _event_classes(types: Iterable[type[Any] | str] | None) -> frozenset[type[Any]] | None:
    if types is None:
        return None
    classes: set[type[Any]] = set()
    for item in types:
        if isinstance(item, str):
            cls = EVENT_TYPES.get(item)
            if cls is None:
                raise UsageError(f"unknown event type {item!r}; known: {sorted(EVENT_TYPES)}")
            classes.add(cls)
        elif item in EVENT_TYPES.values():
            classes.add(item)
        else:
            raise UsageError(f"{item!r} is not an event type")
    return frozenset(classes)


class Subscription:
    """One subscriber: its filters, its queue and its counters. Call it to unsubscribe."""

    def __init__(
        self,
        bus: EventBus,
        callback: Callback,
        *,
        types: frozenset[type[Any]] | None,
        run_id: str | None,
        queue_size: int,
    ) -> None:
        self._bus = bus
        self._callback = callback
        self.types = types
        self.run_id = run_id
        self._queue: collections.deque[Event] = collections.deque()
        self._queue_size = queue_size
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        """Events the callback returned from without raising."""
        self.dropped = 0
        """Events not delivered because the queue was full."""
        self.errors = 0
        """Events whose callback raised."""
        self.active = True

    def __call__(self) -> None:
        self.unsubscribe()

    def unsubscribe(self) -> None:
        """Stop receiving events; what is queued is discarded."""
        self.active = False
        self._bus._remove(self)
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()

    def _offer(self, event: Event) -> None:
        if len(self._queue) >= self._queue_size:
            self.dropped += 1
            return
        self._queue.append(event)
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._idle = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._deliver(), name="taskloom-event-subscriber"
            )
        assert self._wakeup is not None and self._idle is not None
        self._idle.clear()
        self._wakeup.set()

    async def _deliver(self) -> None:
        assert self._wakeup is not None and self._idle is not None
        while self.active:
            while self._queue:
                event = self._queue.popleft()
                try:
                    result = self._callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.errors += 1
                    if self.errors == 1 or self.errors % 1000 == 0:
                        logger.exception(
                            "event subscriber %r failed (%d error(s) so far); the run goes on",
                            self._callback,
                            self.errors,
                        )
                else:
                    self.delivered += 1
            self._wakeup.clear()
            self._idle.set()
            await self._wakeup.wait()

    async def drained(self) -> None:
        """Wait until everything queued so far was handed to the callback."""
        if self._idle is not None and self.active:
            await self._idle.wait()

    async def _close(self) -> None:
        self.active = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


class EventBus:
    """Fans events out to subscribers; see the module docstring for the guarantees."""

    def __init__(self, *, queue_size: int = 10_000) -> None:
        if queue_size < 1:
            raise UsageError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._subs: tuple[Subscription, ...] = ()

    def subscribe(
        self,
        callback: Callback | Any,
        *,
        types: Iterable[type[Any] | str] | None = None,
        run_id: str | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        """Deliver matching events to ``callback`` (a function, coroutine function or sink).

        ``types`` filters by event class or tag (``"step.succeeded"``); ``run_id``
        by run. Returns the subscription: call it (or ``unsubscribe()``) to stop.
        """
        emit = getattr(callback, "emit", None)
        target: Callback = emit if callable(emit) else callback
        if not callable(target):
            raise UsageError("subscribe a callable or an EventSink")
        sub = Subscription(
            self,
            target,
            types=_event_classes(types),
            run_id=run_id,
            queue_size=queue_size or self._queue_size,
        )
        self._subs = (*self._subs, sub)
        return sub

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The active subscriptions."""
        return self._subs

    def _remove(self, sub: Subscription) -> None:
        self._subs = tuple(s for s in self._subs if s is not sub)

    def wants(self, kind: type[Any], run_id: str) -> bool:
        """Whether an event of class ``kind`` for ``run_id`` would reach any subscriber now.

        Lets the engine skip building events nobody can observe (the start of each
        map item when no one listens) instead of building and then dropping them.
        """
        for sub in self._subs:
            if sub.types is not None and kind not in sub.types:
                continue
            if sub.run_id is not None and sub.run_id != run_id:
                continue
            return True
        return False

    def emit(self, event: Event) -> None:
        """Queue ``event`` for every matching subscriber; never blocks, never raises."""
        for sub in self._subs:
            if sub.types is not None and type(event) not in sub.types:
                continue
            if sub.run_id is not None and sub.run_id != event.run_id:
                continue
            sub._offer(event)

    async def drain(self, *, timeout_s: float | None = None) -> bool:
        """Wait until every subscriber was handed what is queued; False if ``timeout_s`` hit."""
        try:
            async with asyncio.timeout(timeout_s):
                for sub in self._subs:
                    await sub.drained()
        except TimeoutError:
            return False
        return True

    async def aclose(self, *, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (for up to ``timeout_s``), then stop every delivery task."""
        await self.drain(timeout_s=timeout_s)
        subs, self._subs = self._subs, ()
        for sub in subs:
            await sub._close()
