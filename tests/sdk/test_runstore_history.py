"""Run history: listing by status, pipeline and time; deletion; retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runstore_support import (
    STORAGE_KINDS,
    CountingStorage,
    FakeClock,
    make_run,
    make_step,
    open_storage,
)

from taskloom.contracts import RunHeld, RunNotFound, StepStarted, StorageAdapter, UsageError
from taskloom.sdk._runs.records import (
    NS_RUNS,
    NS_RUNS_BY_TIME,
    NS_TOMBSTONES,
    RUN_STATUSES,
    events_stream,
)
from taskloom.sdk._runs.store import RunStore

T0 = 1_700_000_000.0
DAY = 86_400.0


@pytest.fixture(params=STORAGE_KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageAdapter]:
    async with open_storage(request.param, tmp_path) as opened:
        yield opened


async def _seed(store: RunStore) -> None:
    """Six runs a day apart: r0 oldest ... r5 newest, two pipelines, mixed statuses."""
    statuses = ["succeeded", "failed", "succeeded", "running", "succeeded", "cancelled"]
    for i, status in enumerate(statuses):
        await store.create_run(
            make_run(
                f"r{i}",
                status=status,  # type: ignore[arg-type]
                pipeline_name="alpha" if i % 2 == 0 else "beta",
                created_at=T0 + i * DAY,
            )
        )


async def test_list_runs_newest_first_with_filters(storage: StorageAdapter) -> None:
    """list_runs orders newest first and filters by status, pipeline, time and limit."""
    async with RunStore(storage) as store:
        await _seed(store)

        async def ids(**kw: object) -> list[str]:
            return [r.run_id for r in await store.list_runs(**kw)]  # type: ignore[arg-type]

        assert await ids() == ["r5", "r4", "r3", "r2", "r1", "r0"]
        assert await ids(status="succeeded") == ["r4", "r2", "r0"]
        assert await ids(pipeline="beta") == ["r5", "r3", "r1"]
        assert await ids(status="succeeded", pipeline="alpha", limit=2) == ["r4", "r2"]
        assert await ids(since=T0 + 2 * DAY) == ["r5", "r4", "r3", "r2"]
        assert await ids(until=T0 + 2 * DAY) == ["r2", "r1", "r0"]
        assert await ids(since=T0 + 1 * DAY, until=T0 + 3 * DAY, limit=2) == ["r3", "r2"]
        assert await ids(limit=0) == []


async def test_list_runs_sees_status_updates(storage: StorageAdapter) -> None:
    """After update_run changes a run's status, the status filter follows it."""
    async with RunStore(storage) as store:
        await _seed(store)
        await store.update_run(make_run("r3", status="succeeded", created_at=T0 + 3 * DAY))
        assert [r.run_id for r in await store.list_runs(status="running")] == []
        assert "r3" in [r.run_id for r in await store.list_runs(status="succeeded")]


async def test_limited_listing_reads_only_what_it_returns(tmp_path: Path) -> None:
    """With a limit, list_runs reads run records only for the runs it returns."""
    async with open_storage("memory", tmp_path) as memory:
        store = RunStore(memory)
        for i in range(300):
            await store.create_run(make_run(f"r{i:03d}", created_at=T0 + i))
        reads: list[str] = []
        original_get = memory.get

        async def counting_get(namespace: str, key: str) -> object:
            reads.append(namespace)
            return await original_get(namespace, key)

        memory.get = counting_get  # type: ignore[method-assign]
        runs = await store.list_runs(limit=5)
        assert [r.run_id for r in runs] == ["r299", "r298", "r297", "r296", "r295"]
        assert reads.count(NS_RUNS) == 5


async def test_list_runs_rejects_unknown_status(storage: StorageAdapter) -> None:
    """An unknown status filter raises UsageError."""
    async with RunStore(storage) as store:
        with pytest.raises(UsageError):
            await store.list_runs(status="done")  # type: ignore[arg-type]


async def test_delete_run_removes_everything(storage: StorageAdapter) -> None:
    """delete_run removes the record, index entry, checkpoints, lease; hides its events."""
    async with RunStore(storage) as store:
        await store.create_run(make_run("r1"))
        await store.create_run(make_run("r2"))
        # more than one scan page of checkpoints (fewer on the fsync-per-file FileStorage)
        count = 150 if type(storage).__name__ == "FileStorage" else 1500
        await asyncio.gather(
            *(store.record_step(make_step("m", i, run_id="r1")) for i in range(count))
        )
        await store.record_step(make_step("a", run_id="r2"))
        store.record_event(StepStarted(run_id="r1", at=1.0, step_id="m"))
        await store.flush()
        assert await store.delete_run("r1") is True
        with pytest.raises(RunNotFound):
            await store.load_run("r1")
        assert await store.finished_steps("r1") == {}
        assert await store.events("r1") == []
        assert [r.run_id for r in await store.list_runs()] == ["r2"]
        assert set(await store.finished_steps("r2")) == {("a", None)}
        assert len(await storage.scan(NS_RUNS_BY_TIME)) == 1
        assert await store.delete_run("r1") is False
        assert await store.delete_run("never") is False


async def test_a_deleted_run_id_starts_afresh_once_its_stream_is_dropped(
    storage: StorageAdapter,
) -> None:
    """Deleting drops the events and the tombstone: a new run with that id has a clean history."""
    async with RunStore(storage) as store:
        await store.create_run(make_run("r1"))
        store.record_event(StepStarted(run_id="r1", at=1.0, step_id="old"))
        await store.flush()
        await store.delete_run("r1")
        assert await storage.scan(NS_TOMBSTONES) == []
        assert await storage.read(events_stream("r1")) == []
        await store.create_run(make_run("r1"))
        store.record_event(StepStarted(run_id="r1", at=2.0, step_id="new"))
        await store.flush()
        assert [(n, e.step_id) for n, e in await store.events("r1")] == [(1, "new")]  # type: ignore[attr-defined]


async def test_a_deleted_run_id_cannot_be_reused_where_streams_stay(tmp_path: Path) -> None:
    """On a store that cannot drop streams the tombstone stays and the id is refused."""
    async with (
        open_storage("memory", tmp_path) as memory,
        RunStore(CountingStorage(memory)) as store,
    ):
        await store.create_run(make_run("r1"))
        await store.delete_run("r1")
        assert [r.key for r in await memory.scan(NS_TOMBSTONES)] == ["r1"]
        with pytest.raises(UsageError, match="deleted"):
            await store.create_run(make_run("r1"))


async def test_delete_of_a_held_run_is_refused(storage: StorageAdapter) -> None:
    """A run whose lease is live cannot be deleted; an expired lease does not stop it."""
    clock = FakeClock()
    async with RunStore(storage, clock=clock) as store:
        await store.create_run(make_run("r1"))
        await store.acquire_lease("r1", "worker", ttl_s=30)
        with pytest.raises(RunHeld):
            await store.delete_run("r1")
        clock.advance(31)
        assert await store.delete_run("r1") is True
        assert await store.lease("r1") is None


async def test_delete_works_on_a_damaged_run_record(storage: StorageAdapter) -> None:
    """A run record that no longer decodes can still be deleted, index entry included."""
    async with RunStore(storage) as store:
        await store.create_run(make_run("r1"))
        await storage.put(NS_RUNS, "r1", b"garbage")
        assert await store.delete_run("r1") is True
        assert await storage.scan(NS_RUNS_BY_TIME) == []


async def test_prune_keep_last(storage: StorageAdapter) -> None:
    """keep_last keeps the newest N finished runs and never touches running ones."""
    clock = FakeClock(T0 + 10 * DAY)
    async with RunStore(storage, clock=clock) as store:
        await _seed(store)
        assert await store.prune(keep_last=2) == 3
        assert [r.run_id for r in await store.list_runs()] == ["r5", "r4", "r3"]


async def test_prune_older_than(storage: StorageAdapter) -> None:
    """older_than_s deletes runs created before now - older_than_s, running ones included."""
    clock = FakeClock(T0 + 6 * DAY)
    async with RunStore(storage, clock=clock) as store:
        await _seed(store)
        assert await store.prune(older_than_s=2.5 * DAY) == 4
        assert [r.run_id for r in await store.list_runs()] == ["r5", "r4"]


async def test_prune_both_limits_and_live_leases(storage: StorageAdapter) -> None:
    """With both limits each bounds the store; a run with a live lease survives."""
    clock = FakeClock(T0 + 6 * DAY)
    async with RunStore(storage, clock=clock) as store:
        await _seed(store)
        await store.acquire_lease("r0", "worker", ttl_s=60)
        # age removes r1, r2 and the crashed r3 although keep_last=4 would keep r1 and r2
        assert await store.prune(older_than_s=2.5 * DAY, keep_last=4) == 3
        assert [r.run_id for r in await store.list_runs()] == ["r5", "r4", "r0"]


async def test_prune_needs_a_policy(storage: StorageAdapter) -> None:
    """prune with no limit, or with a bad one, raises UsageError."""
    async with RunStore(storage) as store:
        with pytest.raises(UsageError):
            await store.prune()
        with pytest.raises(UsageError):
            await store.prune(keep_last=-1)
        with pytest.raises(UsageError):
            await store.prune(older_than_s=-5)


async def test_prune_reports_deleted_count_not_index_reads(tmp_path: Path) -> None:
    """prune batches each run's checkpoint deletions instead of one commit per step."""
    async with open_storage("memory", tmp_path) as memory:
        counting = CountingStorage(memory)
        clock = FakeClock(T0 + DAY)
        store = RunStore(counting, clock=clock)
        await store.create_run(make_run("r1", status="succeeded"))
        await asyncio.gather(
            *(store.record_step(make_step("m", i, run_id="r1")) for i in range(900))
        )
        before = counting.commits
        assert await store.prune(keep_last=0) == 1
        assert counting.commits - before <= 3
        await store.aclose()


_runs = st.lists(
    st.tuples(
        st.sampled_from(RUN_STATUSES),
        st.sampled_from(["alpha", "beta", "gamma"]),
        st.integers(min_value=0, max_value=50),
    ),
    max_size=25,
)


@settings(max_examples=25)
@given(
    runs=_runs,
    status=st.none() | st.sampled_from(RUN_STATUSES),
    pipeline=st.none() | st.sampled_from(["alpha", "beta"]),
    since=st.none() | st.integers(0, 50),
    until=st.none() | st.integers(0, 50),
    limit=st.none() | st.integers(0, 30),
)
def test_list_runs_matches_a_model(
    runs: list[tuple[str, str, int]],
    status: str | None,
    pipeline: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
) -> None:
    """list_runs equals filtering and sorting a plain list (newest first, id breaks ties)."""
    from taskloom.adapters.memory import MemoryStorage

    async def scenario() -> None:
        store = RunStore(MemoryStorage())
        for i, (st_, name, minute) in enumerate(runs):
            run = make_run(f"r{i:02d}", status=st_, pipeline_name=name, created_at=T0 + minute)  # type: ignore[arg-type]
            await store.create_run(run)
        got = await store.list_runs(
            status=status,  # type: ignore[arg-type]
            pipeline=pipeline,
            since=None if since is None else T0 + since,
            until=None if until is None else T0 + until,
            limit=limit,
        )
        model = [
            (minute, f"r{i:02d}")
            for i, (st_, name, minute) in enumerate(runs)
            if (status is None or st_ == status)
            and (pipeline is None or name == pipeline)
            and (since is None or minute >= since)
            and (until is None or minute <= until)
        ]
        model.sort(key=lambda pair: (-pair[0], pair[1]))
        if limit is not None:
            model = model[:limit]
        assert [r.run_id for r in got] == [run_id for _, run_id in model]

    asyncio.run(scenario())


async def test_prune_of_many_runs_in_one_pass_skips_held_ones(storage: StorageAdapter) -> None:
    """Pruning more runs than are deleted one by one: every checkpoint, event and tombstone
    of the pruned runs goes, and a run with a live lease stays whole."""
    clock = FakeClock(T0 + 100 * DAY)
    async with RunStore(storage, clock=clock) as store:
        ids = [f"r{n:02d}" for n in range(30)]
        for n, run_id in enumerate(ids):
            await store.create_run(make_run(run_id, status="succeeded", created_at=T0 + n))
            await store.record_step(make_step("a", run_id=run_id))
            store.record_event(StepStarted(run_id=run_id, at=1.0, step_id="a"))
        await store.flush()
        await store.acquire_lease("r03", "worker", ttl_s=60)
        assert await store.prune(keep_last=0) == 29
        assert [r.run_id for r in await store.list_runs()] == ["r03"]
        assert set(await store.finished_steps("r03")) == {("a", None)}
        assert len(await store.events("r03")) == 1
        steps = await storage.scan("steps")
        assert [s.key.partition("/")[0] for s in steps] == ["r03"]
        assert await storage.read(events_stream("r07")) == []
        assert await storage.scan(NS_TOMBSTONES) == []
