"""claim_by_cas, the generic claim path: CL1-CL5 on any conformant adapter (MemoryStorage)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import Check, Op, Put, Record, UsageError, claim_by_cas


async def _filled(count: int) -> MemoryStorage:
    storage = MemoryStorage()
    for i in range(count):
        await storage.put("q", f"k{i:03d}", f"v{i}".encode())
    return storage


def _mark(record: Record) -> Sequence[Op]:
    return [Put(namespace="taken", key=record.key, value=b"x")]


async def test_claims_come_in_key_order_and_commit_with_their_ops() -> None:
    """CL1, CL3, CL4: records in key order, deleted together with ops_for's writes."""
    storage = await _filled(5)
    got = await claim_by_cas(storage, "q", limit=2, ops_for=_mark)
    assert [c.record.key for c in got] == ["k000", "k001"]
    assert await storage.get("q", "k000") is None
    assert await storage.get("taken", "k001") is not None
    assert [r.key for r in got[0].result.records] == ["k000"]
    assert await claim_by_cas(MemoryStorage(), "q", ops_for=_mark) == []


async def test_declined_and_failing_candidates_stay_in_place() -> None:
    """CL3: None skips a record; a failing check skips it too; both stay queued."""
    storage = await _filled(3)
    await storage.put("guard", "g", b"1")

    def ops_for(record: Record) -> Sequence[Op] | None:
        if record.key == "k000":
            return None
        if record.key == "k001":
            return [Check(namespace="guard", key="g", version=7)]
        return _mark(record)

    got = await claim_by_cas(storage, "q", limit=3, ops_for=ops_for)
    assert [c.record.key for c in got] == ["k002"]
    assert await storage.get("q", "k000") is not None
    assert await storage.get("q", "k001") is not None


async def test_concurrent_claimers_never_share_a_record() -> None:
    """CL2: 10 claimers racing over 30 records claim each exactly once."""
    storage = await _filled(30)

    async def claimer() -> list[str]:
        keys: list[str] = []
        while True:
            got = await claim_by_cas(storage, "q", ops_for=_mark)
            if not got:
                return keys
            keys.append(got[0].record.key)

    results = await asyncio.gather(*(claimer() for _ in range(10)))
    claimed = [key for keys in results for key in keys]
    assert sorted(claimed) == [f"k{i:03d}" for i in range(30)]


async def test_limit_must_be_a_positive_int() -> None:
    """CL4: a limit below 1 (or not an int) is a UsageError."""
    with pytest.raises(UsageError):
        await claim_by_cas(MemoryStorage(), "q", limit=0, ops_for=_mark)
