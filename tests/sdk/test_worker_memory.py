"""Flat memory in long-lived processes: nothing per run stays once a run ends."""

from __future__ import annotations

import asyncio
from typing import Any

from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.sdk import Engine, ExecutorRegistry, Worker


def _pipe() -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "one",
        "inputs": {"x": {"type": "string"}},
        "steps": [{"id": "a", "prompt": "{{inputs.x}}", "executor": "scripted", "model": "m"}],
    }


def _engine() -> Engine:
    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor())
    return Engine(storage=MemoryStorage(), registry=registry)


def _per_run_state(engine: Engine) -> dict[str, int]:
    store = engine.runstore
    return {
        "event counters": len(store._events._next),
        "event errors": len(store._events._errors),
        "held leases": len(store._held),
        "lost leases": len(store._lost),
        "broken chains": len(store._writer._broken),
        "handles": len(engine._handles),
    }


async def test_direct_runs_leave_no_per_run_state() -> None:
    """After 50 runs through engine.run, the run store keeps no counter, lease or chain."""
    async with _engine() as engine:
        for n in range(50):
            await engine.run(_pipe(), {"x": str(n)})
        assert set(_per_run_state(engine).values()) == {0}


async def test_worker_runs_leave_no_per_run_state() -> None:
    """After 50 queued runs through a worker, nothing of them stays in the process."""
    async with _engine() as engine:
        ids = [await engine.submit(_pipe(), {"x": str(n)}) for n in range(50)]
        async with Worker(engine, concurrency=4) as worker:
            for _ in range(500):
                if worker.stats.succeeded == len(ids):
                    break
                await asyncio.sleep(0.01)
        assert worker.stats.succeeded == len(ids)
        assert set(_per_run_state(engine).values()) == {0}
