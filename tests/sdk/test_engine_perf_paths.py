"""Behaviour of the engine's fast paths: what they skip is never observable.

The engine skips work no one can see (a map item's start event when nobody
listens), calls an executor directly when it has no limits or timeout, and
splices plain ints into text without the JSON encoder. These tests pin that the
observable results -- events, texts, limits, timeouts -- are what the slow paths give.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Sequence
from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CommitResult,
    CompletionRequest,
    Op,
    RunCancelled,
    RunSucceeded,
    StepFailed,
    StepStarted,
    StepSucceeded,
    StorageUnavailable,
)
from taskloom.sdk import EventBus, ExecutorRegistry, ExecutorSettings
from taskloom.sdk._pipeline.template import to_text
from taskloom.sdk._runs.records import NS_STEPS


def _map(items: int, concurrency: int = 4, **body: Any) -> dict[str, Any]:
    shape: dict[str, Any] = pipeline(
        {
            "id": "m",
            "map": "{{inputs.items}}",
            "concurrency": concurrency,
            "step": {"id": "body", "prompt": "{{item}}", **body},
        },
        inputs={"items": {"type": "array"}},
    )
    return shape


class _Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("value", [0, 7, -3, 10**30, True, False, None, 1.5, "x", [1, "a"]])
def test_to_text_matches_compact_json(value: Any) -> None:
    """to_text gives strings as they are and everything else as compact JSON."""
    expected = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    assert to_text(value) == expected


def test_to_text_int_subclass_goes_through_json() -> None:
    """An int subclass (an IntEnum) is spliced as its JSON text, like before the fast path."""
    assert to_text(_Color.RED) == json.dumps(_Color.RED)


def test_bus_wants_follows_type_and_run_filters() -> None:
    """EventBus.wants is true exactly when a subscriber's filters would accept the event."""
    bus = EventBus()
    assert not bus.wants(StepStarted, "r1")
    bus.subscribe(print, types=[StepSucceeded])
    assert not bus.wants(StepStarted, "r1")
    assert bus.wants(StepSucceeded, "r1")
    sub = bus.subscribe(print, run_id="r2")
    assert bus.wants(StepStarted, "r2") and not bus.wants(StepStarted, "r1")
    sub()
    assert not bus.wants(StepStarted, "r2")


async def test_item_starts_reach_a_subscriber_for_them() -> None:
    """A bus subscriber to StepStarted still gets one start per map item, in order per item."""
    bus = EventBus()
    seen: list[Any] = []
    bus.subscribe(seen.append, types=[StepStarted, StepSucceeded])
    engine, _ = make_engine(bus=bus)
    async with engine:
        await engine.run(_map(6), {"items": list(range(6))})
        await bus.drain()
    await bus.aclose()
    starts = [e.item for e in seen if isinstance(e, StepStarted) and e.item is not None]
    assert sorted(starts) == list(range(6))
    for item in range(6):
        kinds = [type(e) for e in seen if e.item == item]
        assert kinds == [StepStarted, StepSucceeded]


async def test_item_starts_reach_a_handles_history() -> None:
    """engine.start's handle sees every map item's start even with no bus subscriber."""
    engine, _ = make_engine()
    async with engine:
        handle = engine.start(_map(5), {"items": list(range(5))})
        await handle.result()
        events = [e async for e in handle.events()]
    starts = sorted(e.item for e in events if isinstance(e, StepStarted) and e.item is not None)
    assert starts == list(range(5))
    assert isinstance(events[-1], RunSucceeded)


async def test_unobserved_item_starts_leave_stored_history_unchanged() -> None:
    """With nobody listening, the stored history still has every item's finish and no start."""
    engine, _ = make_engine()
    async with engine:
        result = await engine.run(_map(5), {"items": list(range(5))})
        stored = [e for _number, e in await engine.runstore.events(result.run_id)]
    assert result.output == [f"None|{i}" for i in range(5)]
    assert not any(isinstance(e, StepStarted) and e.item is not None for e in stored)
    finished = sorted(e.item for e in stored if isinstance(e, StepSucceeded) and e.item is not None)
    assert finished == list(range(5))


async def test_a_subscriber_added_mid_run_gets_later_item_starts() -> None:
    """Whether an item start is built is decided per item: a late subscriber sees the rest."""
    bus = EventBus()
    seen: list[Any] = []

    def reply(request: CompletionRequest) -> str:
        if request.messages[-1].content == "2" and not bus.subscriptions:
            bus.subscribe(seen.append, types=[StepStarted])
        return request.messages[-1].content

    engine, _ = make_engine(FakeExecutor(reply=reply), bus=bus)
    async with engine:
        await engine.run(_map(6, concurrency=1), {"items": list(range(6))})
        await bus.drain()
    await bus.aclose()
    assert [e.item for e in seen] == [3, 4, 5]


async def test_executor_concurrency_limit_still_holds_in_a_map() -> None:
    """A per-executor concurrency limit caps in-flight calls (the direct call path is skipped)."""
    slow = FakeExecutor(delay=0.001)
    registry = ExecutorRegistry()
    registry.register("fake", slow, settings=ExecutorSettings(concurrency=2))
    engine, _ = make_engine(registry=registry)
    async with engine:
        await engine.run(_map(8, concurrency=8), {"items": list(range(8))})
    assert slow.max_in_flight == 2


async def test_global_limit_still_holds_in_a_map() -> None:
    """The engine's max_concurrency caps in-flight calls across a wide map."""
    slow = FakeExecutor(delay=0.001)
    engine, _ = make_engine(slow, max_concurrency=3)
    async with engine:
        await engine.run(_map(9, concurrency=9), {"items": list(range(9))})
    assert slow.max_in_flight == 3


async def test_attempt_timeout_still_applies() -> None:
    """A step timeout fails a call that takes too long (no direct call when a timeout is set)."""
    engine, _ = make_engine(FakeExecutor(delay=5.0))
    body: dict[str, Any] = {"timeout_s": 0.01, "retry": {"max_attempts": 1}}
    async with engine:
        with pytest.raises(StepFailed, match="ExecutorTimeout"):
            await engine.run(_map(2, **body), {"items": [0, 1]})


class _GatedStorage(MemoryStorage):
    """MemoryStorage whose commits of map-item checkpoints wait for a gate, or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.fail_items = False

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        if any(
            getattr(op, "namespace", "") == NS_STEPS and "/m/" in getattr(op, "key", "")
            for op in ops
        ):
            if self.fail_items:
                raise StorageUnavailable("injected: the disk is gone")
            if self.gate is not None:
                await self.gate.wait()
        return await super().commit(ops)


async def test_a_sync_map_worker_calls_its_next_item_after_the_last_checkpoint() -> None:
    """durability="sync": a worker's next call waits for its last item's commit, so no
    finished item is ever lost to a crash (it used to call ahead, and up to two items per
    worker re-ran after a kill)."""
    storage = _GatedStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage, durability="sync")
    async with engine:
        handle = engine.start(_map(6, concurrency=2), {"items": list(range(6))})
        for _ in range(200):  # loop turns, not time: ample for every call not blocked
            await asyncio.sleep(0)
        calls_while_gated = fake.total_calls
        storage.gate.set()
        result = await handle.result()
        finished = await engine.runstore.finished_steps(result.run_id)
    # each of the 2 workers waits for its first item's commit before its second call
    assert calls_while_gated == 2
    assert result.output == [f"None|{i}" for i in range(6)]
    assert {item for (sid, item) in finished if sid == "m" and item is not None} == set(range(6))


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_a_failed_item_checkpoint_fails_the_run_with_the_storage_error(
    durability: str,
) -> None:
    """A deferred checkpoint that cannot be written fails the run with the storage error."""
    storage = _GatedStorage()
    storage.fail_items = True
    engine, _ = make_engine(storage=storage, durability=durability)
    async with engine:
        with pytest.raises(StorageUnavailable):
            await engine.run(_map(6, concurrency=2), {"items": list(range(6))})


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_cancelling_a_map_keeps_every_finished_items_checkpoint(durability: str) -> None:
    """A map cancelled while item checkpoints are in flight still has them all checkpointed."""
    storage = _GatedStorage()
    storage.gate = asyncio.Event()
    bus = EventBus()
    succeeded: list[int] = []

    def on_success(event: Any) -> None:
        if isinstance(event, StepSucceeded) and event.item is not None:
            succeeded.append(event.item)

    bus.subscribe(on_success, types=[StepSucceeded])
    engine, fake = make_engine(bus=bus, storage=storage, durability=durability)
    async with engine:
        handle = engine.start(_map(8, concurrency=2), {"items": list(range(8))})
        for _ in range(200):  # loop turns: until a worker called for its second item
            if fake.total_calls >= 3:
                break
            await asyncio.sleep(0)
        handle.cancel()
        storage.gate.set()
        with pytest.raises(RunCancelled):
            await handle.result()
        await bus.drain()
        finished = await engine.runstore.finished_steps(handle.run_id)
    await bus.aclose()
    done = {item for (sid, item) in finished if sid == "m" and item is not None}
    assert succeeded and set(succeeded) <= done


async def test_an_executor_registered_again_gets_its_new_limits() -> None:
    """After unregister and register with new settings, the engine enforces the new limit."""
    first = FakeExecutor(delay=0.001)
    registry = ExecutorRegistry()
    registry.register("fake", first, settings=ExecutorSettings(concurrency=2))
    engine, _ = make_engine(registry=registry)
    async with engine:
        await engine.run(_map(8, concurrency=8), {"items": list(range(8))})
        await registry.unregister("fake")
        second = FakeExecutor(delay=0.001)
        registry.register("fake", second, settings=ExecutorSettings(concurrency=5))
        await engine.run(_map(10, concurrency=10), {"items": list(range(10))})
    assert first.max_in_flight == 2
    assert second.max_in_flight == 5
