"""The run queue: idempotent submission, bad submissions refused, limits, claims, poison."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from engine_support import FakeExecutor

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    ClaimingStorage,
    PipelineInvalid,
    StorageAdapter,
    StorageUnavailable,
    SubmissionConflict,
    UnknownQueue,
    UsageError,
)
from taskloom.sdk import Engine, ExecutorRegistry, Worker
from taskloom.sdk._queue.claim import claim_expired, claim_queued
from taskloom.sdk._queue.records import NS_QUEUE, NS_TICKETS, QueueDefinition
from taskloom.sdk._runs.records import NS_RUNS


def _pipe(name: str = "p") -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": name,
        "inputs": {"x": {"type": "string"}},
        "steps": [{"id": "a", "prompt": "hi {{inputs.x}}", "executor": "fake", "model": "m"}],
    }


def _engine(storage: StorageAdapter | None = None, **kw: Any) -> Engine:
    registry = ExecutorRegistry()
    registry.register("fake", FakeExecutor())
    return Engine(
        storage=storage if storage is not None else MemoryStorage(), registry=registry, **kw
    )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    async with _engine() as opened:
        yield opened


async def _wait_status(engine: Engine, run_ids: list[str], status: str) -> None:
    for _ in range(400):
        records = [await engine.runstore.load_run(r) for r in run_ids]
        if all(r.status == status for r in records):
            return
        await asyncio.sleep(0.02)
    raise AssertionError([r.status for r in records])


async def test_submit_returns_at_once_with_a_queued_run(engine: Engine) -> None:
    """submit stores the run as queued, with an entry in the queue, and runs nothing."""
    run_id = await engine.submit(_pipe(), {"x": "1"})
    record = await engine.runstore.load_run(run_id)
    assert record.status == "queued" and record.started_at is None
    assert len(await engine.storage.scan(NS_QUEUE)) == 1
    assert (await engine.queues())[0].depth == 1


async def test_200_concurrent_submissions_with_one_key_give_one_run(engine: Engine) -> None:
    """However many submissions race with one idempotency key, one run is stored."""
    ids = await asyncio.gather(
        *(engine.submit(_pipe(), {"x": "1"}, idempotency_key="k") for _ in range(200))
    )
    assert len(set(ids)) == 1
    assert len(await engine.storage.scan(NS_RUNS)) == 1
    assert len(await engine.storage.scan(NS_QUEUE)) == 1


async def test_caller_given_run_id_is_idempotent(engine: Engine) -> None:
    """A run id given twice returns the same run and queues it once."""
    first = await engine.submit(_pipe(), {"x": "1"}, run_id="r1")
    again = await engine.submit(_pipe(), {"x": "1"}, run_id="r1")
    assert first == again == "r1"
    assert len(await engine.storage.scan(NS_QUEUE)) == 1


async def test_run_id_of_another_pipeline_is_refused(engine: Engine) -> None:
    """A run id already used by another pipeline raises SubmissionConflict; nothing is added."""
    await engine.submit(_pipe("one"), {"x": "1"}, run_id="r1")
    with pytest.raises(SubmissionConflict, match="pipeline 'one'"):
        await engine.submit(_pipe("two"), {"x": "1"}, run_id="r1")
    with pytest.raises(SubmissionConflict, match="other inputs"):
        await engine.submit(_pipe("one"), {"x": "2"}, idempotency_key=None, run_id="r1")
    assert len(await engine.storage.scan(NS_QUEUE)) == 1


async def test_idempotency_key_with_other_inputs_is_refused(engine: Engine) -> None:
    """The same key with other inputs is a conflict, not a silent second run or a reuse."""
    await engine.submit(_pipe(), {"x": "1"}, idempotency_key="k")
    with pytest.raises(SubmissionConflict):
        await engine.submit(_pipe(), {"x": "2"}, idempotency_key="k")


async def test_unknown_queue_and_invalid_inputs_queue_nothing(engine: Engine) -> None:
    """An unknown queue, invalid inputs or a bad priority are refused before anything is stored."""
    with pytest.raises(UnknownQueue, match="define_queue"):
        await engine.submit(_pipe(), {"x": "1"}, queue="nope")
    with pytest.raises(PipelineInvalid):
        await engine.submit(_pipe(), {"x": 5})
    with pytest.raises(PipelineInvalid):
        await engine.submit(_pipe(), {})
    with pytest.raises(UsageError, match="priority"):
        await engine.submit(_pipe(), {"x": "1"}, priority=10**9)
    with pytest.raises(UsageError, match="queue name"):
        await engine.submit(_pipe(), {"x": "1"}, queue="a/b")
    assert await engine.storage.scan(NS_RUNS) == []
    assert await engine.storage.scan(NS_QUEUE) == []


async def test_worker_runs_submitted_runs(engine: Engine) -> None:
    """A worker claims queued runs and runs them to success, with gapless events."""
    ids = [await engine.submit(_pipe(), {"x": str(i)}) for i in range(6)]
    async with Worker(engine, concurrency=3) as worker:
        await _wait_status(engine, ids, "succeeded")
    assert worker.stats.succeeded == 6
    assert (await engine.runstore.load_run(ids[2])).output == "m|hi 2"
    numbers = [n for n, _e in await engine.runstore.events(ids[0])]
    assert numbers == list(range(1, len(numbers) + 1))
    assert (await engine.queues())[0].depth == 0


async def test_priority_then_age_decides_the_order(engine: Engine) -> None:
    """Higher priority is claimed first, then the oldest submission."""
    low = await engine.submit(_pipe(), {"x": "low"}, priority=-1)
    first = await engine.submit(_pipe(), {"x": "1"})
    high = await engine.submit(_pipe(), {"x": "high"}, priority=5)
    second = await engine.submit(_pipe(), {"x": "2"})
    definition = QueueDefinition(name="default")
    order = []
    for _ in range(4):
        claim = await claim_queued(engine.runstore, "w", definition, ttl_s=30)
        assert claim is not None
        order.append(claim.run_id)
    assert order == [high, first, second, low]


async def test_queue_concurrency_holds_across_workers(engine: Engine) -> None:
    """A queue with concurrency 2 never has more than 2 claimed runs, whoever claims."""
    definition = await engine.define_queue("two", concurrency=2)
    for i in range(4):
        await engine.submit(_pipe(), {"x": str(i)}, queue="two")
    a = await claim_queued(engine.runstore, "worker-a", definition, ttl_s=30)
    b = await claim_queued(engine.runstore, "worker-b", definition, ttl_s=30)
    c = await claim_queued(engine.runstore, "worker-c", definition, ttl_s=30)
    assert a is not None and b is not None and c is None
    stats = {s.name: s for s in await engine.queues()}
    assert stats["two"].running == 2 and stats["two"].depth == 2


async def test_rate_limited_queue_spaces_its_starts() -> None:
    """A queue with starts_per_minute=60 starts one run, then none until a second passed."""
    now = [1000.0]
    async with _engine(clock=lambda: now[0]) as engine:
        definition = await engine.define_queue("slow", starts_per_minute=60)
        for i in range(3):
            await engine.submit(_pipe(), {"x": str(i)}, queue="slow")
        assert await claim_queued(engine.runstore, "w", definition, ttl_s=30) is not None
        assert await claim_queued(engine.runstore, "w", definition, ttl_s=30) is None
        now[0] += 1.0
        assert await claim_queued(engine.runstore, "w", definition, ttl_s=30) is not None


async def test_crashed_runs_lease_is_claimed_again_and_counted() -> None:
    """A claimed run whose holder vanished is claimed again once its lease expired."""
    now = [1000.0]
    async with _engine(clock=lambda: now[0]) as engine:
        run_id = await engine.submit(_pipe(), {"x": "1"})
        first = await claim_queued(
            engine.runstore, "dead", QueueDefinition(name="default"), ttl_s=5
        )
        assert first is not None and first.claims == 1
        assert await claim_expired(engine.runstore, "w", ["default"], ttl_s=5) is None
        now[0] += 6
        again = await claim_expired(engine.runstore, "w", ["default"], ttl_s=5)
        assert again is not None and again.run_id == run_id and again.claims == 2
        assert again.recovered


async def test_poison_run_is_failed_after_max_claims() -> None:
    """A run claimed more than max_claims times without finishing is failed with the reason."""
    now = [1000.0]
    async with _engine(clock=lambda: now[0], lease_ttl_s=5) as engine:
        await engine.define_queue("q", max_claims=2)
        run_id = await engine.submit(_pipe(), {"x": "1"}, queue="q")
        definition = QueueDefinition(name="q", max_claims=2)
        assert await claim_queued(engine.runstore, "dead-1", definition, ttl_s=5) is not None
        now[0] += 6
        assert await claim_expired(engine.runstore, "dead-2", ["q"], ttl_s=5) is not None
        now[0] += 6
        async with Worker(engine, queues=["q"]):
            await _wait_status(engine, [run_id], "failed")
        record = await engine.runstore.load_run(run_id)
        assert record.error is not None and record.error.type == "PoisonRun"
        assert "claimed 2 times" in record.error.message


async def test_worker_refuses_unknown_queue(engine: Engine) -> None:
    """A worker for a queue nobody defined fails at start with UnknownQueue."""
    with pytest.raises(UnknownQueue):
        async with Worker(engine, queues=["ghost"]):
            pass


async def test_shutdown_puts_unfinished_runs_back(engine: Engine) -> None:
    """A worker shut down with no grace gives its runs back: queued again, then run by another."""
    pipe = _pipe()
    pipe["steps"][0]["executor"] = "slowfake"
    engine.registry.register("slowfake", FakeExecutor(delay=5.0))
    run_id = await engine.submit(pipe, {"x": "1"})
    worker = Worker(engine)
    await worker.__aenter__()
    for _ in range(200):
        if worker.active:
            break
        await asyncio.sleep(0.01)
    await worker.shutdown(grace_s=0)
    record = await engine.runstore.load_run(run_id)
    assert record.status == "queued"
    assert worker.stats.requeued == 1
    assert await engine.runstore.lease(run_id) is None
    ticket = await engine.storage.get(NS_TICKETS, run_id)
    assert ticket is not None


def test_memory_storage_uses_the_generic_claim_path() -> None:
    """The memory adapter has no native claim: the CAS path serves it."""
    assert not isinstance(MemoryStorage(), ClaimingStorage)


async def test_deleted_queued_run_is_dropped_and_its_key_freed(engine: Engine) -> None:
    """A queued run deleted from another process is dropped by the worker that reaches it
    (no failure, nothing left), and its idempotency key submits a new run."""
    doomed = await engine.submit(_pipe(), {"x": "1"}, idempotency_key="k")
    assert await engine.runstore.delete_run(doomed)
    async with Worker(engine) as worker:
        for _ in range(200):
            if not (await engine.queues())[0].depth:
                break
            await asyncio.sleep(0.01)
    assert worker.stats.failed == 0
    assert await engine.storage.get(NS_TICKETS, doomed) is None
    assert await engine.runstore.lease(doomed) is None
    fresh = await engine.submit(_pipe(), {"x": "1"}, idempotency_key="k")
    assert fresh != doomed
    assert (await engine.runstore.load_run(fresh)).status == "queued"


async def test_cancelled_queued_run_is_not_run(engine: Engine) -> None:
    """A run cancelled while queued stays cancelled: the worker that claims it lets it go."""
    from taskloom.sdk._runs.cancel import cancel_run

    run_id = await engine.submit(_pipe(), {"x": "1"})
    outcome = await cancel_run(engine.runstore, run_id)
    assert outcome.cancelled
    async with Worker(engine) as worker:
        for _ in range(200):
            if not (await engine.queues())[0].depth:
                break
            await asyncio.sleep(0.01)
    assert (await engine.runstore.load_run(run_id)).status == "cancelled"
    assert worker.stats.succeeded == 0
    assert await engine.runstore.lease(run_id) is None
    assert not engine.runstore._held and not engine.runstore._adopted


class FlakyStorage:
    """MemoryStorage that fails every call with StorageUnavailable while ``down``."""

    def __init__(self) -> None:
        self.inner = MemoryStorage()
        self.down = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down and name != "aclose":
                raise StorageUnavailable("the store went away (test)")
            return await method(*args, **kwargs)

        return call


async def test_worker_backs_off_while_storage_is_gone_and_comes_back() -> None:
    """A worker whose storage disappears stops claiming, reports it, retries with backoff,
    and runs submissions once the storage is back."""
    storage = FlakyStorage()
    async with (
        _engine(storage) as engine,  # type: ignore[arg-type]
        Worker(engine, poll_s=0.02) as worker,
    ):
        storage.down = True
        for _ in range(300):
            if worker.stats.storage_errors >= 2:
                break
            await asyncio.sleep(0.01)
        assert worker.stats.storage_errors >= 2
        assert "went away" in (worker.stats.last_error or "")
        errors = worker.stats.storage_errors
        await asyncio.sleep(0.2)
        assert worker.stats.storage_errors <= errors + 1  # backing off, not spinning
        storage.down = False
        run_id = await engine.submit(_pipe(), {"x": "1"})
        await _wait_status(engine, [run_id], "succeeded")


async def test_engine_recovers_its_own_crashed_runs_at_start() -> None:
    """Engine(holder=..., recover=True) resumes, at open, the unfinished runs whose lease
    names its holder (its previous life crashed holding them), and no other run."""
    storage = MemoryStorage()
    async with _engine(storage) as first:
        mine = await first.submit(_pipe(), {"x": "mine"})
        theirs = await first.submit(_pipe(), {"x": "theirs"})
        await first.runstore.acquire_lease(mine, "app-1", ttl_s=30)  # then "crashed"
        await first.runstore.acquire_lease(theirs, "app-2", ttl_s=30)
    async with _engine(storage, holder="app-1", recover=True) as again:
        assert [h.run_id for h in again.recovered] == [mine]
        result = await again.recovered[0].result()
        assert result.status == "succeeded" and result.output == "m|hi mine"
        assert (await again.runstore.load_run(theirs)).status == "queued"
    with pytest.raises(UsageError, match="holder"):
        Engine(recover=True)


async def test_queue_limit_holds_end_to_end_across_three_workers() -> None:
    """Three workers (each up to 3 runs at once) on a queue with concurrency 2: never more
    than 2 of its runs call at once, and all of them succeed."""
    storage = MemoryStorage()
    executor = FakeExecutor(delay=0.02)
    engines = []
    for _ in range(3):
        registry = ExecutorRegistry()
        registry.register("fake", executor)
        engines.append(Engine(storage=storage, registry=registry))
    for engine in engines:
        await engine.open()
    try:
        await engines[0].define_queue("pair", concurrency=2)
        ids = [await engines[0].submit(_pipe(), {"x": str(i)}, queue="pair") for i in range(12)]
        workers = [Worker(e, queues=["pair"], concurrency=3, poll_s=0.01) for e in engines]
        for worker in workers:
            await worker.__aenter__()
        try:
            await _wait_status(engines[0], ids, "succeeded")
        finally:
            for worker in workers:
                await worker.shutdown()
        assert executor.max_in_flight <= 2
        assert sum(w.stats.succeeded for w in workers) == 12
    finally:
        for engine in engines:
            await engine.aclose()


async def test_a_queued_run_resumed_by_hand_is_not_run_again(engine: Engine) -> None:
    """`resume` of a queued run runs it at once; a worker that reaches its queue entry later
    finds it finished and leaves it alone."""
    run_id = await engine.submit(_pipe(), {"x": "1"})
    result = await engine.resume(run_id)
    assert result.status == "succeeded" and result.output == "m|hi 1"
    async with Worker(engine) as worker:
        for _ in range(200):
            if not (await engine.queues())[0].depth:
                break
            await asyncio.sleep(0.01)
    assert worker.stats.succeeded == 0 and worker.stats.failed == 0
    assert (await engine.queues())[0].depth == 0
    assert await engine.runstore.lease(run_id) is None


async def test_worker_survives_a_damaged_lease_record(engine: Engine) -> None:
    """A lease record that does not decode is reported and backed off from; the worker
    keeps running and still runs queued work once it is gone."""
    await engine.storage.put("leases", "junk", b"not json")
    async with Worker(engine, poll_s=0.02, recover_every_s=0.01) as worker:
        for _ in range(300):
            if worker.stats.storage_errors:
                break
            await asyncio.sleep(0.01)
        assert worker.stats.storage_errors >= 1
        assert "junk" in (worker.stats.last_error or "")
        await engine.storage.delete("leases", "junk")
        run_id = await engine.submit(_pipe(), {"x": "1"})
        await _wait_status(engine, [run_id], "succeeded")


async def test_shutdown_during_a_claim_still_gives_that_run_back(engine: Engine) -> None:
    """A run claimed while shutdown begins is in hand too: it is given back, not left
    running (to be cancelled by the engine's close)."""
    import taskloom.sdk._workers.worker as worker_module

    pipe = _pipe()
    pipe["steps"][0]["executor"] = "slowfake"
    engine.registry.register("slowfake", FakeExecutor(delay=5.0))
    run_id = await engine.submit(pipe, {"x": "1"})
    claiming = asyncio.Event()
    proceed = asyncio.Event()
    real = worker_module.claim_queued_many

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        claiming.set()
        await proceed.wait()
        return await real(*args, **kwargs)

    worker_module.claim_queued_many = slow_claim  # type: ignore[assignment]
    try:
        worker = Worker(engine, recover=False)
        await worker.__aenter__()
        await claiming.wait()
        stopping = asyncio.ensure_future(worker.shutdown(grace_s=0))
        await asyncio.sleep(0.01)
        proceed.set()
        await stopping
    finally:
        worker_module.claim_queued_many = real  # type: ignore[assignment]
    assert worker.stats.claimed == 1 and worker.stats.requeued == 1
    assert (await engine.runstore.load_run(run_id)).status == "queued"


async def test_a_run_stopped_by_a_storage_error_keeps_its_slot() -> None:
    """A claimed run that stops on a storage error is unfinished: its concurrency slot is
    kept for whoever recovers it, so the queue's limit still holds."""
    storage = MemoryStorage()
    real_commit = storage.commit

    async def commit(ops: Any) -> Any:
        if any(getattr(op, "namespace", None) == NS_RUNS for op in ops) and broken:
            raise StorageUnavailable("run records cannot be written (test)")
        return await real_commit(ops)

    broken = False
    storage.commit = commit  # type: ignore[method-assign]
    async with _engine(storage) as engine:
        await engine.define_queue("one", concurrency=1)
        run_id = await engine.submit(_pipe(), {"x": "1"}, queue="one")
        broken = True  # the run cannot record that it starts, nor that it failed
        worker = Worker(engine, queues=["one"], recover=False, poll_s=0.01)
        await worker.__aenter__()
        for _ in range(300):
            if worker.stats.failed:
                break
            await asyncio.sleep(0.01)
        await worker.shutdown(grace_s=0)
        broken = False
        assert worker.stats.failed == 1
        stats = {s.name: s for s in await engine.queues()}
        assert stats["one"].running == 1  # the slot stays with the unfinished run
        assert (await engine.runstore.load_run(run_id)).status == "queued"


async def test_a_worker_claims_as_many_runs_as_it_has_room_for_at_once(tmp_path: Any) -> None:
    """With room for 6 runs and 6 queued, a worker on SQLite claims them in two native
    claims (one transaction each, at most CLAIM_BATCH runs), not one claim per run."""
    from taskloom.adapters.sqlite import SQLiteStorage

    async with SQLiteStorage(tmp_path / "q.db", purge_interval_s=None) as storage:
        claims: list[int] = []
        real = storage.claim

        async def counting(*args: Any, **kwargs: Any) -> Any:
            got = await real(*args, **kwargs)
            if got:
                claims.append(len(got))
            return got

        storage.claim = counting  # type: ignore[method-assign]
        async with _engine(storage) as engine:
            ids = [await engine.submit(_pipe(), {"x": str(i)}) for i in range(6)]
            async with Worker(engine, concurrency=6, recover=False) as worker:
                await _wait_status(engine, ids, "succeeded")
            assert worker.stats.succeeded == 6
    assert claims == [4, 2]


async def test_a_limited_queue_is_claimed_one_run_per_claim(engine: Engine) -> None:
    """A batch claim on a queue with a concurrency limit takes one run: its slots decide."""
    from taskloom.sdk._queue.claim import claim_queued_many

    definition = await engine.define_queue("two", concurrency=2)
    for i in range(4):
        await engine.submit(_pipe(), {"x": str(i)}, queue="two")
    got = await claim_queued_many(engine.runstore, "w", definition, ttl_s=30, limit=4)
    assert len(got) == 1
    got += await claim_queued_many(engine.runstore, "w", definition, ttl_s=30, limit=4)
    got += await claim_queued_many(engine.runstore, "w", definition, ttl_s=30, limit=4)
    assert len(got) == 2
    assert {s.name: s for s in await engine.queues()}["two"].running == 2


async def test_a_finished_run_gives_its_slot_back_in_its_outcome_commit() -> None:
    """The slot a claim of an unlimited queue took, and its lease, are deleted in the same
    commit as the run's outcome: no deletes of their own afterwards, nothing left behind."""
    from taskloom.contracts import Delete, Put
    from taskloom.sdk._queue.records import NS_SLOTS
    from taskloom.sdk._runs.records import NS_LEASES

    storage = MemoryStorage()
    deletes: list[str] = []
    with_record: set[str] = set()  # slots deleted in a commit that also wrote their run
    real_delete, real_commit = storage.delete, storage.commit

    async def delete(namespace: str, key: str, **kwargs: Any) -> bool:
        deletes.append(namespace)
        return await real_delete(namespace, key, **kwargs)

    async def commit(ops: Any) -> Any:
        runs = {op.key for op in ops if isinstance(op, Put) and op.namespace == NS_RUNS}
        for op in ops:
            owner = op.key.rsplit("~", 1)[-1] if isinstance(op, Delete) else None
            if isinstance(op, Delete) and op.namespace == NS_SLOTS and owner in runs:
                with_record.add(op.key.rsplit("~", 1)[-1])
        return await real_commit(ops)

    storage.delete = delete  # type: ignore[method-assign]
    storage.commit = commit  # type: ignore[method-assign]
    async with _engine(storage) as engine:
        ids = [await engine.submit(_pipe(), {"x": str(i)}) for i in range(3)]
        async with Worker(engine, concurrency=3, recover=False) as worker:
            await _wait_status(engine, ids, "succeeded")
        assert worker.stats.succeeded == 3
        assert await storage.scan(NS_SLOTS) == []
        assert await storage.scan(NS_LEASES) == []
    assert NS_SLOTS not in deletes and NS_LEASES not in deletes
    assert with_record == set(ids)


async def test_operations_with_an_outcome_must_not_be_checked(engine: Engine) -> None:
    """with_outcome refuses a version-checked operation (it could fail the outcome) and
    anything but a Put or Delete."""
    from taskloom.contracts import Check, Delete

    with pytest.raises(UsageError, match="if_version"):
        engine.runstore.with_outcome("r", [Delete(namespace="n", key="k", if_version=1)])
    with pytest.raises(UsageError, match="Put or Delete"):
        engine.runstore.with_outcome("r", [Check(namespace="n", key="k", version=1)])  # type: ignore[list-item]


async def test_a_queued_runs_start_and_its_run_started_event_share_one_commit() -> None:
    """The record saying "running" and the RunStarted event of a claimed run are written
    in one commit, and subscribers hear of the start only once the record says so."""
    from taskloom.contracts import Append, Put, RunStarted
    from taskloom.sdk._runs.codec import decode
    from taskloom.sdk._runs.records import RunRecord

    storage = MemoryStorage()
    starts: list[bool] = []  # per commit that marks the run running: did it hold events?
    real_commit = storage.commit

    async def commit(ops: Any) -> Any:
        for op in ops:
            if isinstance(op, Put) and op.namespace == NS_RUNS:
                record = decode(op.value, RunRecord, where="test")
                if record.status == "running":
                    starts.append(any(isinstance(o, Append) for o in ops))
        return await real_commit(ops)

    storage.commit = commit  # type: ignore[method-assign]
    seen: list[str] = []
    async with _engine(storage) as engine:

        async def on_start(event: Any) -> None:
            seen.append((await engine.runstore.load_run(event.run_id)).status)

        engine.bus.subscribe(on_start, types=[RunStarted])
        ids = [await engine.submit(_pipe(), {"x": str(i)}) for i in range(3)]
        async with Worker(engine, concurrency=1, recover=False):
            await _wait_status(engine, ids, "succeeded")
        for _ in range(100):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.01)
    assert starts == [True, True, True]
    assert len(seen) == 3 and "queued" not in seen


async def test_a_full_worker_is_not_woken_by_submissions() -> None:
    """While every one of its places is taken, a worker's loop sleeps until a run ends:
    submissions through its engine do not wake it (nothing could be claimed)."""
    executor = FakeExecutor()
    executor.gate = asyncio.Event()
    registry = ExecutorRegistry()
    registry.register("fake", executor)
    async with Engine(storage=MemoryStorage(), registry=registry) as engine:
        first = await engine.submit(_pipe(), {"x": "0"})
        worker = Worker(engine, concurrency=1, recover=False, poll_s=0.01)
        waits = [0]
        real = worker._wakeable

        def counting() -> Any:
            waits[0] += 1
            return real()

        worker._wakeable = counting  # type: ignore[method-assign]
        async with worker:
            try:
                await _wait_status(engine, [first], "running")
                before = waits[0]
                ids = [await engine.submit(_pipe(), {"x": str(i)}) for i in range(1, 21)]
                await asyncio.sleep(0.1)  # ten poll intervals
                assert waits[0] == before
            finally:
                executor.gate.set()
            await _wait_status(engine, [first, *ids], "succeeded")
        assert worker.stats.succeeded == 21
