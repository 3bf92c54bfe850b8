"""Live events for Server-Sent Events: one feed per watched run, shared by its clients.

A client first reads the run's stored history itself (from its ``Last-Event-ID``),
then follows the run's feed. The feed reads what was stored after the last number it
saw and hands each numbered event to every client of that run, so numbers stay
gapless however many clients come and go: a client that joins while the feed runs
registers *before* reading its history and drops what the feed hands it twice.

A feed reads storage when the event bus says its run emitted something (runs this
process executes) and otherwise every ``poll_interval_s`` (runs other processes
execute), backing off to ``IDLE_POLL_FACTOR`` intervals while its run stays quiet.
Streamed token chunks are never stored: they go from the bus to the clients of that
run as they come, without a number.

The hub holds one bus subscription while any run is watched, and routes each event
by run id (a dict lookup), so a thousand idle streams add one subscriber, not a
thousand, to every event a run emits. A client that disconnects leaves its feed;
the last one out stops the feed; the last feed out drops the bus subscription.
A client that falls ``queue_size`` events behind is dropped (its stream ends and it
resumes from its ``Last-Event-ID``) rather than holding memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from taskloom.contracts import ChunkStreamed, Event, RunNotFound, TaskloomError
from taskloom.sdk._engine.bus import EventBus, Subscription
from taskloom.sdk._runs.store import RunStore

logger = logging.getLogger("taskloom.server")

READ_PAGE = 500
"""Stored events read per storage call, for history and for live reads."""

IDLE_POLL_FACTOR = 4
"""A quiet run's feed polls at most this many poll intervals apart."""

Item = tuple[int | None, Event, bytes]
"""A numbered stored event, or ``(None, chunk, ...)`` for a live-only chunk, with its
Server-Sent Event bytes (encoded once per event, however many clients get it)."""

Encoder = Callable[[int | None, Event], bytes]
"""Turns an event (and its number, None for a chunk) into the bytes of one SSE message."""


class Listener:
    """One client of a run's feed: a bounded queue of what the feed hands it."""

    def __init__(self, feed: RunFeed, queue_size: int) -> None:
        self.feed = feed
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=queue_size)
        self.overflowed = False

    def put(self, item: Item) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            self._end()

    def _end(self) -> None:
        """End the client's stream now: drop what is queued (a gap must never be sent:
        the client resumes from the last event it really got) and mark the end."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def follow(self, after: int) -> None:
        """The client has sent everything stored up to ``after``: start the feed there."""
        self.feed.start(after)

    async def items(self) -> AsyncIterator[Item]:
        """What the feed hands this client, until it is dropped."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item


class RunFeed:
    """Reads one run's newly stored events and hands them to its listeners."""

    def __init__(self, hub: EventHub, run_id: str) -> None:
        self.hub = hub
        self.run_id = run_id
        self.listeners: set[Listener] = set()
        self.last = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, after: int) -> None:
        if self._task is None:
            self.last = after
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"taskloom-feed-{self.run_id}"
            )

    def wake(self) -> None:
        self._wake.set()

    def push(self, item: Item) -> None:
        for listener in list(self.listeners):
            listener.put(item)

    async def _run(self) -> None:
        failures = 0
        wait = self.hub.poll_interval_s
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait * (1 + failures)):
                    await self._wake.wait()
                    woken = True
            self._wake.clear()
            found = 0
            try:
                while True:
                    page = await self.hub.runstore.events(
                        self.run_id, after=self.last, limit=READ_PAGE
                    )
                    encode = self.hub.encode
                    for number, event in page:
                        self.last = number
                        self.push((number, event, encode(number, event)))
                    found += len(page)
                    if len(page) < READ_PAGE:
                        break
                failures = 0
            except TaskloomError:
                failures = min(failures + 1, 10)
                logger.warning(
                    "reading the events of run %s failed (%d time(s) in a row); retrying",
                    self.run_id,
                    failures,
                    exc_info=True,
                )
            # A run that stays quiet is looked at less and less often (up to
            # IDLE_POLL_FACTOR times the interval): a thousand idle streams must not
            # keep the store busy. Anything new, or the bus, brings it back at once.
            if found or woken:
                wait = self.hub.poll_interval_s
                continue
            wait = min(wait * 2, self.hub.poll_interval_s * IDLE_POLL_FACTOR)
            if await self._deleted():
                for listener in list(self.listeners):
                    listener._end()  # its stream ends; the run has no more events to give
                return

    async def _deleted(self) -> bool:
        """Whether the run is gone (deleted while watched): its streams must end."""
        try:
            await self.hub.runstore.load_run(self.run_id)
        except RunNotFound:
            return True
        except TaskloomError:
            return False  # a store that fails now is retried at the next poll
        return False

    def stop(self) -> None:
        """Cancel the reading task (synchronous: it runs in a client's cancelled scope)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()


class EventHub:
    """The feeds of every watched run, and the one bus subscription that wakes them."""

    def __init__(
        self,
        bus: EventBus,
        runstore: RunStore,
        encode: Encoder,
        *,
        poll_interval_s: float = 0.5,
        queue_size: int = 10_000,
    ) -> None:
        self.bus = bus
        self.runstore = runstore
        self.encode = encode
        self.poll_interval_s = poll_interval_s
        self.queue_size = queue_size
        self._feeds: dict[str, RunFeed] = {}
        self._subscription: Subscription | None = None

    @property
    def listener_count(self) -> int:
        """How many clients are following a run now."""
        return sum(len(feed.listeners) for feed in self._feeds.values())

    @property
    def feed_count(self) -> int:
        """How many runs are being followed now."""
        return len(self._feeds)

    @property
    def subscribed(self) -> bool:
        """Whether the hub holds its bus subscription (only while a run is watched)."""
        return self._subscription is not None

    def _on_event(self, event: Event) -> None:
        feed = self._feeds.get(event.run_id)
        if feed is None:
            return
        if type(event) is ChunkStreamed:
            feed.push((None, event, self.encode(None, event)))
        else:
            feed.wake()

    @contextlib.asynccontextmanager
    async def listen(self, run_id: str) -> AsyncIterator[Listener]:
        """Follow ``run_id`` for the life of the block (see the module docstring)."""
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = RunFeed(self, run_id)
        if self._subscription is None:
            self._subscription = self.bus.subscribe(self._on_event)
        listener = Listener(feed, self.queue_size)
        feed.listeners.add(listener)
        try:
            yield listener
        finally:
            # nothing here awaits: a disconnected client's scope is cancelled, and
            # every await in it would raise before the subscription is freed
            feed.listeners.discard(listener)
            if not feed.listeners and self._feeds.get(run_id) is feed:
                del self._feeds[run_id]
                feed.stop()
            if not self._feeds and self._subscription is not None:
                self._subscription.unsubscribe()
                self._subscription = None

    async def aclose(self) -> None:
        """Stop every feed and drop the bus subscription."""
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            for listener in list(feed.listeners):
                listener._end()
            feed.stop()
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
