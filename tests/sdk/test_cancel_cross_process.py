"""Cancel from another process: the lease carries the request, the holder records the outcome.

"Another process" is a second ``RunStore`` over the same storage, which shares nothing
with the engine's but the stored records, as a second process would.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    RunCancelled,
    RunCancelledEvent,
    RunFailed,
    RunSucceeded,
)
from taskloom.sdk import RunHandle
from taskloom.sdk._runs.cancel import cancel_run
from taskloom.sdk._runs.lease import held_error
from taskloom.sdk._runs.records import LeaseRecord, RunRecord
from taskloom.sdk._runs.store import RunStore

OUTCOMES = (RunSucceeded, RunFailed, RunCancelledEvent)


def _chain(n: int) -> dict[str, object]:
    return pipeline(*[{"id": f"s{i}", "prompt": f"p{i}", "executor": "fake"} for i in range(n)])


async def _outcomes(store: RunStore, run_id: str) -> list[type]:
    return [type(e) for _seq, e in await store.events(run_id) if isinstance(e, OUTCOMES)]


async def _wait_running(store: RunStore, handle: RunHandle) -> None:
    for _ in range(2000):
        if handle.done() or await store.lease(handle.run_id) is not None:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the run never took its lease")


async def test_cancel_from_another_store_stops_the_run_within_one_renewal() -> None:
    """The holder sees the request at its next renewal, starts nothing more, records itself
    cancelled (one outcome event, last) and releases the lease; resume then works at once."""
    storage = MemoryStorage()
    engine, fake = make_engine(FakeExecutor(delay=0.01), storage=storage, lease_ttl_s=0.3)
    async with engine:
        handle = engine.start(_chain(200))
        other = RunStore(storage)
        await _wait_running(other, handle)
        outcome = await cancel_run(other, handle.run_id)
        calls_at_cancel = fake.total_calls
        with pytest.raises(RunCancelled, match="taskloom resume"):
            await handle.result()
        assert outcome.cancelled and outcome.stopped_holder == engine.holder
        assert outcome.record.status == "cancelled"
        assert (await other.load_run(handle.run_id)).status == "cancelled"
        assert await other.lease(handle.run_id) is None
        assert await _outcomes(other, handle.run_id) == [RunCancelledEvent]
        last = (await other.events(handle.run_id))[-1][1]
        assert isinstance(last, RunCancelledEvent)
        assert fake.total_calls == calls_at_cancel < 200  # nothing started after it returned
        result = await engine.resume(handle.run_id)  # no wait for a lease to expire
        await other.aclose()
    assert result.status == "succeeded"
    assert len(fake.calls) == 200 and fake.total_calls <= 201  # (+ the call cancelled in flight)


async def test_cancel_after_the_last_renewal_still_wins_over_success() -> None:
    """A request that lands after the holder's last renewal but before it records success
    makes the run end cancelled, not succeeded."""
    storage = MemoryStorage()
    other = RunStore(storage)
    run_ids: list[str] = []
    fake = FakeExecutor()
    engine, _ = make_engine(fake, storage=storage, lease_ttl_s=60)  # no renewal in the run

    async def cancel_while_it_runs() -> None:
        while fake.total_calls < 1:  # the first step waits at the gate
            await asyncio.sleep(0.001)
        assert await other.request_cancel(run_ids[0]) is not None
        fake.gate.set()  # type: ignore[union-attr]

    fake.gate = asyncio.Event()
    async with engine:
        handle = engine.start(_chain(3))
        run_ids.append(handle.run_id)
        helper = asyncio.create_task(cancel_while_it_runs())
        with pytest.raises(RunCancelled):
            await handle.result()
        await helper
        assert (await other.load_run(handle.run_id)).status == "cancelled"
        assert await _outcomes(other, handle.run_id) == [RunCancelledEvent]
    await other.aclose()


async def test_cancel_takes_over_a_run_whose_holder_is_gone() -> None:
    """A holder that never renews (killed) is taken over after about one renewal interval:
    the run is recorded cancelled with one outcome event and nobody holds it after."""
    storage = MemoryStorage()
    async with RunStore(storage) as store:
        record = RunRecord(
            run_id="r1",
            pipeline_name="p",
            pipeline_digest="d" * 64,
            pipeline={},
            inputs={},
            status="running",
            created_at=store.clock(),
            started_at=store.clock(),
        )
        await store.create_run(record)
        await store.acquire_lease("r1", "killed-process", ttl_s=0.6)
        outcome = await cancel_run(store, "r1", poll_s=0.01)
        assert outcome.cancelled and outcome.stopped_holder is None
        assert (await store.load_run("r1")).status == "cancelled"
        assert await store.lease("r1") is None
        assert await _outcomes(store, "r1") == [RunCancelledEvent]
        again = await cancel_run(store, "r1")
        assert not again.cancelled and again.record.status == "cancelled"
        assert await _outcomes(store, "r1") == [RunCancelledEvent]


@pytest.mark.parametrize("seed", range(12))
async def test_exactly_one_outcome_whatever_the_timing(seed: int) -> None:
    """A cancel sent at a random moment, even as the run finishes: the history holds exactly
    one outcome event, it is the last, and it agrees with the record and with cancel_run."""
    rng = random.Random(seed)
    storage = MemoryStorage()
    engine, _fake = make_engine(FakeExecutor(delay=0.002), storage=storage, lease_ttl_s=0.6)
    async with engine:
        handle = engine.start(_chain(rng.randint(1, 12)))
        other = RunStore(storage)
        await _wait_running(other, handle)
        await asyncio.sleep(rng.uniform(0, 0.03))
        outcome = await cancel_run(other, handle.run_id, poll_s=0.005)
        try:
            result = await handle.result()
            status = result.status
        except RunCancelled:
            status = "cancelled"
        record = await other.load_run(handle.run_id)
        events = await other.events(handle.run_id)
        await other.aclose()
    kinds = [type(e) for _s, e in events if isinstance(e, OUTCOMES)]
    expected = RunCancelledEvent if status == "cancelled" else RunSucceeded
    assert kinds == [expected] and isinstance(events[-1][1], expected)
    assert record.status == status == outcome.record.status
    assert outcome.cancelled == (status == "cancelled")


def test_held_message_shows_a_human_time_and_the_way_out() -> None:
    """'held until' names a wall-clock time (not epoch seconds) and says cancel then resume."""
    lease = LeaseRecord(run_id="r1", holder="engine-x", acquired_at=1.8e9, expires_at=1.8e9 + 30)
    text = str(held_error("r1", lease, now=1.8e9))
    assert "epoch" not in text and "1800000030" not in text
    assert "(in 30 s)" in text
    assert "taskloom cancel r1" in text and "taskloom resume r1" in text


async def test_a_holder_that_ends_the_run_and_its_lease_in_one_commit_is_reported() -> None:
    """A worker gives its lease back in its outcome's commit: if that commit lands between
    the canceller's read of the record and of the lease, the cancel still reports the
    run stopped by its holder (not "already finished", not a takeover)."""
    from attrs import evolve

    from taskloom.contracts import Delete
    from taskloom.sdk._runs.records import NS_LEASES

    storage = MemoryStorage()
    async with RunStore(storage) as holder, RunStore(storage) as canceller:
        record = RunRecord(
            run_id="r1",
            pipeline_name="p",
            pipeline_digest="d" * 64,
            pipeline={},
            inputs={},
            status="running",
            created_at=holder.clock(),
            started_at=holder.clock(),
        )
        await holder.acquire_lease("r1", "worker", ttl_s=30)
        await holder.create_run(record)
        real_lease = canceller.lease
        calls = [0]

        async def lease(run_id: str) -> LeaseRecord | None:
            calls[0] += 1
            if calls[0] == 1:  # the holder saw the request and ends the run right now
                holder.with_outcome("r1", [Delete(namespace=NS_LEASES, key="r1")])
                done = evolve(record, status="cancelled", finished_at=holder.clock())
                event = RunCancelledEvent(run_id="r1", at=holder.clock(), duration_s=0.0)
                await (await holder.queue_finish(done, event))
            return await real_lease(run_id)

        canceller.lease = lease  # type: ignore[method-assign]
        outcome = await cancel_run(canceller, "r1", poll_s=0.01)
        assert outcome.cancelled and outcome.stopped_holder == "worker"
        assert await _outcomes(canceller, "r1") == [RunCancelledEvent]
