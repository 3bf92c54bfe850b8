"""The event log of runs: events queued per run, packed into one stream entry per commit.

A run's stream ``run:{run_id}:events`` holds :class:`EventBatch` entries: all the
events of that run recorded since the previous group commit, numbered from
``first``. Event numbers are gapless from 1 per run, so readers see one event per
number exactly as if each had its own entry, while a 10,000-item map's 20,000
events cost about one append per commit instead of 20,000.

To number a run's events, a process learns the run's event count once, from the
stream's last entry (found with O(log n) one-entry reads); a new run starts at 1.
Whoever takes a run's lease forgets what it knew, since another process may have
written events meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from taskloom.contracts import (
    Append,
    Check,
    Event,
    Op,
    StorageAdapter,
    StreamEntry,
    TaskloomError,
    ValueTooLarge,
    check_name,
)
from taskloom.sdk._runs.codec import decode_event_batch, encode_event, encode_event_batch
from taskloom.sdk._runs.records import events_stream

ENTRY_BYTES = 512 * 1024
"""Events of one run per stream entry, in JSON bytes, before a second entry is started."""

MAX_EVENT_BYTES = 1024 * 1024
"""Largest single event (an entry must stay under MAX_VALUE_BYTES)."""

READ_PAGE = 1000
"""Stream entries read per ``read`` call."""


class EventLog:
    """Queued events per run, handed to the group-commit writer as appends."""

    def __init__(
        self, storage: StorageAdapter, *, fence: Callable[[str], Check | None] | None = None
    ) -> None:
        self._storage = storage
        self._fence = fence
        """The version check that fences a run's writes (None: the run is not fenced)."""
        self._pending: dict[str, list[str]] = {}
        """Encoded events per run, waiting for the next batch."""
        self._next: dict[str, int] = {}
        """The number the next event of a run gets."""
        self._errors: dict[str, TaskloomError] = {}
        self._learning: dict[str, asyncio.Future[None]] = {}
        """Runs whose event count is being read from storage, and who waits for it."""
        """Why a run's queued events could not be collected (its stream could not be read)."""

    # --- writing ----------------------------------------------------------------------

    def add(self, event: Event) -> bool:
        """Queue ``event``; encoding now makes a bad event fail its emitter, not a batch.

        True when the writer must be told: the run had nothing queued (so nobody
        asked for a batch of it yet), or its events are held back by an error.
        """
        encoded = encode_event(event)
        if len(encoded) > MAX_EVENT_BYTES:
            self.encode(event)  # raises ValueTooLarge (one call less per event otherwise)
        queued = self._pending.get(event.run_id)
        if queued is None:
            # the stream name is checked once per run and batch, not once per event
            check_name(events_stream(event.run_id), what="event stream")
            queued = self._pending[event.run_id] = []
            queued.append(encoded)
            return True
        queued.append(encoded)
        return event.run_id in self._errors

    @staticmethod
    def encode(event: Event) -> str:
        """``event`` as JSON text; ``ValueTooLarge`` past MAX_EVENT_BYTES."""
        encoded = encode_event(event)
        if len(encoded) > MAX_EVENT_BYTES:
            raise ValueTooLarge(
                f"a {type(event).__name__} event of run {event.run_id} is {len(encoded)} bytes "
                f"of JSON; the limit is {MAX_EVENT_BYTES}: keep large data out of events",
                size=len(encoded),
                limit=MAX_EVENT_BYTES,
            )
        return encoded

    def queued_size(self, run_id: str) -> int:
        """Bytes of JSON of the run's queued events."""
        return sum(len(text) + 1 for text in self._pending.get(run_id, ()))

    async def take_last(self, run_id: str, text: str) -> tuple[Append, int, list[str]]:
        """The run's queued events and ``text`` (its last event) as one stream entry.

        The queued events are taken off the queue; the caller writes the entry with
        the run's final record and then calls ``settle_last``. Returns the append,
        the number the entry's first event has, and the texts taken.
        """
        check_name(events_stream(run_id), what="event stream")
        first = await self._known_next(run_id)
        stream = events_stream(run_id)
        texts = [*self._pending.pop(run_id, []), text]
        self._errors.pop(run_id, None)
        return Append(stream=stream, payload=encode_event_batch(first, texts)), first, texts

    def settle_last(self, run_id: str, first: int, texts: list[str], *, written: bool) -> None:
        """After the final write: count the entry's events, or (not written) put the
        queued ones back in front of anything queued since, without the last event."""
        if written:
            self._next[run_id] = first + len(texts)
            return
        back = texts[:-1] + self._pending.pop(run_id, [])
        if back:
            self._pending[run_id] = back

    def has_pending(self) -> bool:
        """Whether events are waiting for a batch."""
        return bool(self._pending)

    def new_run(self, run_id: str) -> None:
        """A run was just created: its stream is empty, no need to look."""
        self._next.setdefault(run_id, 1)

    def forget(self, run_id: str) -> None:
        """Another process may have advanced the run: learn its event count again."""
        if run_id not in self._pending:
            self._next.pop(run_id, None)

    def drop(self, run_id: str) -> None:
        """The run's lease was lost: drop its queued events and what was known of it."""
        self._pending.pop(run_id, None)
        self._next.pop(run_id, None)
        self._errors.pop(run_id, None)

    def release(self, run_id: str) -> None:
        """The run's drive ended here: keep nothing of it unless events are still queued."""
        if run_id not in self._pending and run_id not in self._learning:
            self._next.pop(run_id, None)
            self._errors.pop(run_id, None)

    def error_of(self, run_id: str | None = None) -> TaskloomError | None:
        """Why queued events (of ``run_id``, or of any run) cannot be written, if so."""
        for failed, error in self._errors.items():
            if failed in self._pending and (run_id is None or failed == run_id):
                return error
        return None

    async def collect(self) -> list[Op]:
        """Turn the queued events into appends: one entry per run (more if very large).

        If a run's event count cannot be learnt (the storage is down, the last entry
        is damaged), that run's events stay queued and ``error_of`` says why; the
        other runs' events go ahead.
        """
        ops: list[Op] = []
        for run_id in list(self._pending):
            stream = events_stream(run_id)
            try:
                first = await self._known_next(run_id)
            except TaskloomError as exc:
                self._errors[run_id] = exc
                continue
            pending = self._pending.pop(run_id, None)
            if pending is None:
                continue  # taken while the count was read (by a run's final write)
            self._errors.pop(run_id, None)
            if sum(map(len, pending)) + len(pending) < ENTRY_BYTES:  # the usual case
                ops.append(Append(stream=stream, payload=encode_event_batch(first, pending)))
                first += len(pending)
                pending = []  # (what the loop below would have made one entry of)
            start = 0
            while start < len(pending):
                size, end = 0, start
                while end < len(pending) and (end == start or size < ENTRY_BYTES):
                    size += len(pending[end]) + 1
                    end += 1
                chunk = pending[start:end]
                ops.append(Append(stream=stream, payload=encode_event_batch(first, chunk)))
                first += len(chunk)
                start = end
            if self._fence is not None:
                check = self._fence(run_id)
                if check is not None:
                    ops.append(check)
            self._next[run_id] = first
        return ops

    async def _known_next(self, run_id: str) -> int:
        """The number the run's next event gets, read from storage at most once at a time.

        The flusher and a run's final write may both need a resumed run's count; the
        second waits for the first's read instead of reading (and numbering) again.
        """
        while run_id not in self._next:
            learning = self._learning.get(run_id)
            if learning is not None:
                await asyncio.shield(learning)
                continue
            learning = self._learning[run_id] = asyncio.get_running_loop().create_future()
            try:
                count = await self._count(events_stream(run_id))
            except BaseException as exc:
                del self._learning[run_id]
                if isinstance(exc, Exception):
                    learning.set_exception(exc)
                    learning.exception()  # (seen: each waiter gets it raised)
                else:
                    learning.cancel()
                raise
            del self._learning[run_id]
            self._next.setdefault(run_id, count + 1)
            learning.set_result(None)
        return self._next[run_id]

    # --- reading ----------------------------------------------------------------------

    async def read(self, run_id: str, *, after: int, limit: int | None) -> list[tuple[int, Event]]:
        """Events numbered above ``after``, at most ``limit``, oldest first."""
        stream = events_stream(run_id)
        entry_after = await self._entry_before(stream, after + 1) if after else 0
        found: list[tuple[int, Event]] = []
        while True:
            entries = await self._storage.read(stream, after=entry_after, limit=READ_PAGE)
            for entry in entries:
                batch = decode_event_batch(
                    entry.payload, where=f"stream {stream} entry {entry.seq}"
                )
                for offset, event in enumerate(batch.events):
                    number = batch.first + offset
                    if number > after:
                        found.append((number, event))
                        if limit is not None and len(found) >= limit:
                            return found
            if len(entries) < READ_PAGE:
                return found
            entry_after = entries[-1].seq

    async def _entry(self, stream: str, seq: int) -> StreamEntry | None:
        entries = await self._storage.read(stream, after=seq - 1, limit=1)
        return entries[0] if entries else None

    async def _last_entry(self, stream: str) -> StreamEntry | None:
        """The stream's last entry: an exponential probe, then a binary search."""
        if await self._entry(stream, 1) is None:
            return None
        low, high = 1, 2  # entry ``low`` exists; find a ``high`` that does not
        while await self._entry(stream, high) is not None:
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if await self._entry(stream, middle) is not None:
                low = middle
            else:
                high = middle
        return await self._entry(stream, low)

    async def _count(self, stream: str) -> int:
        last = await self._last_entry(stream)
        if last is None:
            return 0
        batch = decode_event_batch(last.payload, where=f"stream {stream} entry {last.seq}")
        return batch.first + len(batch.events) - 1

    async def _first_of(self, stream: str, seq: int) -> int:
        entry = await self._entry(stream, seq)
        if entry is None:
            raise TaskloomError(f"stream {stream} lost entry {seq} while it was being read")
        return decode_event_batch(entry.payload, where=f"stream {stream} entry {seq}").first

    async def _entry_before(self, stream: str, number: int) -> int:
        """The sequence number just before the entry holding event ``number``."""
        last = await self._last_entry(stream)
        if last is None or await self._first_of(stream, 1) > number:
            return 0
        low, high = 1, last.seq  # the answer is the largest entry whose first is <= number
        while low < high:
            middle = (low + high + 1) // 2
            if await self._first_of(stream, middle) <= number:
                low = middle
            else:
                high = middle - 1
        return low - 1
