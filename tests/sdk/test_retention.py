"""Retention frees space: pruning every run returns a store to (about) its empty size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.filesystem import FileStorage
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import StorageAdapter
from taskloom.sdk._runs.records import (
    NS_CACHE,
    NS_CACHE_OWNERS,
    NS_RUNS,
    NS_STEPS,
    NS_TOMBSTONES,
    events_stream,
)

RUNS = 120
"""Enough runs that the file store's streams/ outgrows one block (a directory keeps its size)."""


def _disk_bytes(path: Path) -> int:
    """Bytes the store holds: a database file and its WAL, or a directory's blocks (``du``).

    SQLite's ``-shm`` is a fixed-size shared-memory index, not data, and is left out.
    """
    if path.suffix == ".db":
        files = [path, Path(f"{path}-wal")]
        return sum(os.path.getsize(p) for p in files if p.exists())
    return sum(os.lstat(p).st_blocks * 512 for p in [path, *path.rglob("*")])


def _open(kind: str, location: Path) -> StorageAdapter:
    if kind == "sqlite":
        return SQLiteStorage(location)
    return FileStorage(location, fsync=False)


def _busy_pipeline(n: int) -> dict[str, Any]:
    """A run with checkpoints, a map, cached replies and many events."""
    return pipeline(
        {"id": "a", "prompt": f"first {n} " + "x" * 300, "cache": True, "temperature": 0},
        {"id": "b", "prompt": "second {{steps.a.output}}", "cache": True, "seed": 1},
        {
            "id": "m",
            "map": "{{inputs.items}}",
            "step": {"id": "item", "prompt": f"item {n} {{{{item}}}}", "cache": True, "seed": 1},
        },
        inputs={"items": {"type": "array"}},
    )


ITEMS = {"items": ["p", "q", "r", "s", "t"]}


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
async def test_pruning_every_run_returns_the_store_to_its_empty_size(
    tmp_path: Path, kind: str
) -> None:
    """After all runs are pruned (and SQLite vacuumed) the store is within 10% of empty."""
    location = tmp_path / ("store.db" if kind == "sqlite" else "store")
    async with _open(kind, location) as fresh:  # type: ignore[attr-defined]
        engine, _ = make_engine(FakeExecutor(), storage=fresh)
        async with engine:
            await fresh.get(NS_RUNS, "nothing")
    empty = _disk_bytes(location)

    storage = _open(kind, location)
    engine, fake = make_engine(FakeExecutor(), storage=storage)
    async with engine:
        for n in range(RUNS):
            await engine.run(_busy_pipeline(n), ITEMS)
        assert sum(fake.calls.values()) == RUNS * 7
        assert len(await storage.scan(NS_CACHE)) == RUNS * 7
        full = _disk_bytes(location)
        runstore = engine.runstore
        assert runstore is not None
        assert await runstore.prune(keep_last=0) == RUNS
        for namespace in (NS_RUNS, NS_STEPS, NS_CACHE, NS_CACHE_OWNERS, NS_TOMBSTONES):
            assert await storage.scan(namespace) == [], namespace
        runs = [r.run_id for r in await runstore.list_runs()]
        assert runs == []
        await storage.vacuum()  # type: ignore[attr-defined]
    await storage.aclose()
    pruned = _disk_bytes(location)
    assert full > 2 * empty, (empty, full)  # the runs really took space
    assert pruned <= empty * 1.10, (empty, full, pruned)


async def test_deleting_a_run_removes_its_events_and_cache_entries(tmp_path: Path) -> None:
    """delete_run leaves neither its event stream, its cache entries nor a tombstone."""
    storage = SQLiteStorage(tmp_path / "store.db")
    engine, _ = make_engine(FakeExecutor(), storage=storage)
    async with engine:
        kept = await engine.run(_busy_pipeline(1), ITEMS)
        gone = await engine.run(_busy_pipeline(2), ITEMS)
        runstore = engine.runstore
        assert runstore is not None
        cached = len(await storage.scan(NS_CACHE))
        assert await runstore.delete_run(gone.run_id) is True
        assert await storage.read(events_stream(gone.run_id)) == []
        assert await storage.scan(NS_TOMBSTONES) == []
        assert len(await storage.scan(NS_CACHE)) == cached - 7
        assert await storage.read(events_stream(kept.run_id)) != []
        assert [r.run_id for r in await runstore.list_runs()] == [kept.run_id]
    await storage.aclose()
