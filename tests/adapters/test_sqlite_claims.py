"""SQLiteStorage's native claim (CL1-CL5 in one write transaction) and its small reads on
the event loop: the run queue's hot path without thread round trips or lost races."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import taskloom.adapters.sqlite._readers as readers_module
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import (
    Check,
    ClaimedRecord,
    ClaimingStorage,
    InvalidKey,
    Op,
    Put,
    Record,
    UsageError,
    claim_by_cas,
)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """An open store on a fresh file."""
    async with SQLiteStorage(tmp_path / "db.sqlite", purge_interval_s=None) as opened:
        yield opened


def lease_ops(holder: str) -> Any:
    """ops_for that writes a lease for the claimed record, which must not exist yet."""

    def ops_for(record: Record) -> Sequence[Op]:
        return [Put(namespace="leases", key=record.key, value=holder.encode(), if_version=0)]

    return ops_for


async def test_it_is_a_claiming_storage(storage: SQLiteStorage) -> None:
    """The run queue finds the native claim by its protocol."""
    assert isinstance(storage, ClaimingStorage)


async def test_claims_come_in_key_order_and_apply_their_ops(storage: SQLiteStorage) -> None:
    """CL1, CL3, CL4: the first records under the prefix, deleted, each with its lease."""
    for key in ("q/3", "q/1", "q/2", "r/0", "q/4"):
        await storage.put("queue", key, key.encode())
    got = await storage.claim("queue", prefix="q/", limit=3, ops_for=lease_ops("w1"))
    assert [c.record.key for c in got] == ["q/1", "q/2", "q/3"]
    assert all(isinstance(c, ClaimedRecord) and c.result.records for c in got)
    assert [c.record.value for c in got] == [b"q/1", b"q/2", b"q/3"]
    assert [r.key for r in await storage.scan("queue")] == ["q/4", "r/0"]
    assert [r.key for r in await storage.scan("leases")] == ["q/1", "q/2", "q/3"]
    assert await storage.claim("queue", prefix="x/", ops_for=lease_ops("w1")) == []


async def test_declined_and_conflicting_candidates_are_skipped(storage: SQLiteStorage) -> None:
    """CL3: ops_for returning None, or ops failing a version check, leave the record and
    write nothing of theirs; the others are claimed in the same call."""
    for key in ("a", "b", "c", "d"):
        await storage.put("queue", key, b"")
    await storage.put("other", "x", b"")

    def ops_for(record: Record) -> Sequence[Op] | None:
        if record.key == "a":
            return None
        if record.key == "b":
            return [
                Put(namespace="done", key="b", value=b""),
                Check(namespace="other", key="x", version=9),
            ]
        return [Put(namespace="done", key=record.key, value=b"")]

    got = await storage.claim("queue", limit=5, ops_for=ops_for)
    assert [c.record.key for c in got] == ["c", "d"]
    assert [r.key for r in await storage.scan("queue")] == ["a", "b"]
    assert [r.key for r in await storage.scan("done")] == ["c", "d"]


async def test_candidates_beyond_the_first_page_are_reached(storage: SQLiteStorage) -> None:
    """CL3: when the first candidates are all declined, the claim pages on to the rest."""
    await storage.commit([Put(namespace="queue", key=f"k{i:03}", value=b"") for i in range(40)])
    got = await storage.claim(
        "queue",
        limit=2,
        ops_for=lambda r: None if r.key < "k030" else [Put(namespace="d", key=r.key, value=b"")],
    )
    assert [c.record.key for c in got] == ["k030", "k031"]


async def test_expired_records_are_not_claimed(tmp_path: Path) -> None:
    """A queue record whose TTL passed is invisible to claims, as to scans (ST5)."""
    now = [1000.0]
    async with SQLiteStorage(
        tmp_path / "db.sqlite", clock=lambda: now[0], purge_interval_s=None
    ) as storage:
        await storage.put("queue", "old", b"", ttl=5)
        now[0] += 10
        assert await storage.claim("queue", ops_for=lease_ops("w")) == []


async def test_an_exception_of_ops_for_undoes_the_claim_and_is_raised(
    storage: SQLiteStorage,
) -> None:
    """CL1: ops_for raising stops the call: nothing it claimed before stays claimed, and
    its own exception reaches the caller."""
    for key in ("a", "b"):
        await storage.put("queue", key, b"")

    def ops_for(record: Record) -> Sequence[Op]:
        if record.key == "b":
            raise KeyError("no lease for b")
        return [Put(namespace="leases", key=record.key, value=b"")]

    with pytest.raises(KeyError, match="no lease for b"):
        await storage.claim("queue", limit=2, ops_for=ops_for)
    assert [r.key for r in await storage.scan("queue")] == ["a", "b"]
    assert await storage.scan("leases") == []


async def test_bad_operations_from_ops_for_are_a_usage_error(storage: SQLiteStorage) -> None:
    """An operation ops_for returns that is invalid is refused like a bad commit, and
    nothing is claimed."""
    await storage.put("queue", "a", b"")
    with pytest.raises(UsageError):
        await storage.claim("queue", ops_for=lambda r: ["not an op"])  # type: ignore[list-item]
    assert len(await storage.scan("queue")) == 1


async def test_concurrent_claimers_on_two_connections_never_share_a_record(
    tmp_path: Path,
) -> None:
    """CL2: eight claimers on two adapters of one file take 120 records, each once, and
    none of their claims is lost to a conflict (the claim holds the write lock)."""
    path = tmp_path / "db.sqlite"
    async with (
        SQLiteStorage(path, purge_interval_s=None) as one,
        SQLiteStorage(path, purge_interval_s=None) as two,
    ):
        await one.commit([Put(namespace="queue", key=f"k{i:03}", value=b"") for i in range(120)])
        taken: list[str] = []
        conflicts: list[str] = []

        def ops_for(name: str) -> Any:
            def make(record: Record) -> Sequence[Op]:
                return [Put(namespace="leases", key=record.key, value=name.encode(), if_version=0)]

            return make

        async def claimer(s: SQLiteStorage, name: str) -> None:
            while got := await s.claim("queue", limit=2, ops_for=ops_for(name)):
                taken.extend(c.record.key for c in got)

        await asyncio.gather(*(claimer(s, f"w{i}") for i in range(4) for s in (one, two)))
        leases = await one.scan("leases")
    assert sorted(taken) == [f"k{i:03}" for i in range(120)]
    assert len(leases) == 120 and not conflicts


async def test_claimers_in_threads_on_one_file_never_share_a_record(tmp_path: Path) -> None:
    """CL2 across event loops (as across processes): three loops in three threads, each
    with its own adapter, claim 90 records; each record is claimed exactly once."""
    path = tmp_path / "db.sqlite"
    async with SQLiteStorage(path, purge_interval_s=None) as setup:
        await setup.commit([Put(namespace="queue", key=f"k{i:03}", value=b"") for i in range(90)])
    taken: list[list[str]] = [[], [], []]

    def worker(index: int) -> None:
        async def go() -> None:
            async with SQLiteStorage(path, purge_interval_s=None) as mine:
                while got := await mine.claim("queue", limit=3, ops_for=lease_ops(f"t{index}")):
                    taken[index].extend(c.record.key for c in got)
                    await asyncio.sleep(0)

        asyncio.run(go())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    everything = sorted(key for keys in taken for key in keys)
    assert everything == [f"k{i:03}" for i in range(90)]


async def test_claim_arguments_are_checked(storage: SQLiteStorage) -> None:
    """A bad limit, prefix or ops_for is a UsageError, a bad namespace an InvalidKey, before
    anything is claimed."""
    await storage.put("queue", "a", b"")
    for kwargs in ({"limit": 0}, {"limit": True}, {"limit": 1.5}, {"prefix": 3}, {"ops_for": "x"}):
        arguments = {"ops_for": lease_ops("w"), **kwargs}
        with pytest.raises(UsageError):
            await storage.claim("queue", **arguments)
    with pytest.raises(InvalidKey):
        await storage.claim("", ops_for=lease_ops("w"))
    assert len(await storage.scan("queue")) == 1


async def test_native_and_generic_claims_agree(tmp_path: Path) -> None:
    """The native claim takes the same records, in the same order, as claim_by_cas would."""
    keys = [f"q/{i:02}" for i in (5, 1, 9, 3, 7)] + ["p/0", "r/0"]
    picked: list[list[str]] = []
    for native in (True, False):
        async with SQLiteStorage(tmp_path / f"{native}.sqlite", purge_interval_s=None) as s:
            await s.commit([Put(namespace="queue", key=k, value=b"") for k in keys])

            def ops_for(record: Record) -> Sequence[Op] | None:
                return (
                    None
                    if record.key == "q/03"
                    else [Put(namespace="l", key=record.key, value=b"")]
                )

            if native:
                got = await s.claim("queue", prefix="q/", limit=3, ops_for=ops_for)
            else:
                got = await claim_by_cas(s, "queue", prefix="q/", limit=3, ops_for=ops_for)
            picked.append([c.record.key for c in got])
    assert picked[0] == picked[1] == ["q/01", "q/05", "q/07"]


# --- small reads on the event loop ---------------------------------------------------------


def _reader_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each SELECT that goes to a reader connection (a thread round trip)."""
    seen: list[str] = []
    original = readers_module.Readers.fetch

    async def spy(self: Any, sql: str, params: tuple[Any, ...]) -> list[Any]:
        seen.append(sql)
        return await original(self, sql, params)

    monkeypatch.setattr(readers_module.Readers, "fetch", spy)
    return seen


async def test_point_reads_and_small_pages_skip_the_reader_threads(
    storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get, and a scan or read of a small page, are answered on the event loop; a large
    or unbounded page still goes to a reader. Both see every committed write."""
    await storage.put("ns", "a", b"1")
    await storage.append("s", b"x")
    seen = _reader_calls(monkeypatch)
    got = await storage.get("ns", "a")
    assert got is not None and got.value == b"1"
    assert [r.key for r in await storage.scan("ns", limit=10)] == ["a"]
    assert [e.payload for e in await storage.read("s", limit=10)] == [b"x"]
    assert seen == []
    assert [r.key for r in await storage.scan("ns")] == ["a"]
    assert [e.payload for e in await storage.read("s")] == [b"x"]
    assert len(seen) == 2


async def test_a_read_while_the_writer_thread_holds_the_connection_goes_to_a_reader(
    storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A point read never waits for the writer: with the write connection taken, it is
    read on a reader connection instead, and sees the last commit."""
    await storage.put("ns", "a", b"1")
    seen = _reader_calls(monkeypatch)
    writer = storage._writer
    assert writer is not None
    with writer._lock:  # what the writer thread holds while it commits a batch
        got = await storage.get("ns", "a")
    assert got is not None and got.value == b"1"
    assert len(seen) == 1


async def test_reads_see_writes_of_another_connection(tmp_path: Path) -> None:
    """A small read on the write connection sees what another adapter committed since."""
    path = tmp_path / "db.sqlite"
    async with (
        SQLiteStorage(path, purge_interval_s=None) as one,
        SQLiteStorage(path, purge_interval_s=None) as two,
    ):
        await one.put("ns", "a", b"1")
        assert await two.get("ns", "a") is not None
        await one.put("ns", "a", b"2")
        got = await two.get("ns", "a")
        assert got is not None and got.value == b"2" and got.version == 2
        await one.delete("ns", "a")
        assert await two.get("ns", "a") is None
