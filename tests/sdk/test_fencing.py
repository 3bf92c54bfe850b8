"""Fencing: a process that lost a run's lease writes nothing more of it and calls nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from attrs import evolve as attrs_evolve

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CompletionRequest,
    CompletionResult,
    LeaseLost,
    RunHeld,
    RunStarted,
    StepSucceeded,
)
from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk._runs.records import NS_STEPS, RunRecord, StepRecord
from taskloom.sdk._runs.store import RunStore


class Clock:
    """A clock both stores share, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _step(run_id: str, step_id: str) -> StepRecord:
    return StepRecord(run_id=run_id, step_id=step_id, output="x", started_at=1.0, finished_at=2.0)


def _record(run_id: str) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        pipeline_name="p",
        pipeline_digest="d",
        pipeline={},
        inputs={},
        status="running",
        created_at=1.0,
    )


TakenOver = tuple[MemoryStorage, RunStore, RunStore, Clock]


@pytest.fixture
async def taken_over() -> AsyncIterator[TakenOver]:
    """Two run stores on one storage: ``stale`` held r1's lease, froze, ``fresh`` took it."""
    storage = MemoryStorage()
    clock = Clock()
    stale, fresh = RunStore(storage, clock=clock), RunStore(storage, clock=clock)
    await stale.acquire_lease("r1", "stale", ttl_s=10)
    await stale.create_run(_record("r1"))
    clock.now += 11  # the stale holder froze past its TTL
    await fresh.acquire_lease("r1", "fresh", ttl_s=10)
    yield storage, stale, fresh, clock
    await stale.aclose()
    await fresh.aclose()


async def test_stale_checkpoint_is_refused_with_lease_lost(taken_over: TakenOver) -> None:
    """A checkpoint of the holder that was taken over fails with LeaseLost and is not stored."""
    storage, stale, fresh, _clock = taken_over
    with pytest.raises(LeaseLost):
        await stale.record_step(_step("r1", "a"))
    assert await storage.get(NS_STEPS, "r1/a/-") is None
    await fresh.record_step(_step("r1", "b"))  # the new holder writes as usual
    assert await storage.get(NS_STEPS, "r1/b/-") is not None
    with pytest.raises(LeaseLost):  # and every later write of the stale holder fails at once
        await stale.update_run(_record("r1"))


async def test_stale_events_never_land_and_numbers_stay_gapless(taken_over: TakenOver) -> None:
    """Events queued by the stale holder are dropped; the new holder's are numbered 1, 2, ..."""
    _storage, stale, fresh, clock = taken_over
    started = RunStarted(run_id="r1", at=clock(), pipeline="p", pipeline_digest="d")
    stale.record_event(started)
    fresh.record_event(started)
    await fresh.flush()
    await stale.flush()  # the stale holder's batch fails its check and is dropped, not raised
    stale.record_event(started)  # after the loss is known, nothing is even queued
    await stale.flush()
    numbers = [n for n, _e in await fresh.events("r1")]
    assert numbers == [1]


async def test_stale_write_does_not_fail_another_runs_writes(taken_over: TakenOver) -> None:
    """One batch holds a lost run's checkpoint and a live run's: only the lost one fails."""
    storage, stale, _fresh, _clock = taken_over
    await stale.acquire_lease("r2", "stale", ttl_s=1000)
    lost = stale.queue_step(_step("r1", "a"))
    kept = stale.queue_step(_step("r2", "a"))
    with pytest.raises(LeaseLost):
        await lost
    await kept
    assert await storage.get(NS_STEPS, "r2/a/-") is not None
    assert await storage.get(NS_STEPS, "r1/a/-") is None


async def test_ensure_lease_refuses_after_a_stall(taken_over: TakenOver) -> None:
    """Past its lease's expiry a holder asks storage before a call and learns it lost."""
    _storage, stale, _fresh, _clock = taken_over
    assert not stale.check_lease("r1")  # the known lease has expired: must look first
    with pytest.raises(LeaseLost):
        await stale.ensure_lease("r1")
    with pytest.raises(LeaseLost):  # known from now on, without asking storage
        stale.check_lease("r1")


async def test_ensure_lease_renews_a_lease_nobody_took() -> None:
    """A holder that stalled past its TTL but was not taken over renews and goes on."""
    storage = MemoryStorage()
    clock = Clock()
    store = RunStore(storage, clock=clock)
    await store.acquire_lease("r1", "me", ttl_s=10)
    clock.now += 30
    await store.ensure_lease("r1")
    assert store.check_lease("r1")


class GatedExecutor:
    """Counts calls; every call waits until the test opens the gate."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        self.calls += 1
        await self.gate.wait()
        return CompletionResult(text=f"re:{request.messages[-1].content}")

    async def stream(self, request: CompletionRequest, /) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


async def test_engine_that_lost_its_lease_starts_no_call_and_writes_nothing() -> None:
    """A run taken over mid-step: the stale engine's in-flight reply is not stored, it
    starts no further call and exits with LeaseLost instead of recording an outcome."""
    storage = MemoryStorage()
    clock = Clock()
    executor = GatedExecutor()
    registry = ExecutorRegistry()
    registry.register("gated", executor)
    pipe = {
        "taskloom": "pipeline/v1",
        "name": "two",
        "steps": [
            {"id": "a", "prompt": "one", "executor": "gated", "model": "m"},
            {"id": "b", "prompt": "two", "executor": "gated", "model": "m"},
        ],
    }
    seen: list[Any] = []
    async with Engine(storage=storage, registry=registry, clock=clock, lease_ttl_s=10) as engine:
        engine.bus.subscribe(seen.append)
        handle = engine.start(pipe)
        while executor.calls < 1:
            await asyncio.sleep(0)
        clock.now += 11  # stalled past the TTL: another process takes the run over
        other = RunStore(storage, clock=clock)
        await other.acquire_lease(handle.run_id, "other", ttl_s=10)
        executor.gate.set()
        with pytest.raises(LeaseLost):
            await handle.result()
        assert executor.calls == 1  # step b was never called
    assert await storage.get(NS_STEPS, f"{handle.run_id}/a/-") is None
    record = await other.load_run(handle.run_id)
    assert record.status == "running"  # no outcome of the stale engine landed
    assert not [e for e in await other.events(handle.run_id) if isinstance(e[1], StepSucceeded)]


async def test_recovery_claim_fences_out_the_former_holder_at_once() -> None:
    """The claim of a run whose lease expired moves the fence in the same commit: the
    former holder's next write fails even before the new holder starts the run."""
    from taskloom.sdk._queue.claim import claim_expired

    storage = MemoryStorage()
    clock = Clock()
    stale = RunStore(storage, clock=clock)
    await stale.acquire_lease("r1", "stale", ttl_s=10)
    await stale.create_run(_record("r1"))
    clock.now += 11
    worker = RunStore(storage, clock=clock)
    claim = await claim_expired(worker, "worker", ["default"], ttl_s=10)
    assert claim is not None and claim.run_id == "r1"
    with pytest.raises(LeaseLost):
        await stale.record_step(_step("r1", "a"))
    assert await storage.get(NS_STEPS, "r1/a/-") is None
    await stale.aclose()
    await worker.aclose()


class PerPromptGates:
    """Each prompt's call waits for its own gate; records calls that were cancelled."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        prompt = request.messages[-1].content
        self.started.append(prompt)
        gate = self.gates.setdefault(prompt, asyncio.Event())
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(prompt)
            raise
        return CompletionResult(text=f"re:{prompt}")

    async def stream(self, request: CompletionRequest, /) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


async def test_a_write_that_fails_its_fence_stops_the_calls_in_flight() -> None:
    """When a finished item's checkpoint fails its fence check, the run stops at once: the
    other item's call in flight is cancelled, not left running until the next renewal."""
    storage = MemoryStorage()
    clock = Clock()
    executor = PerPromptGates()
    registry = ExecutorRegistry()
    registry.register("gated", executor)
    pipe = {
        "taskloom": "pipeline/v1",
        "name": "pair",
        "inputs": {"items": {"type": "array"}},
        "steps": [
            {
                "id": "m",
                "map": "{{inputs.items}}",
                "concurrency": 2,
                "step": {"id": "b", "prompt": "{{item}}", "executor": "gated", "model": "m"},
            }
        ],
    }
    async with Engine(storage=storage, registry=registry, clock=clock, lease_ttl_s=600) as engine:
        handle = engine.start(pipe, {"items": ["fast", "slow"]})
        while len(executor.started) < 2:
            await asyncio.sleep(0)
        clock.now += 601
        other = RunStore(storage, clock=clock)
        await other.acquire_lease(handle.run_id, "other", ttl_s=600)
        executor.gates.setdefault("fast", asyncio.Event()).set()
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(handle.result(), 30)  # a bound, not a speed: renewal is 200 s
        assert executor.cancelled == ["slow"]
        await other.aclose()


async def test_a_lease_given_back_with_the_outcome_is_not_lost_and_needs_no_release() -> None:
    """A lease deleted in the commit of the run's outcome (with_outcome): a renewal that
    comes after stops quietly (no LeaseLost, nothing marked lost), and release_lease
    reads nothing."""
    from taskloom.contracts import Delete, RunSucceeded
    from taskloom.sdk._runs.records import NS_LEASES

    storage = MemoryStorage()
    store = RunStore(storage)
    await store.acquire_lease("r1", "me", ttl_s=10)
    await store.create_run(_record("r1"))
    store.with_outcome("r1", [Delete(namespace=NS_LEASES, key="r1")])
    done = RunSucceeded(run_id="r1", at=2.0, duration_s=1.0)
    await (await store.queue_finish(attrs_evolve(_record("r1"), status="succeeded"), done))
    assert await storage.get(NS_LEASES, "r1") is None
    assert store.lease_released("r1") and store.outcome_landed("r1")
    with pytest.raises(RunHeld) as caught:
        await store.renew_lease("r1", "me", ttl_s=10)
    assert not isinstance(caught.value, LeaseLost)
    assert store.lost_lease("r1") is None
    reads: list[str] = []
    real_get = storage.get

    async def get(namespace: str, key: str) -> Any:
        reads.append(namespace)
        return await real_get(namespace, key)

    storage.get = get  # type: ignore[method-assign]
    await store.release_lease("r1", "me")
    assert reads == [] and not store.lease_released("r1")
    await store.aclose()


async def test_operations_with_an_outcome_never_land_without_the_fence(
    taken_over: TakenOver,
) -> None:
    """A holder that was taken over records no outcome, so what it meant to give back with
    it (the new holder's lease) is not deleted."""
    from taskloom.contracts import Delete, RunSucceeded
    from taskloom.sdk._runs.records import NS_LEASES

    storage, stale, _fresh, _clock = taken_over
    stale.with_outcome("r1", [Delete(namespace=NS_LEASES, key="r1")])
    done = RunSucceeded(run_id="r1", at=2.0, duration_s=1.0)
    with pytest.raises(LeaseLost):
        await (await stale.queue_finish(attrs_evolve(_record("r1"), status="succeeded"), done))
    assert await storage.get(NS_LEASES, "r1") is not None
    assert not stale.outcome_landed("r1") and not stale.lease_released("r1")
