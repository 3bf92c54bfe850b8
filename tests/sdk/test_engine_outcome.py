"""A run's outcome is announced only as what its stored record says."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CommitResult,
    Event,
    Op,
    Put,
    RunCancelled,
    RunCancelledEvent,
    RunFailed,
    RunSucceeded,
    StorageUnavailable,
    ValueTooLarge,
)
from taskloom.sdk import EventBus
from taskloom.sdk._runs.records import NS_RUNS

OUTCOMES = (RunSucceeded, RunFailed, RunCancelledEvent)


def _outcomes(events: Any) -> list[type]:
    """The types of the outcome events among ``events``, in order."""
    return [type(e) for e in events if isinstance(e, OUTCOMES)]


def _says_succeeded(ops: Sequence[Op]) -> bool:
    """Whether a commit writes a run record whose status is "succeeded"."""
    return any(
        isinstance(op, Put) and op.namespace == NS_RUNS and b'"succeeded"' in op.value for op in ops
    )


class NoSuccessRecords(MemoryStorage):
    """Refuses to write a run record that says "succeeded" (a store failing at the end)."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        if _says_succeeded(ops):
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
        stored = [e for _n, e in await engine.runstore.events(runs[0].run_id)]
    assert _outcomes(stored) == [RunFailed]


async def test_a_run_record_too_large_to_store_fails_the_run_without_a_stored_success() -> None:
    """An output the run record cannot hold (each step's checkpoint fits) fails the run:
    ValueTooLarge reaches the caller, and RunSucceeded is neither announced nor stored."""
    big = FakeExecutor(reply=lambda _request: "x" * 2_500_000)
    raw = pipeline(
        {"id": "a", "prompt": "a"},
        {"id": "b", "prompt": "b"},
        output={"a": "{{steps.a.output}}", "b": "{{steps.b.output}}"},
    )
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, types=list(OUTCOMES))
    engine, _ = make_engine(big, bus=bus)
    async with engine:
        with pytest.raises(ValueTooLarge):
            await engine.run(raw)
        assert engine.runstore is not None
        (run,) = await engine.runstore.list_runs()
        stored = [e for _n, e in await engine.runstore.events(run.run_id)]
        await bus.drain()
    await bus.aclose()
    assert run.status == "failed"
    assert _outcomes(stored) == [RunFailed]
    assert [type(e) for e in seen] == [RunFailed]


class HoldsAroundSuccess(MemoryStorage):
    """Holds a commit for a while: the one writing the "succeeded" record, or (``after``)
    the first one after it; ``holding`` is set when it starts holding."""

    def __init__(self, *, after: bool = False) -> None:
        super().__init__()
        self.after = after
        self.succeeded = False
        self.holding = asyncio.Event()

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        now = self.succeeded if self.after else _says_succeeded(ops)
        if now and not self.holding.is_set():
            self.holding.set()
            await asyncio.sleep(0.05)
        result = await super().commit(ops)
        self.succeeded = self.succeeded or _says_succeeded(ops)
        return result


async def _cancel_while_held(
    storage: HoldsAroundSuccess, *, cancels: int = 1
) -> tuple[str, list[Event], list[Event], list[Event], list[int]]:
    """Start a run, cancel it ``cancels`` times once the storage holds a commit; return
    its stored status, stored events, the handle's events, the bus's outcome events and
    the stored event numbers."""
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, types=list(OUTCOMES))
    engine, _ = make_engine(storage=storage, bus=bus)
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "hi"}))
        await storage.holding.wait()
        for attempt in range(cancels):
            if attempt:
                await asyncio.sleep(0.01)
            handle.cancel()
        with contextlib.suppress(RunCancelled, asyncio.CancelledError):
            await handle.result()
        assert engine.runstore is not None
        status = (await engine.runstore.load_run(handle.run_id)).status
        numbered = await engine.runstore.events(handle.run_id)
        from_handle = [e async for e in handle.events()]
        await bus.drain()
    await bus.aclose()
    stored = [e for _n, e in numbered]
    return status, stored, from_handle, seen, [n for n, _e in numbered]


async def test_a_cancel_while_the_success_is_being_recorded_leaves_one_outcome() -> None:
    """Cancelling while the commit of the succeeded record is in flight: that commit
    lands, the record stays succeeded, and exactly one outcome is stored and announced."""
    status, stored, from_handle, seen, _numbers = await _cancel_while_held(HoldsAroundSuccess())
    assert status == "succeeded"
    assert _outcomes(stored) == [RunSucceeded]
    assert _outcomes(from_handle) == [RunSucceeded]
    assert [type(e) for e in seen] == [RunSucceeded]


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


class Snapshot(MemoryStorage):
    """Copies the store the moment the record saying "succeeded" is committed: what a
    process dying right then leaves behind."""

    taken: Any = None

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        result = await super().commit(ops)
        if self.taken is None and _says_succeeded(ops):
            self.taken = copy.deepcopy(self._data)
        return result


async def test_the_outcome_event_is_committed_with_the_record_that_says_it() -> None:
    """A crash right after the finished record is durable never leaves the history
    without its RunSucceeded."""
    storage = Snapshot()
    _seen, result = await _run(storage)
    crashed = MemoryStorage()
    crashed._data = storage.taken
    async with make_engine(storage=crashed)[0] as engine:
        assert engine.runstore is not None
        assert (await engine.runstore.load_run(result.run_id)).status == "succeeded"
        history = await engine.runstore.events(result.run_id)
        assert isinstance(history[-1][1], RunSucceeded)


async def test_a_cancel_after_the_success_is_recorded_leaves_the_run_succeeded() -> None:
    """Cancelling while the writes after the success are in flight neither rewrites the
    record as cancelled nor adds a second outcome event."""
    storage = HoldsAroundSuccess(after=True)
    status, stored, _from_handle, seen, _numbers = await _cancel_while_held(storage)
    assert status == "succeeded"
    assert _outcomes(stored) == [RunSucceeded]
    assert [type(e) for e in seen] == [RunSucceeded]


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
async def test_resuming_a_run_whose_event_count_is_unknown_numbers_every_event_once(
    kind: str, tmp_path: Any
) -> None:
    """A run that crashed after its last checkpoint (record still running) resumes in a new
    engine whose writer and final write both need the run's event count (reads that take
    time, on a real adapter): it finishes, and no two stored events share a number."""
    from taskloom.adapters.filesystem import FileStorage
    from taskloom.adapters.sqlite import SQLiteStorage

    for attempt in range(3):
        storage: Any = (
            await SQLiteStorage.open(tmp_path / f"runs{attempt}.db")
            if kind == "sqlite"
            else await FileStorage.open(tmp_path / f"runs{attempt}")
        )
        engine, _ = make_engine(storage=storage)
        async with engine:
            done = await engine.run(
                pipeline({"id": "a", "prompt": "hi"}, {"id": "b", "prompt": "x"})
            )
            assert engine.runstore is not None
            record = await engine.runstore.load_run(done.run_id)
            crashed = attrs.evolve(record, status="running", finished_at=None, output=None)
            await engine.runstore.update_run(crashed)
        resumed_engine, _ = make_engine(storage=storage)
        async with resumed_engine:
            result = await asyncio.wait_for(resumed_engine.resume(done.run_id), 10)
            assert result.status == "succeeded"
            assert resumed_engine.runstore is not None
            numbers = [n for n, _e in await resumed_engine.runstore.events(done.run_id)]
        assert numbers == list(range(1, len(numbers) + 1))
        await storage.aclose()


async def test_a_repeated_cancel_while_the_success_is_recorded_still_leaves_one_outcome() -> None:
    """Cancelling again while the engine waits for the success's commit does not let it
    write a second final entry: the run stays succeeded with one outcome, numbered once."""
    status, stored, _from_handle, _seen, numbers = await _cancel_while_held(
        HoldsAroundSuccess(), cancels=2
    )
    assert status == "succeeded"
    assert _outcomes(stored) == [RunSucceeded]
    assert numbers == list(range(1, len(stored) + 1))
