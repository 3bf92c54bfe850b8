"""SQLiteStorage commits small batches on the event loop: same guarantees as the writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import taskloom.adapters.sqlite._writer as writer_module
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import (
    MAX_VALUE_BYTES,
    Append,
    Check,
    ConflictError,
    InvalidKey,
    Put,
    StorageUnavailable,
    UsageError,
    ValueTooLarge,
)


def _committing_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of the thread that runs each batch."""
    seen: list[str] = []
    original = writer_module.Writer._run_batch

    def spy(self: Any, batch: Any, *, inline: bool = False) -> Any:
        seen.append(threading.current_thread().name)
        return original(self, batch, inline=inline)

    monkeypatch.setattr(writer_module.Writer, "_run_batch", spy)
    return seen


async def test_sequential_writes_commit_on_the_event_loop_and_survive_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone awaited write is committed without the writer thread, durably."""
    seen = _committing_threads(monkeypatch)
    path = tmp_path / "db.sqlite"
    async with SQLiteStorage(path, purge_interval_s=None) as storage:
        for i in range(20):
            record = await storage.put("ns", f"k{i}", b"v%d" % i)
            assert record.version == 1
        entry = await storage.append("s", b"one")
        result = await storage.commit(
            [Put(namespace="ns", key="k0", value=b"new"), Append(stream="s", payload=b"two")]
        )
        assert entry.seq == 1
        assert result.records[0].version == 2
        assert result.entries[0].seq == 2
    assert seen and all(name == threading.main_thread().name for name in seen)
    async with SQLiteStorage(path, purge_interval_s=None) as again:
        stored = await again.get("ns", "k0")
        assert stored is not None and stored.value == b"new"
        assert [e.payload for e in await again.read("s")] == [b"one", b"two"]
        assert len(await again.scan("ns")) == 20


async def test_lone_commit_that_conflicts_applies_nothing(tmp_path: Path) -> None:
    """Without a savepoint, a lone failing commit is rolled back whole (ST9)."""
    async with SQLiteStorage(tmp_path / "db.sqlite", purge_interval_s=None) as storage:
        await storage.put("ns", "a", b"1")
        with pytest.raises(ConflictError):
            await storage.commit(
                [
                    Put(namespace="ns", key="a", value=b"2"),
                    Append(stream="s", payload=b"x"),
                    Check(namespace="ns", key="missing", version=3),
                ]
            )
        stored = await storage.get("ns", "a")
        assert stored is not None and (stored.value, stored.version) == (b"1", 1)
        assert await storage.read("s") == []
        # The connection is usable afterwards: no transaction was left open.
        assert (await storage.put("ns", "a", b"3")).version == 2


async def test_large_batches_still_go_to_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit over the inline limit runs on the thread, all or nothing as before."""
    seen = _committing_threads(monkeypatch)
    ops = [
        Put(namespace="ns", key=f"k{i}", value=b"v")
        for i in range(writer_module.INLINE_MAX_OPS + 1)
    ]
    async with SQLiteStorage(tmp_path / "db.sqlite", purge_interval_s=None) as storage:
        result = await storage.commit(ops)
        assert len(result.records) == len(ops)
    assert seen and seen[0] != threading.main_thread().name


async def test_concurrent_writers_share_batches_and_keep_exact_versions(tmp_path: Path) -> None:
    """Writes queued in the same loop round share a transaction; versions stay exact."""
    async with SQLiteStorage(tmp_path / "db.sqlite", purge_interval_s=None) as storage:

        async def bump(worker: int) -> None:
            for i in range(30):
                await storage.put("ns", f"w{worker % 3}", b"%d" % i)

        before = storage.write_transactions
        await asyncio.gather(*(bump(w) for w in range(9)))
        assert storage.write_transactions - before < 9 * 30
        versions = [(await storage.get("ns", f"w{k}")) for k in range(3)]
        assert [v.version for v in versions if v is not None] == [90, 90, 90]


async def test_busy_database_never_blocks_the_loop_and_waits_on_the_thread(
    tmp_path: Path,
) -> None:
    """With another connection holding the write lock, the loop keeps running; the write
    lands once the lock is released."""
    path = tmp_path / "db.sqlite"
    async with SQLiteStorage(path, purge_interval_s=None, busy_timeout_s=10.0) as storage:
        await storage.put("ns", "a", b"1")
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
            write = asyncio.ensure_future(storage.put("ns", "a", b"2"))
            ticks = 0
            for _ in range(20):
                await asyncio.sleep(0.005)  # the loop is free while the write waits
                ticks += 1
            assert ticks == 20
            assert not write.done()
            other.execute("COMMIT")
            record = await asyncio.wait_for(write, timeout=30)
            assert record.version == 2
        finally:
            other.close()
        # Later sequential writes go back to committing inline.
        assert (await storage.put("ns", "a", b"3")).version == 3


async def test_a_lock_held_elsewhere_is_retried_within_milliseconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread waits for another connection's lock in steps of at most 2 ms (SQLite's
    own handler sleeps up to 100 ms between attempts), and takes it once it is free."""
    path = tmp_path / "db.sqlite"
    sleeps: list[float] = []
    others: list[sqlite3.Connection] = []
    real_sleep = writer_module.time.sleep

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 12:
            others[0].execute("COMMIT")  # the other process is done
        real_sleep(seconds)

    monkeypatch.setattr(writer_module.time, "sleep", sleep)
    async with SQLiteStorage(path, purge_interval_s=None, busy_timeout_s=30.0) as storage:
        await storage.put("ns", "a", b"1")
        others.append(sqlite3.connect(path, isolation_level=None, check_same_thread=False))
        try:
            others[0].execute("BEGIN IMMEDIATE")
            record = await asyncio.wait_for(storage.put("ns", "a", b"2"), timeout=30)
            assert record.version == 2
        finally:
            others[0].close()
    assert len(sleeps) == 12
    assert all(0 < seconds <= 0.002 for seconds in sleeps)


async def test_busy_past_the_deadline_is_storage_unavailable(tmp_path: Path) -> None:
    """A write handed to the thread because of a lock still honours the busy deadline."""
    path = tmp_path / "db.sqlite"
    async with SQLiteStorage(path, purge_interval_s=None, busy_timeout_s=0.2) as storage:
        await storage.put("ns", "a", b"1")
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageUnavailable):
                await storage.put("ns", "a", b"2")
            other.execute("ROLLBACK")
        finally:
            other.close()
        stored = await storage.get("ns", "a")
        assert stored is not None and stored.version == 1


async def test_writes_queued_before_close_are_committed(tmp_path: Path) -> None:
    """Writes submitted right before aclose are finished, inline or on the thread."""
    path = tmp_path / "db.sqlite"
    storage = await SQLiteStorage.open(path, purge_interval_s=None)
    pending = [asyncio.ensure_future(storage.put("ns", f"k{i}", b"v")) for i in range(5)]
    await asyncio.sleep(0)  # every put is queued, its inline commit not yet run
    await storage.aclose()
    for task in pending:
        assert (await task).version == 1
    async with SQLiteStorage(path, purge_interval_s=None) as again:
        assert len(await again.scan("ns")) == 5


async def test_plain_put_fast_path_keeps_its_checks(tmp_path: Path) -> None:
    """A put without ttl or if_version still refuses oversize values, non-bytes and bad keys."""
    async with SQLiteStorage(tmp_path / "db.sqlite", purge_interval_s=None) as storage:
        with pytest.raises(ValueTooLarge):
            await storage.put("ns", "big", b"x" * (MAX_VALUE_BYTES + 1))
        with pytest.raises(UsageError):
            await storage.put("ns", "text", "not bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidKey):
            await storage.put("ns", "", b"v")
        assert await storage.scan("ns") == []
        record = await storage.put("ns", "ok", b"v")
        assert (record.version, record.expires_at) == (1, None)


async def test_large_values_are_written_on_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value of several MiB weighs more than the inline limit: the thread writes it."""
    seen = _committing_threads(monkeypatch)
    async with SQLiteStorage(tmp_path / "db.sqlite", purge_interval_s=None) as storage:
        await storage.put("ns", "small", b"v")
        await storage.put("ns", "large", b"x" * MAX_VALUE_BYTES)
        await storage.commit([Append(stream="s", payload=b"y" * MAX_VALUE_BYTES)])
        stored = await storage.get("ns", "large")
        assert stored is not None and len(stored.value) == MAX_VALUE_BYTES
        assert len((await storage.read("s"))[0].payload) == MAX_VALUE_BYTES
    main = threading.main_thread().name
    assert seen[0] == main
    assert seen[1] != main and seen[2] != main
