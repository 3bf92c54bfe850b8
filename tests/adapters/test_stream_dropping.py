"""StreamDropping (drop_stream) on the memory, SQLite and file adapters: SD1, SD2, no leftovers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from taskloom.adapters.filesystem import FileStorage
from taskloom.adapters.filesystem import _core as _fs_core
from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import InvalidKey, StorageAdapter, StreamDropping

Opener = Callable[[], StorageAdapter]


def _opener(kind: str, tmp_path: Path) -> Opener:
    if kind == "memory":
        shared = MemoryStorage()
        return shared.reopen
    if kind == "sqlite":
        return lambda: SQLiteStorage(tmp_path / "store.db")
    return lambda: FileStorage(tmp_path / "store", fsync=False)


@pytest.fixture(params=["memory", "sqlite", "filesystem"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    yield _opener(request.param, tmp_path)


async def test_sd1_a_dropped_stream_reads_empty_and_restarts_at_one(opener: Opener) -> None:
    """After drop_stream, read is empty and the next append is seq 1, also after reopening."""
    storage = opener()
    assert isinstance(storage, StreamDropping)
    async with storage:
        for n in range(5):
            await storage.append("run:a:events", b"e%d" % n)
        assert await storage.drop_stream("run:a:events") is True
        assert await storage.read("run:a:events") == []
        assert (await storage.append("run:a:events", b"again")).seq == 1
    async with opener() as reopened:
        assert [(e.seq, e.payload) for e in await reopened.read("run:a:events")] == [(1, b"again")]


async def test_sd2_drop_returns_whether_there_were_entries_and_touches_nothing_else(
    opener: Opener,
) -> None:
    """drop_stream of an empty stream is False; other streams and records stay unchanged."""
    async with opener() as storage:
        assert isinstance(storage, StreamDropping)
        await storage.append("keep", b"k1")
        await storage.append("gone", b"g1")
        await storage.put("ns", "gone", b"record")
        assert await storage.drop_stream("never") is False
        assert await storage.drop_stream("gone") is True
        assert await storage.drop_stream("gone") is False
        assert [e.payload for e in await storage.read("keep")] == [b"k1"]
        assert (await storage.get("ns", "gone")).value == b"record"  # type: ignore[union-attr]
        with pytest.raises(InvalidKey):
            await storage.drop_stream("")


def _files_and_dirs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_file_store_leaves_no_directories_behind(tmp_path: Path) -> None:
    """Dropped streams and deleted records take their directories with them."""
    root = tmp_path / "store"
    async with FileStorage(root, fsync=False) as storage:
        empty = _files_and_dirs(root)
        for n in range(20):
            await storage.append(f"run:{n}:events", b"x")
            await storage.put(f"ns{n % 3}", f"key-{n}" * 40, b"v")
        for n in range(20):
            await storage.drop_stream(f"run:{n}:events")
            await storage.delete(f"ns{n % 3}", f"key-{n}" * 40)
        assert _files_and_dirs(root) == empty


async def test_file_store_finishes_a_drop_interrupted_by_a_crash(tmp_path: Path) -> None:
    """A stream directory moved to tmp/ by a writer that died is removed at the next open."""
    root = tmp_path / "store"
    async with FileStorage(root, fsync=False) as storage:
        await storage.append("s", b"x")
    store = _fs_core.Store(
        root, clock=lambda: 0.0, fsync=False, segment_bytes=1 << 20, lock_timeout=1
    )
    os.rename(store.stream_dir("s"), root / _fs_core.TMP / "crashed-drop")
    async with FileStorage(root, fsync=False) as storage:
        assert await storage.read("s") == []
    assert os.listdir(root / _fs_core.TMP) == []


async def test_file_store_tail_cache_notices_a_drop_by_another_process(tmp_path: Path) -> None:
    """An open store whose tail cache is stale after another process dropped and refilled the
    stream still numbers its next append right."""
    root = tmp_path / "store"
    async with FileStorage(root, fsync=False) as first, FileStorage(root, fsync=False) as other:
        for payload in (b"aa", b"bb", b"cc"):
            await first.append("s", payload)
        await other.drop_stream("s")
        await other.append("s", b"x" * 15)  # same segment size as before, one entry fewer
        await other.append("s", b"y" * 15)
        assert (await first.append("s", b"dd")).seq == 3
        assert [e.seq for e in await first.read("s")] == [1, 2, 3]


async def test_stream_names_lists_streams_with_entries(opener: Opener) -> None:
    """stream_names lists every stream that has entries, sorted; a dropped one is gone."""
    async with opener() as storage:
        for name in ("run:b:events", "run:a:events", "é/long" * 60):
            await storage.append(name, b"x")
        await storage.drop_stream("run:b:events")
        assert await storage.stream_names() == sorted(["run:a:events", "é/long" * 60])  # type: ignore[attr-defined]
