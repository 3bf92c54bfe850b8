"""Leases through the engine: two resumers of one run, one wins; a dead holder is taken over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from durable_worker import EXECUTOR_ID, CountingExecutor, build_job
from test_runstore_support import storage_class

from taskloom.contracts import RunCancelled, RunHeld, RunNotFound, StorageAdapter
from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk._runs.store import RunStore

KINDS = ("sqlite", "filesystem")


def _engine(storage: StorageAdapter, *, latency: float, ttl: float = 5.0) -> Engine:
    registry = ExecutorRegistry()
    registry.register(EXECUTOR_ID, CountingExecutor(None, latency_s=(latency, latency)))
    return Engine(storage=storage, registry=registry, lease_ttl_s=ttl)


@pytest.fixture(params=(*KINDS, "postgres"))
async def location(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_dsn")  # the server, and its DSN exported
    yield f"{request.param}:{tmp_path / 'store'}"


def _open(location: str) -> StorageAdapter:
    kind, _, path = location.partition(":")
    cls = storage_class(kind)
    storage: StorageAdapter = cls(path)
    return storage


async def _interrupted_run(location: str) -> tuple[str, object]:
    """Start a run, cancel it after some work, return its id and the uninterrupted output."""
    job = build_job(seq=2, par=2, items=12, concurrency=3)
    storage = _open(location)
    async with _engine(storage, latency=0.0) as engine:
        reference = (await engine.run(job["pipeline"], job["inputs"])).output
    await storage.aclose()
    storage = _open(location)
    async with _engine(storage, latency=0.01) as engine:
        handle = engine.start(job["pipeline"], job["inputs"])
        await asyncio.sleep(0.05)
        # "After some work": a store that opens slower (a server) gets the time it needs.
        assert engine.runstore is not None
        for _ in range(500):
            with contextlib.suppress(RunNotFound):
                if await engine.runstore.finished_steps(handle.run_id):
                    break
            await asyncio.sleep(0.01)
        handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result()
    await storage.aclose()
    return handle.run_id, reference


async def test_two_resumers_one_wins(location: str) -> None:
    """Two engines on separate adapters resume one run at once: one finishes, one gets RunHeld."""
    run_id, reference = await _interrupted_run(location)
    first, second = _open(location), _open(location)
    try:
        async with (
            _engine(first, latency=0.02) as one,
            _engine(second, latency=0.02) as two,
        ):
            results = await asyncio.gather(
                one.resume(run_id), two.resume(run_id), return_exceptions=True
            )
        held = [r for r in results if isinstance(r, RunHeld)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert len(held) == 1 and len(done) == 1, results
        assert done[0].output == reference
        assert held[0].holder in (one.holder, two.holder)
    finally:
        await first.aclose()
        await second.aclose()


async def test_dead_holders_run_is_taken_over(location: str) -> None:
    """A run whose holder died is refused until the lease expires, then resumed to the end."""
    run_id, reference = await _interrupted_run(location)
    storage = _open(location)
    try:
        store = RunStore(storage)
        await store.acquire_lease(run_id, "dead-worker", ttl_s=0.3)  # it never renews
        await store.aclose()
        async with _engine(storage, latency=0.0) as engine:
            with pytest.raises(RunHeld) as info:
                await engine.resume(run_id)
            assert info.value.holder == "dead-worker"
            await asyncio.sleep(0.35)
            result = await engine.resume(run_id)
        assert result.status == "succeeded" and result.output == reference
        async with RunStore(storage) as after:
            assert await after.lease(run_id) is None  # released at the end
    finally:
        await storage.aclose()
