"""Live progress of a run on the terminal: steps done, in flight, retries, tokens, the
elapsed time (redrawn as it ticks, not only when an event comes) and each map's items
done out of its total when the total is known before the run (a map over an input)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any

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
from taskloom.sdk._cli.context import clean


class Progress:
    """Counts a run's events and redraws one status line (when ``live``)."""

    def __init__(
        self,
        console: Console,
        *,
        title: str,
        live: bool,
        map_totals: Mapping[str, int] | None = None,
        map_done: Mapping[str, int] | None = None,
    ) -> None:
        """``map_totals``: items of each map known up front; ``map_done``: items of each
        map finished before (a resume)."""
        self.title = title
        self.map_totals = dict(map_totals or {})
        self.items_done: Counter[str] = Counter(map_done or {})
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.cached = 0
        self.tokens = 0
        self.in_flight: set[tuple[str, int | None]] = set()
        self.started = time.monotonic()
        self._live = (
            Live(
                console=console,
                refresh_per_second=8,
                transient=True,
                get_renderable=self.render,  # called at each refresh: the clock ticks
            )
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
        for step_id in dict.fromkeys([*self.map_totals, *self.items_done]):
            total = self.map_totals.get(step_id)
            done = self.items_done[step_id]
            line += f", {step_id} {done}/{total}" if total is not None else f", {step_id} {done}"
        return Text(clean(line))  # a pipeline's name or step ids are data: inert

    def update(self, event: Event) -> None:
        key = (getattr(event, "step_id", ""), getattr(event, "item", None))
        if isinstance(event, StepStarted):
            self.in_flight.add(key)
        elif isinstance(event, StepSucceeded):
            self.in_flight.discard(key)
            self.done += 1
            self.tokens += event.usage.total_tokens
            if event.item is not None:
                self.items_done[event.step_id] += 1
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
            self._live.refresh()

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


_INPUT_REF = re.compile(r"^\{\{\s*inputs\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


def map_totals(pipeline: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, int]:
    """The item count of each map over an input list (``"map": "{{inputs.docs}}"``), known
    before the run starts; maps over a step's output are counted as they go."""
    totals: dict[str, int] = {}

    def visit(steps: object) -> None:
        if not isinstance(steps, list):
            return
        for step in steps:
            if not isinstance(step, dict):
                continue
            ref = _INPUT_REF.match(step["map"]) if isinstance(step.get("map"), str) else None
            value = inputs.get(ref.group(1)) if ref else None
            if isinstance(value, list) and isinstance(step.get("id"), str):
                totals[step["id"]] = len(value)
            visit(step.get("parallel"))

    visit(pipeline.get("steps"))
    return totals
