"""A state machine drives RunStore beside a plain model: checkpoints and events never drift."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_runstore_support import make_step

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import StepStarted
from taskloom.sdk._runs.store import RunStore

_step_ids = st.sampled_from(["a", "b", "map"])
_items = st.none() | st.integers(0, 3)


class RunStoreMachine(RuleBasedStateMachine):
    """Rules write through the store (alone, concurrently, across reopen); the model is a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.storage = MemoryStorage()
        self.store = RunStore(self.storage)
        self.steps: dict[tuple[str, int | None], Any] = {}
        self.events: list[float] = []
        self.clock = 0.0

    def teardown(self) -> None:
        self.runner.run(self.store.aclose())
        self.runner.close()

    @rule(step_id=_step_ids, item=_items, output=st.integers())
    def record_one(self, step_id: str, item: int | None, output: int) -> None:
        """One awaited checkpoint; a later one for the same step replaces it."""
        self.runner.run(self.store.record_step(make_step(step_id, item, output=output)))
        self.steps[(step_id, item)] = output

    @rule(items=st.lists(st.tuples(_step_ids, _items, st.integers()), min_size=1, max_size=12))
    def record_many(self, items: list[tuple[str, int | None, int]]) -> None:
        """Concurrent checkpoints; for one key, the last queued wins."""

        async def go() -> None:
            await asyncio.gather(
                *(self.store.record_step(make_step(s, i, output=o)) for s, i, o in items)
            )

        self.runner.run(go())
        for step_id, item, output in items:
            self.steps[(step_id, item)] = output

    @rule(count=st.integers(1, 5))
    def emit(self, count: int) -> None:
        """Events are queued without waiting."""

        async def go() -> None:
            for _ in range(count):
                self.clock += 1
                self.store.record_event(StepStarted(run_id="run1", at=self.clock, step_id="a"))

        self.runner.run(go())
        self.events.extend(self.clock - count + 1 + k for k in range(count))

    @rule()
    def reopen(self) -> None:
        """A new store over the same data (a new process) sees everything written."""
        self.runner.run(self.store.aclose())
        self.store = RunStore(self.storage.reopen())

    @invariant()
    def checkpoints_match(self) -> None:
        done = self.runner.run(self.store.finished_steps("run1"))
        assert {key: rec.output for key, rec in done.items()} == self.steps

    @invariant()
    def events_match(self) -> None:
        read = self.runner.run(self.store.events("run1"))
        assert [seq for seq, _ in read] == list(range(1, len(self.events) + 1))
        assert [event.at for _, event in read] == self.events


TestRunStoreMachine = RunStoreMachine.TestCase
TestRunStoreMachine.settings = settings(max_examples=30, stateful_step_count=15, deadline=None)
