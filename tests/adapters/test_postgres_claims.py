"""PostgresStorage's native claim (CL1-CL5, FOR UPDATE SKIP LOCKED) and its LISTEN/NOTIFY
wakeup (WK1): one notification per transaction that puts into a watched namespace,
none for other writes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import psycopg
import pytest

from taskloom.adapters.postgres import PostgresStorage
from taskloom.contracts import (
    Check,
    ClaimedRecord,
    ClaimingStorage,
    Op,
    Put,
    Record,
    UsageError,
    WakeableStorage,
)


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return "tl_c_" + uuid.uuid4().hex[:16]


@pytest.fixture
async def storage(postgres_dsn: str) -> AsyncIterator[PostgresStorage]:
    """An open store in a schema of its own."""
    async with PostgresStorage(postgres_dsn, schema=fresh_schema(), max_size=6) as opened:
        yield opened


def lease_ops(holder: str) -> object:
    """ops_for that writes a lease for the claimed record, which must not exist yet."""

    def ops_for(record: Record) -> Sequence[Op]:
        return [Put(namespace="leases", key=record.key, value=holder.encode(), if_version=0)]

    return ops_for


async def test_claims_come_in_key_order_and_apply_their_ops(storage: PostgresStorage) -> None:
    """CL1, CL3, CL4: the first records under the prefix, deleted, each with its lease."""
    for key in ("q/3", "q/1", "q/2", "r/0", "q/4"):
        await storage.put("queue", key, key.encode())
    got = await storage.claim("queue", prefix="q/", limit=3, ops_for=lease_ops("w1"))  # type: ignore[arg-type]
    assert [c.record.key for c in got] == ["q/1", "q/2", "q/3"]
    assert all(isinstance(c, ClaimedRecord) and c.result.records for c in got)
    assert [r.key for r in await storage.scan("queue")] == ["q/4", "r/0"]
    assert [r.key for r in await storage.scan("leases")] == ["q/1", "q/2", "q/3"]
    assert await storage.claim("queue", prefix="x/", ops_for=lease_ops("w1")) == []  # type: ignore[arg-type]


async def test_declined_and_conflicting_candidates_are_skipped(storage: PostgresStorage) -> None:
    """CL3: ops_for returning None, or ops failing a version check, leave the record."""
    for key in ("a", "b", "c"):
        await storage.put("queue", key, b"")
    await storage.put("other", "x", b"")

    def ops_for(record: Record) -> Sequence[Op] | None:
        if record.key == "a":
            return None
        if record.key == "b":
            return [Check(namespace="other", key="x", version=9)]
        return [Put(namespace="done", key=record.key, value=b"")]

    got = await storage.claim("queue", limit=5, ops_for=ops_for)
    assert [c.record.key for c in got] == ["c"]
    assert [r.key for r in await storage.scan("queue")] == ["a", "b"]


async def test_expired_records_are_not_claimed(storage: PostgresStorage) -> None:
    """A queue record whose TTL passed is invisible to claims, as to scans (ST5)."""
    await storage.put("queue", "old", b"", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await storage.claim("queue", ops_for=lease_ops("w")) == []  # type: ignore[arg-type]


async def test_a_locked_record_is_skipped_not_waited_for(
    postgres_dsn: str, storage: PostgresStorage
) -> None:
    """CL4: a record another transaction holds is skipped; the next one is claimed."""
    await storage.put("queue", "a", b"")
    await storage.put("queue", "b", b"")
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as other:
        await other.execute(
            f"SELECT 1 FROM {storage.schema}.records WHERE namespace = 'queue' AND key = 'a' "  # type: ignore[arg-type]
            "FOR UPDATE"
        )
        got = await asyncio.wait_for(
            storage.claim("queue", ops_for=lease_ops("w")),  # type: ignore[arg-type]
            timeout=60,
        )
        await other.rollback()
    assert [c.record.key for c in got] == ["b"]


async def test_concurrent_claimers_on_two_hosts_never_share_a_record(postgres_dsn: str) -> None:
    """CL2: eight claimers on two adapters take 120 records, each exactly once."""
    schema = fresh_schema()
    async with (
        PostgresStorage(postgres_dsn, schema=schema, max_size=4) as one,
        PostgresStorage(postgres_dsn, schema=schema, max_size=4) as two,
    ):
        await one.commit([Put(namespace="queue", key=f"k{i:03}", value=b"") for i in range(120)])
        taken: list[str] = []

        async def claimer(s: PostgresStorage, name: str) -> None:
            while got := await s.claim("queue", limit=2, ops_for=lease_ops(name)):  # type: ignore[arg-type]
                taken.extend(c.record.key for c in got)

        await asyncio.gather(*(claimer(s, f"w{i}") for i in range(4) for s in (one, two)))
        leases = await one.scan("leases")
    assert sorted(taken) == [f"k{i:03}" for i in range(120)]
    assert len(leases) == 120


async def test_claim_arguments_are_checked(storage: PostgresStorage) -> None:
    """A bad limit, prefix or ops_for is a UsageError before anything is claimed."""
    await storage.put("queue", "a", b"")
    for kwargs in ({"limit": 0}, {"limit": True}, {"prefix": 3}, {"ops_for": "x"}):
        arguments = {"ops_for": lease_ops("w"), **kwargs}
        with pytest.raises(UsageError):
            await storage.claim("queue", **arguments)  # type: ignore[arg-type]
    assert len(await storage.scan("queue")) == 1


async def test_it_is_a_claiming_and_wakeable_storage(storage: PostgresStorage) -> None:
    """The run queue finds the native capabilities by their protocols."""
    assert isinstance(storage, ClaimingStorage)
    assert isinstance(storage, WakeableStorage)


# --- LISTEN / NOTIFY --------------------------------------------------------------------


async def _notifications(dsn: str, channel: str, ready: asyncio.Event, out: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'LISTEN "{channel}"')  # type: ignore[arg-type]
        ready.set()
        async for note in conn.notifies():
            out.append(note.payload)


async def test_one_notification_per_transaction_and_none_for_checkpoints(
    postgres_dsn: str, storage: PostgresStorage
) -> None:
    """Fifty concurrent queue puts send at most one NOTIFY per transaction; writes to
    other namespaces (checkpoints, events) send none."""
    got: list[str] = []
    ready = asyncio.Event()
    listener = asyncio.ensure_future(
        _notifications(postgres_dsn, f"taskloom_{storage.schema}", ready, got)
    )
    await ready.wait()
    before = storage.write_transactions
    await asyncio.gather(*(storage.put("runs", f"r{i}", b"checkpoint") for i in range(30)))
    await asyncio.gather(*(storage.append(f"events:{i}", b"e") for i in range(10)))
    await storage.put("queue", "sentinel", b"")  # a marker: everything before has arrived
    for _ in range(500):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == ["queue"]
    got.clear()
    before = storage.write_transactions
    await asyncio.gather(*(storage.put("queue", f"q{i}", b"") for i in range(50)))
    await storage.commit(
        [Put(namespace="queue", key="c", value=b""), Put(namespace="runs", key="x", value=b"")]
    )
    transactions = storage.write_transactions - before
    for _ in range(500):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert set(got) == {"queue"}
    assert 1 <= len(got) <= transactions < 51


async def test_a_worker_on_another_host_is_woken_by_a_submission(postgres_dsn: str) -> None:
    """WK1: wait_for_change on one adapter returns True after another adapter puts into the
    queue, and False when only other namespaces were written."""
    schema = fresh_schema()
    async with (
        PostgresStorage(postgres_dsn, schema=schema) as worker_side,
        PostgresStorage(postgres_dsn, schema=schema) as submitter,
    ):
        assert await worker_side.wait_for_change("queue", timeout=0.05) in (True, False)
        listener = worker_side._listener
        assert listener is not None
        await asyncio.wait_for(listener.connected.wait(), timeout=30)
        await worker_side.wait_for_change("queue", timeout=0.05)  # drain the first look
        await submitter.put("runs", "r", b"checkpoint")
        assert await worker_side.wait_for_change("queue", timeout=0.3) is False
        waiting = asyncio.ensure_future(worker_side.wait_for_change("queue", timeout=60))
        await asyncio.sleep(0.05)
        await submitter.put("queue", "q1", b"")
        assert await waiting is True
        # A submission made while nobody waited is not lost: the next wait returns at once.
        await submitter.put("queue", "q2", b"")
        for _ in range(200):
            if await worker_side.wait_for_change("queue", timeout=0.05):
                break
        else:
            raise AssertionError("the submission made while busy was lost")


async def test_pgbouncer_mode_waits_by_polling(postgres_dsn: str) -> None:
    """With pgbouncer=True nothing LISTENs: wait_for_change times out (polling fallback)."""
    async with PostgresStorage(postgres_dsn, schema=fresh_schema(), pgbouncer=True) as storage:
        assert storage._listener is None
        assert await storage.wait_for_change("queue", timeout=0.05) is False
        with pytest.raises(UsageError):
            await storage.wait_for_change("queue", timeout=0)
