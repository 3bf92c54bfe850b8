"""Checkpoint durability modes: "async" (the default) queues checkpoints in order within a
bound and reports success only when all are durable; "sync" waits for each one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from engine_support import FakeExecutor, leftover_tasks, make_engine, pipeline
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_props import _owner, dag_pipelines, reference

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CommitResult,
    Op,
    Put,
    RunCancelled,
    RunHeld,
    StorageUnavailable,
    UsageError,
)
from taskloom.sdk import Engine
from taskloom.sdk._engine.window import DEFAULT_LIMIT
from taskloom.sdk._runs.records import NS_RUNS, NS_STEPS


class _RecordingStorage(MemoryStorage):
    """MemoryStorage that remembers which checkpoints each commit held, and can hold commits
    of checkpoints behind a gate, fail them, or let a few loop turns pass before each one."""

    def __init__(self, turns: Sequence[int] = (0,)) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, str, Any]]] = []
        self.gate: asyncio.Event | None = None
        self.fail_step: str | None = None
        self.fail_once = False
        self.offered = 0
        self.fail_commit_at: int | None = None
        self.step_commits = 0
        """Checkpoints handed to commit so far (including those held at the gate)."""
        self._turns = list(turns) or [0]

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        puts = [op for op in ops if isinstance(op, Put)]
        steps = [op for op in puts if op.namespace == NS_STEPS]
        self.offered += len(steps)
        if steps and self.fail_commit_at is not None:
            self.step_commits += 1
            if self.step_commits == self.fail_commit_at:
                raise StorageUnavailable("injected: that commit was lost")
        failing = self.fail_step
        if failing is not None and any(f"/{failing}/" in op.key for op in steps):
            if self.fail_once:
                self.fail_step = None
            raise StorageUnavailable("injected: the disk is gone")
        if steps and self.gate is not None:
            await self.gate.wait()
        for _ in range(self._turns[len(self.batches) % len(self._turns)]):
            await asyncio.sleep(0)
        result = await super().commit(ops)
        self.batches.append([(op.namespace, op.key, json.loads(op.value)) for op in puts])
        return result

    def committed_at(self) -> dict[tuple[str, str], int]:
        """The index of the commit that first held each (namespace, key)."""
        found: dict[tuple[str, str], int] = {}
        for index, batch in enumerate(self.batches):
            for namespace, key, _value in batch:
                found.setdefault((namespace, key), index)
        return found


def _chain(steps: int) -> dict[str, Any]:
    return pipeline(*({"id": f"s{i}", "prompt": f"p{i}"} for i in range(steps)))


async def _turns(count: int = 300) -> None:
    for _ in range(count):  # loop turns, not time: ample for everything not blocked
        await asyncio.sleep(0)


def test_an_unknown_durability_is_refused_with_the_choices() -> None:
    """Engine(durability=...) accepts "async" and "sync" and names both otherwise."""
    with pytest.raises(UsageError, match=r"'async'.*'sync'.*'eventually'"):
        Engine(durability="eventually")


def test_durability_comes_from_the_config_file(tmp_path: Path) -> None:
    """[engine] durability = "sync" in taskloom.toml reaches the engine."""
    config = tmp_path / "taskloom.toml"
    config.write_text('[engine]\ndurability = "sync"\n[storage]\nkind = "memory"\n')
    assert Engine.from_config(config).durability == "sync"
    config.write_text('[engine]\ndurability = "later"\n')
    with pytest.raises(UsageError, match="durability"):
        Engine.from_config(config)


async def test_async_durability_goes_on_while_commits_wait_but_does_not_report_success() -> None:
    """A chain keeps running while its checkpoints wait, and its result waits for them."""
    storage = _RecordingStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage)
    async with engine:
        handle = engine.start(_chain(5))
        await _turns()
        calls_while_gated = fake.total_calls
        done_while_gated = handle._task.done()
        storage.gate.set()
        result = await handle.result()
        finished = await engine.runstore.finished_steps(result.run_id)
    assert calls_while_gated == 5
    assert not done_while_gated
    assert result.status == "succeeded"
    assert {sid for (sid, _item) in finished} == {f"s{i}" for i in range(5)}


async def test_sync_durability_waits_for_each_checkpoint_before_the_next_step() -> None:
    """With durability="sync" the next step of a chain starts only after the last commit."""
    storage = _RecordingStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage, durability="sync")
    async with engine:
        handle = engine.start(_chain(5))
        await _turns()
        calls_while_gated = fake.total_calls
        storage.gate.set()
        await handle.result()
    assert calls_while_gated == 1


async def test_unsettled_checkpoints_are_bounded() -> None:
    """A chain whose commits are stuck stops with DEFAULT_LIMIT unsettled checkpoints plus
    its one call in flight, and the next step waits for room before its call: a crash then
    re-runs at most DEFAULT_LIMIT + 1 (a chain's widest concurrency is 1)."""
    storage = _RecordingStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage)
    async with engine:
        handle = engine.start(_chain(DEFAULT_LIMIT * 3))
        await _turns(DEFAULT_LIMIT * 4)
        calls_while_gated = fake.total_calls
        storage.gate.set()
        result = await handle.result()
    assert calls_while_gated == DEFAULT_LIMIT + 1
    assert result.status == "succeeded"
    assert fake.total_calls == DEFAULT_LIMIT * 3


async def test_map_workers_share_the_bound_of_unsettled_checkpoints() -> None:
    """Many map workers share the window: calls in flight plus finished items not yet durable
    never exceed its bound, DEFAULT_LIMIT plus the map's concurrency (a worker takes its
    slot before its call), so a crash re-runs at most that many items."""
    storage = _RecordingStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage)
    items = DEFAULT_LIMIT * 3
    concurrency = 100
    body = {
        "id": "m",
        "map": "{{inputs.items}}",
        "concurrency": concurrency,
        "step": {"id": "b", "prompt": "x"},
    }
    async with engine:
        handle = engine.start(
            pipeline(body, inputs={"items": {"type": "array"}}), {"items": list(range(items))}
        )
        await _turns(DEFAULT_LIMIT * 4)
        calls_while_gated = fake.total_calls
        queued_while_gated = storage.offered + engine.runstore._writer.pending
        storage.gate.set()
        result = await handle.result()
        finished = await engine.runstore.finished_steps(result.run_id)
    bound = DEFAULT_LIMIT + concurrency
    assert calls_while_gated == bound  # the other workers wait for room first
    assert 0 < queued_while_gated <= bound  # but only a window's worth was queued
    assert result.status == "succeeded"
    assert len([key for key in finished if key[1] is not None]) == items
    assert await leftover_tasks() == []


async def test_sync_map_workers_wait_for_each_items_checkpoint() -> None:
    """With durability="sync" a map worker calls for its next item only after the last one's
    checkpoint is durable: while commits are stuck, at most one item per worker has run,
    so a crash re-runs only the items in flight, never a finished one."""
    storage = _RecordingStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage, durability="sync")
    body = {
        "id": "m",
        "map": "{{inputs.items}}",
        "concurrency": 4,
        "step": {"id": "b", "prompt": "x{{item}}"},
    }
    async with engine:
        handle = engine.start(
            pipeline(body, inputs={"items": {"type": "array"}}), {"items": list(range(40))}
        )
        await _turns(200)
        calls_while_gated = fake.total_calls
        storage.gate.set()
        result = await handle.result()
    assert calls_while_gated == 4
    assert result.status == "succeeded" and fake.total_calls == 40


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_a_failed_checkpoint_fails_the_run_and_is_recorded(durability: str) -> None:
    """A checkpoint that cannot be written fails the run with the storage error, and the run
    record says so; the checkpoints written before it are kept."""
    storage = _RecordingStorage()
    storage.fail_step = "s2"
    engine, _ = make_engine(storage=storage, durability=durability)
    async with engine:
        with pytest.raises(StorageUnavailable, match="disk is gone"):
            await engine.run(_chain(6))
        (run,) = await engine.runstore.list_runs()
        finished = await engine.runstore.finished_steps(run.run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "StorageUnavailable"
    assert {"s0", "s1"} <= {sid for (sid, _item) in finished}
    assert "s2" not in {sid for (sid, _item) in finished}
    assert await leftover_tasks() == []


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_no_checkpoint_outlives_a_lost_checkpoint_of_its_run(durability: str) -> None:
    """When one checkpoint's commit fails and later commits would succeed, no later step's
    checkpoint of that run is stored (it could rest on the lost step's output); a resume
    then runs the lost step and everything after it again, and the run succeeds."""
    storage = _RecordingStorage(turns=(2,))
    storage.fail_step = "s2"
    storage.fail_once = True
    engine, fake = make_engine(storage=storage, durability=durability)
    async with engine:
        with pytest.raises(StorageUnavailable, match="disk is gone"):
            await engine.run(_chain(8))
        (run,) = await engine.runstore.list_runs()
        stored = {sid for (sid, _item) in await engine.runstore.finished_steps(run.run_id)}
        if durability == "async":
            assert fake.total_calls > 3  # later steps did run, and their commits were tried
        assert stored <= {"s0", "s1"}
        calls_before = dict(fake.calls)
        result = await engine.resume(run.run_id, _chain(8))
    assert result.status == "succeeded"
    for done in stored:
        assert fake.calls[f"p{done[1:]}"] == calls_before[f"p{done[1:]}"]  # not run again
    assert fake.calls["p2"] == calls_before["p2"] + 1


async def test_a_lost_lease_drops_the_runs_pending_checkpoints() -> None:
    """When another process takes the run's lease, this process's queued checkpoints of the
    run are refused instead of landing beside the new holder's."""
    storage = _RecordingStorage()
    storage.gate = asyncio.Event()
    engine, fake = make_engine(storage=storage, lease_ttl_s=0.15)  # renewed every 0.05 s
    async with engine:
        handle = engine.start(_chain(50))
        await _turns()
        assert fake.total_calls == 50  # every step ran; their checkpoints wait at the gate
        assert await engine.runstore.revoke_lease(handle.run_id) is not None
        with pytest.raises(RunHeld):
            await handle.result()
        storage.gate.set()
        await _turns()
        landed = storage.offered
        stored = await engine.runstore.finished_steps(handle.run_id)
    assert len(stored) == landed < 50  # only the batch already inside commit() landed


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_cancelling_keeps_the_checkpoints_of_finished_steps(durability: str) -> None:
    """A chain cancelled while its checkpoints wait still has every finished step stored."""
    storage = _RecordingStorage()
    if durability == "async":  # (a sync chain would stop at its first held commit)
        storage.gate = asyncio.Event()
    engine, fake = make_engine(FakeExecutor(delay=0.001), storage=storage, durability=durability)
    async with engine:
        handle = engine.start(_chain(50))
        while fake.total_calls < 3:
            await asyncio.sleep(0.001)
        handle.cancel()
        if storage.gate is not None:
            storage.gate.set()
        with pytest.raises(RunCancelled):
            await handle.result()
        finished = await engine.runstore.finished_steps(handle.run_id)
        run = await engine.runstore.load_run(handle.run_id)
    assert run.status == "cancelled"
    # every step that returned before the cancel is stored (the one in flight may not be)
    assert len(finished) >= fake.total_calls - 1 >= 2


@settings(max_examples=30, deadline=None)
@given(pipe=dag_pipelines(), turns=st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_async_checkpoints_are_committed_after_those_of_their_needs(
    pipe: dict[str, Any], turns: list[int]
) -> None:
    """For random DAGs and commit timings, no checkpoint is committed before the checkpoint of
    a step it needs, and the run is marked succeeded only after every checkpoint."""
    deps = pipe.pop("_deps")

    async def scenario() -> None:
        storage = _RecordingStorage(turns)
        engine, _ = make_engine(FakeExecutor(), storage=storage)
        async with engine:
            result = await engine.run(pipe)
        at = storage.committed_at()
        steps = {key: index for (ns, key), index in at.items() if ns == NS_STEPS}
        first_of: dict[str, int] = {}
        for key, index in steps.items():
            owner = _owner(key.split("/")[1])
            first_of[owner] = min(first_of.get(owner, index), index)
        for position, needs in enumerate(deps):
            sid = f"s{position}"
            for need in needs:
                assert steps[f"{result.run_id}/{need}/-"] <= first_of[sid], (sid, need)
        succeeded = [
            index
            for index, batch in enumerate(storage.batches)
            for namespace, _key, value in batch
            if namespace == NS_RUNS and value.get("status") == "succeeded"
        ]
        assert succeeded and min(succeeded) >= max(steps.values())
        assert await leftover_tasks() == []

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(
    pipe=dag_pipelines(),
    turns=st.lists(st.integers(1, 3), min_size=1, max_size=5),
    fail_at=st.integers(1, 3),
)
def test_a_lost_commit_never_leaves_a_checkpoint_without_its_needs(
    pipe: dict[str, Any], turns: list[int], fail_at: int
) -> None:
    """For random DAGs, when one commit of checkpoints is lost, every stored checkpoint still
    has the checkpoints of all the steps it needs, and a resume ends with the reference
    output."""
    deps = pipe.pop("_deps")
    expected = reference(pipe)

    async def scenario() -> None:
        storage = _RecordingStorage(turns)
        storage.fail_commit_at = fail_at
        engine, _ = make_engine(FakeExecutor(), storage=storage)
        async with engine:
            try:
                result = await engine.run(pipe)
            except StorageUnavailable:
                (run,) = await engine.runstore.list_runs()
                stored = {sid for sid, _item in await engine.runstore.finished_steps(run.run_id)}
                for position, needs in enumerate(deps):
                    if {sid for sid in stored if _owner(sid) == f"s{position}"}:
                        assert set(needs) <= stored, (f"s{position}", needs, stored)
                result = await engine.resume(run.run_id, pipe)
        assert result.output == expected
        assert await leftover_tasks() == []

    asyncio.run(scenario())
