"""A run's outcome is announced only as what its stored record says."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine_support import make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CommitResult,
    Event,
    Op,
    Put,
    RunFailed,
    RunSucceeded,
    StorageUnavailable,
)
from taskloom.sdk import EventBus
from taskloom.sdk._runrecords import NS_RUNS


class NoSuccessRecords(MemoryStorage):
    """Refuses to write a run record that says "succeeded" (a store failing at the end)."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        for op in ops:
            if isinstance(op, Put) and op.namespace == NS_RUNS and b'"succeeded"' in op.value:
                raise StorageUnavailable("disk full")
        return await super().commit(ops)


async def _run(storage: MemoryStorage) -> tuple[list[Event], Any]:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, types=[RunSucceeded, RunFailed])
    engine, _ = make_engine(bus=bus, storage=storage)
    outcome: Any
    async with engine:
        try:
            outcome = await engine.run(pipeline({"id": "a", "prompt": "hi"}))
        except StorageUnavailable as exc:
            outcome = exc
        await bus.drain()
    await bus.aclose()
    return seen, outcome


async def test_a_success_whose_record_cannot_be_written_is_announced_as_a_failure() -> None:
    """Subscribers never see RunSucceeded for a run stored as failed; the error reaches the
    caller and the stored record says failed."""
    storage = NoSuccessRecords()
    seen, outcome = await _run(storage)
    assert isinstance(outcome, StorageUnavailable)
    assert [type(e) for e in seen] == [RunFailed]
    async with make_engine(storage=storage.reopen())[0] as engine:
        assert engine.runstore is not None
        runs = await engine.runstore.list_runs()
        assert [r.status for r in runs] == ["failed"]


async def test_a_success_is_announced_and_stored_as_the_last_event() -> None:
    """RunSucceeded reaches subscribers and is the last event of the stored history."""
    storage = MemoryStorage()
    seen, result = await _run(storage)
    assert [type(e) for e in seen] == [RunSucceeded]
    async with make_engine(storage=storage.reopen())[0] as engine:
        assert engine.runstore is not None
        history = await engine.runstore.events(result.run_id)
        assert isinstance(history[-1][1], RunSucceeded)
        assert (await engine.runstore.load_run(result.run_id)).status == "succeeded"
