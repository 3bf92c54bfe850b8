"""RunStore: run records, checkpoints, events and the group-commit writer, on every adapter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_runstore_support import (
    STORAGE_KINDS,
    CountingStorage,
    FlakyStorage,
    make_run,
    make_step,
    open_storage,
)

from taskloom.contracts import (
    ConflictError,
    DecodeError,
    ErrorInfo,
    RunFailed,
    RunNotFound,
    RunStarted,
    RunSucceeded,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StorageAdapter,
    StorageUnavailable,
    Usage,
    UsageError,
    ValueTooLarge,
)
from taskloom.sdk._runs.records import NS_RUNS, NS_STEPS, step_key
from taskloom.sdk._runs.store import RunStore


@pytest.fixture(params=STORAGE_KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageAdapter]:
    async with open_storage(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[StorageAdapter]:
    async with open_storage("memory", tmp_path) as opened:
        yield opened


async def test_run_record_round_trips(storage: StorageAdapter) -> None:
    """A created run loads back equal; an update replaces it."""
    async with RunStore(storage) as store:
        run = make_run(usage_by_executor={"scripted": Usage(prompt_tokens=4)})
        await store.create_run(run)
        assert await store.load_run("run1") == run
        done = make_run(
            status="succeeded",
            finished_at=1_700_000_009.0,
            output={"answer": [1, 2, None]},
            usage=Usage(prompt_tokens=4, completion_tokens=5),
            steps_done=3,
        )
        await store.update_run(done)
        assert await store.load_run("run1") == done


async def test_create_run_twice_conflicts(storage: StorageAdapter) -> None:
    """Creating a run whose id exists raises ConflictError and keeps the first."""
    async with RunStore(storage) as store:
        first = make_run()
        await store.create_run(first)
        with pytest.raises(ConflictError):
            await store.create_run(make_run(pipeline_name="other"))
        assert await store.load_run("run1") == first


async def test_load_missing_run_is_run_not_found(storage: StorageAdapter) -> None:
    """Loading an unknown run raises RunNotFound."""
    async with RunStore(storage) as store:
        with pytest.raises(RunNotFound):
            await store.load_run("nope")


async def test_checkpoints_round_trip(storage: StorageAdapter) -> None:
    """Recorded steps and map items come back keyed by (step id, item); item 0 is not None."""
    async with RunStore(storage) as store:
        await store.create_run(make_run())
        steps = [
            make_step("a"),
            make_step("m", 0),
            make_step("m", 1, cached=True),
            make_step(
                "c",
                status="failed",
                output=None,
                error=ErrorInfo(type="InvalidRequest", message="no"),
                attempts=3,
            ),
        ]
        for step in steps:
            await store.record_step(step)
        await store.record_step(make_step("a", run_id="other"))
        done = await store.finished_steps("run1")
        assert done == {(s.step_id, s.item): s for s in steps}
        assert set(await store.finished_steps("other")) == {("a", None)}


async def test_finished_steps_pages_through_many(memory: StorageAdapter) -> None:
    """More checkpoints than one scan page are all returned."""
    async with RunStore(memory) as store:
        await asyncio.gather(*(store.record_step(make_step("m", i)) for i in range(2345)))
        done = await store.finished_steps("run1")
        assert sorted(item for _, item in done) == list(range(2345))


async def test_a_checkpoint_is_durable_when_record_step_returns(tmp_path: Path) -> None:
    """After record_step returns, a second adapter on the same location sees it."""
    async with open_storage("sqlite", tmp_path) as storage:
        store = RunStore(storage)
        await store.record_step(make_step("a"))
        cls = type(storage)
        async with cls(tmp_path / "store.db") as second:
            assert ("a", None) in await RunStore(second).finished_steps("run1")
        await store.aclose()


async def test_concurrent_checkpoints_share_commits(memory: StorageAdapter) -> None:
    """500 concurrent record_step calls take far fewer than 500 commits."""
    counting = CountingStorage(memory)
    async with RunStore(counting) as store:
        await asyncio.gather(*(store.record_step(make_step("m", i)) for i in range(500)))
        assert counting.commits <= 5
        assert counting.committed_ops == 500
        assert len(await store.finished_steps("run1")) == 500


async def test_events_are_written_with_the_next_batch(storage: StorageAdapter) -> None:
    """record_event does not wait; after flush the events read back in order with seqs."""
    counting = CountingStorage(storage)
    async with RunStore(counting) as store:
        events = [
            RunStarted(run_id="run1", at=1.0, pipeline="demo"),
            StepStarted(run_id="run1", at=2.0, step_id="a"),
            StepSucceeded(run_id="run1", at=3.0, step_id="a", usage=Usage(prompt_tokens=1)),
        ]
        for event in events:
            store.record_event(event)
        await store.record_step(make_step("a"))
        assert counting.commits == 1  # three events and a checkpoint in one commit
        read = await store.events("run1")
        assert read == [(1, events[0]), (2, events[1]), (3, events[2])]
        assert await store.events("run1", after=1, limit=1) == [(2, events[1])]


async def test_events_are_written_soon_without_a_flush(memory: StorageAdapter) -> None:
    """Recording an event asks for a batch (once per batch, not once per event): the
    events reach storage after a few loop turns, with nobody flushing or checkpointing."""
    counting = CountingStorage(memory)
    async with RunStore(counting) as store:
        for round_ in range(3):
            for i in range(4):
                store.record_event(StepStarted(run_id="run1", at=float(i), step_id="a"))
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(await memory.read("run:run1:events")) == round_ + 1, round_


async def test_a_finished_run_and_its_outcome_land_together_or_not_at_all(
    memory: StorageAdapter,
) -> None:
    """queue_finish writes the record, the queued events and the outcome in one commit; if
    it fails, the outcome is dropped, the queued events are kept, and numbering stays gapless."""
    flaky = FlakyStorage(memory)
    async with RunStore(flaky) as store:
        await store.create_run(make_run())
        store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))
        await store.flush()
        store.record_event(StepSucceeded(run_id="run1", at=2.0, step_id="a"))
        flaky.fail_commits = 1
        write = await store.queue_finish(
            make_run(status="succeeded"), RunSucceeded(run_id="run1", at=3.0)
        )
        with pytest.raises(StorageUnavailable):
            await write
        assert (await store.load_run("run1")).status == "running"
        write = await store.queue_finish(
            make_run(status="failed"),
            RunFailed(run_id="run1", at=4.0, error=ErrorInfo(type="E", message="m")),
        )
        await write
        numbered = [(n, type(e).__name__) for n, e in await store.events("run1")]
        assert numbered == [(1, "StepStarted"), (2, "StepSucceeded"), (3, "RunFailed")]
        assert (await store.load_run("run1")).status == "failed"


async def test_a_run_record_refused_by_its_checks_queues_nothing(memory: StorageAdapter) -> None:
    """A final record too large to store raises before anything of it is queued."""
    async with RunStore(memory) as store:
        await store.create_run(make_run())
        store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))
        huge = make_run(status="succeeded", output="x" * (5 * 1024 * 1024))
        with pytest.raises(ValueTooLarge):
            await store.queue_finish(huge, RunSucceeded(run_id="run1", at=2.0))
        await store.flush()
        assert [type(e).__name__ for _n, e in await store.events("run1")] == ["StepStarted"]


async def test_update_run_lands_after_queued_events(memory: StorageAdapter) -> None:
    """When update_run returns, every event queued before it is readable."""
    async with RunStore(memory) as store:
        await store.create_run(make_run())
        for i in range(10):
            store.record_event(StepStarted(run_id="run1", at=float(i), step_id="a"))
        await store.update_run(make_run(status="succeeded"))
        async with RunStore(memory) as fresh:
            assert len(await fresh.events("run1")) == 10


async def test_failed_commit_fails_every_waiter_of_the_batch(memory: StorageAdapter) -> None:
    """A commit failure reaches each record_step of that batch; nothing is half-written."""
    flaky = FlakyStorage(memory, fail_commits=1)
    async with RunStore(flaky) as store:
        results = await asyncio.gather(
            *(store.record_step(make_step("m", i)) for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, StorageUnavailable) for r in results)
        assert flaky.failed == 1
        assert await store.finished_steps("run1") == {}
        store.mend_checkpoints("run1")  # the run starts again
        await store.record_step(make_step("m", 0))
        assert set(await store.finished_steps("run1")) == {("m", 0)}


async def test_after_a_lost_checkpoint_the_runs_later_ones_are_not_committed(
    memory: StorageAdapter,
) -> None:
    """Once a run's checkpoint fails, its later ones (queued or new) fail instead of being
    stored, until mend_checkpoints; other runs and run records are not affected."""
    flaky = FlakyStorage(memory, fail_commits=1)
    async with RunStore(flaky) as store:
        lost = store.queue_step(make_step("a", None))
        with pytest.raises(StorageUnavailable):
            await lost
        queued_after = store.queue_step(make_step("b", None))
        with pytest.raises(StorageUnavailable):
            await queued_after
        other_run = make_step("a", None, run_id="run2")
        await store.record_step(other_run)
        await store.update_run(make_run(status="failed"))
        assert await store.finished_steps("run1") == {}
        assert set(await store.finished_steps("run2")) == {("a", None)}
        assert (await store.load_run("run1")).status == "failed"
        store.mend_checkpoints("run1")
        await store.record_step(make_step("b", None))
        assert set(await store.finished_steps("run1")) == {("b", None)}


async def test_events_of_a_failed_commit_are_retried(memory: StorageAdapter) -> None:
    """Events whose commit failed are written by a later attempt, none lost, none doubled."""
    flaky = FlakyStorage(memory, fail_commits=2)
    async with RunStore(flaky) as store:
        for i in range(5):
            store.record_event(StepStarted(run_id="run1", at=float(i), step_id="a"))
        for _ in range(50):
            if flaky.fail_commits == 0 and store.commits:
                break
            await asyncio.sleep(0.05)
        await store.flush()
        assert [e.at for _, e in await store.events("run1")] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert flaky.failed == 2


async def test_flush_reports_events_that_cannot_be_written(memory: StorageAdapter) -> None:
    """flush raises the storage error while events cannot be written; aclose reports them lost."""
    flaky = FlakyStorage(memory, fail_commits=10_000)
    store = RunStore(flaky)
    store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))
    with pytest.raises(StorageUnavailable):
        await store.flush()
    with pytest.raises(StorageUnavailable, match="could not be written"):
        await store.aclose()
    await store.aclose()  # idempotent


async def test_oversized_checkpoint_fails_only_its_caller(memory: StorageAdapter) -> None:
    """A checkpoint over the value limit raises ValueTooLarge at once; others are written."""
    async with RunStore(memory) as store:
        big = make_step("big", output="x" * (5 * 1024 * 1024))
        results = await asyncio.gather(
            store.record_step(big), store.record_step(make_step("ok")), return_exceptions=True
        )
        assert isinstance(results[0], ValueTooLarge)
        assert results[1] is None
        assert set(await store.finished_steps("run1")) == {("ok", None)}


async def test_non_json_output_is_refused(memory: StorageAdapter) -> None:
    """A step output that is not JSON data raises UsageError instead of being stored."""
    async with RunStore(memory) as store:
        with pytest.raises(UsageError, match="not JSON"):
            await store.record_step(make_step("a", output={1, 2}))


async def test_undecodable_checkpoint_names_the_record(storage: StorageAdapter) -> None:
    """A damaged checkpoint stops finished_steps with a DecodeError naming namespace and key."""
    async with RunStore(storage) as store:
        await store.record_step(make_step("a"))
        key = step_key("run1", "b", 4)
        await storage.put(NS_STEPS, key, b'{"format":1,"run_id":"run1","step_id":7}')
        with pytest.raises(DecodeError, match=f"{NS_STEPS}/{key}"):
            await store.finished_steps("run1")


async def test_checkpoint_of_another_format_is_refused(memory: StorageAdapter) -> None:
    """A checkpoint with format 2 raises DecodeError asking to upgrade, never a default."""
    async with RunStore(memory) as store:
        good = make_step("a")
        await store.record_step(good)
        key = step_key("run1", "a", None)
        stored = await memory.get(NS_STEPS, key)
        assert stored is not None
        await memory.put(NS_STEPS, key, stored.value.replace(b'"format":1', b'"format":2'))
        with pytest.raises(DecodeError, match="upgrade taskloom"):
            await store.finished_steps("run1")


async def test_undecodable_run_record_names_it(memory: StorageAdapter) -> None:
    """load_run of a damaged record raises DecodeError naming runs/<id>."""
    async with RunStore(memory) as store:
        await memory.put(NS_RUNS, "bad", b"not json")
        with pytest.raises(DecodeError, match="runs/bad"):
            await store.load_run("bad")


async def test_undecodable_event_names_the_entry(memory: StorageAdapter) -> None:
    """A damaged stream entry raises DecodeError naming the stream and sequence number."""
    async with RunStore(memory) as store:
        store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))
        await store.flush()
        await memory.append(
            "run:run1:events", b'{"format":1,"first":2,"events":[{"type":"step.nope"}]}'
        )
        with pytest.raises(DecodeError, match="run:run1:events entry 2"):
            await store.events("run1")


async def test_closed_store_refuses_use(memory: StorageAdapter) -> None:
    """Every method raises UsageError after aclose; the adapter stays open for its owner."""
    store = RunStore(memory)
    await store.record_step(make_step("a"))
    await store.aclose()
    with pytest.raises(UsageError):
        await store.record_step(make_step("b"))
    with pytest.raises(UsageError):
        store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))
    with pytest.raises(UsageError):
        await store.load_run("run1")
    assert await memory.get(NS_STEPS, step_key("run1", "a", None)) is not None


async def test_aclose_writes_queued_events(memory: StorageAdapter) -> None:
    """Events queued just before aclose are written by it."""
    store = RunStore(memory)
    for i in range(3):
        store.record_event(StepStarted(run_id="run1", at=float(i), step_id="a"))
    await store.aclose()
    async with RunStore(memory) as fresh:
        assert [e.at for _, e in await fresh.events("run1")] == [0.0, 1.0, 2.0]


def test_record_event_outside_a_loop_is_a_usage_error(tmp_path: Path) -> None:
    """Queueing an event with no running event loop raises UsageError."""
    from taskloom.adapters.memory import MemoryStorage

    store = RunStore(MemoryStorage())
    with pytest.raises(UsageError, match="event loop"):
        store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))


def test_store_survives_a_new_event_loop() -> None:
    """A store used from two successive asyncio.run calls keeps writing (sync facades)."""
    from taskloom.adapters.memory import MemoryStorage

    memory = MemoryStorage()
    store = RunStore(memory)
    asyncio.run(store.record_step(make_step("a")))
    asyncio.run(store.record_step(make_step("b")))
    assert set(asyncio.run(store.finished_steps("run1"))) == {("a", None), ("b", None)}


def test_events_left_queued_by_one_event_loop_are_written_from_the_next() -> None:
    """Events queued when a loop ended are written soon after more arrive on a new loop
    (a sync facade calls asyncio.run again), without waiting for a flush."""
    from taskloom.adapters.memory import MemoryStorage

    class Slow(MemoryStorage):
        slow = True

        async def commit(self, ops: Any) -> Any:
            if self.slow:
                await asyncio.sleep(0.05)
            return await super().commit(ops)

    memory = Slow()
    store = RunStore(memory)

    async def first() -> None:
        store.record_event(StepStarted(run_id="run1", at=1.0, step_id="a"))
        await asyncio.sleep(0.01)  # the flusher is committing the first event
        store.record_event(StepStarted(run_id="run1", at=2.0, step_id="a"))  # queued behind
        # the loop ends here, as a sync facade's asyncio.run returns without a flush

    async def second() -> int:
        memory.slow = False
        for i in range(3):
            store.record_event(StepStarted(run_id="run1", at=3.0 + i, step_id="a"))
        for _ in range(20):
            await asyncio.sleep(0)
        entries = await memory.read("run:run1:events")
        return sum(len(json.loads(e.payload)["events"]) for e in entries)

    asyncio.run(first())
    assert asyncio.run(second()) >= 4  # the second loop's events and the one left queued


async def test_events_of_one_batch_share_one_stream_entry(memory: StorageAdapter) -> None:
    """Events recorded between commits become one stream entry, not one append each."""
    counting = CountingStorage(memory)
    async with RunStore(counting) as store:
        for i in range(200):
            store.record_event(StepStarted(run_id="run1", at=float(i), step_id="a"))
        store.record_event(StepStarted(run_id="run2", at=0.0, step_id="a"))
        await store.flush()
        assert counting.commits == 1
        assert counting.committed_ops == 2  # one append per run
        assert len(await store.events("run1")) == 200


async def test_event_numbers_continue_across_batches_and_processes(
    storage: StorageAdapter,
) -> None:
    """Event numbers are gapless from 1 across batches and across a new store (a new process)."""
    async with RunStore(storage) as store:
        for batch in range(5):
            for i in range(batch + 1):
                store.record_event(
                    StepStarted(run_id="run1", at=float(batch * 10 + i), step_id="a")
                )
            await store.flush()
    async with RunStore(storage) as second:
        await second.acquire_lease("run1", "next-process")
        second.record_event(StepStarted(run_id="run1", at=99.0, step_id="a"))
        await second.flush()
        events = await second.events("run1")
    assert [n for n, _ in events] == list(range(1, 17))
    assert [e.at for _, e in events][-2:] == [44.0, 99.0]


@pytest.mark.parametrize("after", [0, 1, 2, 3, 7, 20, 54, 55, 56, 100])
async def test_events_after_and_limit_find_the_right_entry(
    memory: StorageAdapter, after: int
) -> None:
    """events(after=n, limit=k) returns events n+1.. (k at most), whichever entry holds them."""
    async with RunStore(memory) as store:
        number = 0
        for size in range(1, 11):  # entries of 1..10 events: 55 events in 10 entries
            for _ in range(size):
                number += 1
                store.record_event(StepStarted(run_id="run1", at=float(number), step_id="a"))
            await store.flush()
        got = await store.events("run1", after=after, limit=4)
        want = [n for n in range(after + 1, 56)][:4]
        assert [n for n, _ in got] == want
        assert [e.at for _, e in got] == [float(n) for n in want]
        assert [n for n, _ in await store.events("run1", after=after)] == list(range(after + 1, 56))


async def test_a_huge_batch_is_split_into_entries_under_the_limit(memory: StorageAdapter) -> None:
    """Many large events in one batch are split into several entries, all numbered in order."""
    async with RunStore(memory) as store:
        reason = "x" * 20_000
        for i in range(100):  # about 2 MB of events
            store.record_event(StepSkipped(run_id="run1", at=float(i), step_id="a", reason=reason))
        await store.flush()
        entries = await memory.read("run:run1:events")
        assert len(entries) >= 4
        assert [n for n, _ in await store.events("run1")] == list(range(1, 101))


async def test_an_oversized_event_is_refused_at_once(memory: StorageAdapter) -> None:
    """A single event over the event size limit raises ValueTooLarge when recorded."""
    async with RunStore(memory) as store:
        with pytest.raises(ValueTooLarge):
            store.record_event(
                StepSkipped(run_id="run1", at=1.0, step_id="a", reason="x" * (2 * 1024 * 1024))
            )


async def test_a_damaged_stream_tail_blocks_only_that_runs_events(memory: StorageAdapter) -> None:
    """A damaged stream tail fails flush with a DecodeError naming it; other writes go on."""
    await memory.append("run:bad:events", b"garbage")
    store = RunStore(memory)
    store.record_event(StepStarted(run_id="bad", at=1.0, step_id="a"))
    store.record_event(StepStarted(run_id="good", at=1.0, step_id="a"))
    await store.record_step(make_step("a"))
    with pytest.raises(DecodeError, match="run:bad:events entry 1"):
        await store.flush()
    with pytest.raises(DecodeError, match="run:bad:events entry 1"):
        await store.events("bad")
    assert len(await store.events("good")) == 1
    assert set(await store.finished_steps("run1")) == {("a", None)}
    with pytest.raises(StorageUnavailable):
        await store.aclose()
