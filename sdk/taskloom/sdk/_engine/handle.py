"""What a caller holds while a run goes: ``RunHandle``, and what it gets: ``RunResult``.

A run started with ``Engine.start`` keeps every event it emitted (``_History``),
so ``handle.events()`` yields them all even to an iterator opened late, then
follows the live ones until the run ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import attrs

from taskloom.contracts import ErrorInfo, Event, RunCancelled, Usage


@attrs.frozen(kw_only=True)
class RunResult:
    """The outcome of a run: its output, what it cost, and every step's output.

    ``status`` is ``succeeded``, or ``waiting`` when the run paused at input steps
    (not an error: ``waiting`` names them, the output is None until it finishes).
    """

    run_id: str
    status: str
    output: Any
    usage: Usage = attrs.field(factory=Usage)
    usage_by_executor: dict[str, Usage] = attrs.field(factory=dict)
    steps: dict[str, Any] = attrs.field(factory=dict)
    error: ErrorInfo | None = None
    waiting: tuple[str, ...] = ()
    """Status ``waiting``: the input steps the run waits at (provide each a value with
    ``engine.provide(run_id, step_id, value)``)."""


class History:
    """A run's events so far, for ``RunHandle.events()`` (late iterators see them all)."""

    __slots__ = ("_waiter", "done", "events")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: Event) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def iterate(self) -> AsyncIterator[Event]:
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.done:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)


class RunHandle:
    """A run started with ``Engine.start``: its id, its events, its result, cancel."""

    def __init__(self, run_id: str, task: asyncio.Task[RunResult], history: History) -> None:
        self.run_id = run_id
        self._task = task
        self._history = history
        self._cancel_requested = False

    def events(self) -> AsyncIterator[Event]:
        """Every event of the run, from the first (even if already emitted) to the last."""
        return self._history.iterate()

    async def result(self) -> RunResult:
        """Wait for the run; raise StepFailed, RunCancelled or the error that stopped it."""
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                raise RunCancelled(
                    f"run {self.run_id} was cancelled; resume it with engine.resume"
                    f"({self.run_id!r})"
                ) from None
            raise

    def cancel(self) -> None:
        """Cancel the run: in-flight steps are cancelled, the run is recorded as cancelled."""
        self._cancel_requested = True
        self._task.cancel()

    def done(self) -> bool:
        """True once the run has finished, whatever the outcome."""
        return self._task.done()
