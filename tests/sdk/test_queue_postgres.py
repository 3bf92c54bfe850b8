"""The run queue on PostgreSQL: workers take runs through the native claim, and a worker
whose engine did not submit (another host) is woken by NOTIFY, not by its poll."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine_support import FakeExecutor

from taskloom.adapters.postgres import PostgresStorage
from taskloom.sdk import Engine, ExecutorRegistry, Worker


def _pipe() -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "p",
        "inputs": {"x": {"type": "string"}},
        "steps": [{"id": "a", "prompt": "hi {{inputs.x}}", "executor": "fake", "model": "m"}],
    }


@contextlib.asynccontextmanager
async def _engine(dsn: str, schema: str) -> AsyncIterator[Engine]:
    """An engine on its own PostgresStorage (one "host"), both closed at the end."""
    registry = ExecutorRegistry()
    registry.register("fake", FakeExecutor())
    storage = PostgresStorage(dsn, schema=schema, max_size=4)
    try:
        async with Engine(storage=storage, registry=registry) as engine:
            yield engine
    finally:
        await storage.aclose()


async def _wait_status(engine: Engine, run_ids: list[str], status: str) -> list[str]:
    assert engine.runstore is not None
    for _ in range(1500):
        records = [await engine.runstore.load_run(r) for r in run_ids]
        if all(r.status == status for r in records):
            return [str(r.output) for r in records]
        await asyncio.sleep(0.02)
    raise AssertionError([r.status for r in records])


async def test_workers_on_two_engines_run_every_run_once(postgres_dsn: str) -> None:
    """Two engines (two hosts) with a worker each run 40 submitted runs, each exactly once,
    through PostgresStorage.claim."""
    schema = "tl_q_" + uuid.uuid4().hex[:12]
    async with _engine(postgres_dsn, schema) as one, _engine(postgres_dsn, schema) as two:
        calls: list[str] = []
        storage = one.storage
        assert isinstance(storage, PostgresStorage)
        native = storage.claim

        async def counting(*args: Any, **kwargs: Any) -> Any:
            got = await native(*args, **kwargs)
            calls.extend(c.record.key for c in got)
            return got

        storage.claim = counting  # type: ignore[method-assign]
        ids = [await one.submit(_pipe(), {"x": str(i)}) for i in range(40)]
        async with Worker(one, concurrency=4) as w1, Worker(two, concurrency=4) as w2:
            outputs = await _wait_status(one, ids, "succeeded")
        assert outputs == [f"m|hi {i}" for i in range(40)]
        assert w1.stats.succeeded + w2.stats.succeeded == 40
        assert calls  # the first engine's worker claimed through the native path


async def test_a_submission_on_another_host_wakes_an_idle_worker(postgres_dsn: str) -> None:
    """A worker polling once a minute starts a run submitted through another engine at
    once: the submission's NOTIFY wakes it."""
    schema = "tl_q_" + uuid.uuid4().hex[:12]
    async with _engine(postgres_dsn, schema) as worker_side, _engine(postgres_dsn, schema) as other:
        async with Worker(worker_side, poll_s=60) as worker:
            storage = worker_side.storage
            assert isinstance(storage, PostgresStorage) and storage._listener is not None
            await asyncio.wait_for(storage._listener.connected.wait(), timeout=30)
            await asyncio.sleep(0.2)  # the worker's first look found nothing; it waits
            run_id = await other.submit(_pipe(), {"x": "w"})
            await asyncio.wait_for(_wait_status(other, [run_id], "succeeded"), timeout=30)
        assert worker.stats.succeeded == 1
