"""Live progress of a run on the terminal: steps done, in flight, retries, tokens."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from taskloom.contracts import (
    CacheHit,
    Event,
    RunCancelledEvent,
    RunFailed,
    RunSucceeded,
    StepFailedEvent,
    StepRetrying,
    StepStarted,
    StepSucceeded,
)


class Progress:
    """Counts a run's events and redraws one status line (when ``live``)."""

    def __init__(self, console: Console, *, title: str, live: bool) -> None:
        self.title = title
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.cached = 0
        self.tokens = 0
        self.in_flight: set[tuple[str, int | None]] = set()
        self.started = time.monotonic()
        self._live = (
            Live(self.render(), console=console, refresh_per_second=8, transient=True)
            if live
            else None
        )

    def render(self) -> Text:
        elapsed = time.monotonic() - self.started
        line = (
            f"{self.title}: {self.done} done, {len(self.in_flight)} in flight, "
            f"{self.retries} retries, {self.failed} failed, {self.tokens} tokens, {elapsed:.1f}s"
        )
        if self.cached:
            line += f", {self.cached} cached"
        return Text(line)

    def update(self, event: Event) -> None:
        key = (getattr(event, "step_id", ""), getattr(event, "item", None))
        if isinstance(event, StepStarted):
            self.in_flight.add(key)
        elif isinstance(event, StepSucceeded):
            self.in_flight.discard(key)
            self.done += 1
            self.tokens += event.usage.total_tokens
        elif isinstance(event, StepFailedEvent):
            self.in_flight.discard(key)
            self.failed += 1
        elif isinstance(event, StepRetrying):
            self.retries += 1
        elif isinstance(event, CacheHit):
            self.cached += 1
        elif isinstance(event, RunSucceeded | RunFailed | RunCancelledEvent):
            self.in_flight.clear()
        if self._live is not None:
            self._live.update(self.render())

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
