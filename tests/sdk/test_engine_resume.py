"""Durable runs on the engine side: checkpoints, resume, leases, changed pipelines, the cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CacheHit,
    InvalidRequest,
    PipelineChanged,
    RunCancelled,
    RunHeld,
    RunNotFound,
    StepFailed,
    StepSkipped,
)
from taskloom.sdk import Engine, ExecutorRegistry

MIXED = pipeline(
    {"id": "a", "prompt": "a {{inputs.topic}}"},
    {
        "id": "m",
        "map": "{{inputs.docs}}",
        "concurrency": 2,
        "step": {"id": "s", "prompt": "sum {{item}} after {{steps.a.output}}"},
    },
    {"id": "g", "parallel": [{"id": "g1", "prompt": "g1"}, {"id": "g2", "prompt": "g2"}]},
    {"id": "z", "prompt": "z {{steps.m.output}} {{steps.g2.output}}"},
    inputs={"topic": {"type": "string"}, "docs": {"type": "array"}},
    output={"m": "{{steps.m.output}}", "z": "{{steps.z.output}}"},
)
INPUTS = {"topic": "t", "docs": [f"d{i}" for i in range(6)]}


async def _uninterrupted() -> Any:
    engine, _ = make_engine()
    async with engine:
        return (await engine.run(MIXED, INPUTS)).output


@pytest.mark.parametrize("durability", ["async", "sync"])
async def test_cancel_mid_map_then_resume_runs_only_unfinished_work(durability: str) -> None:
    """A run cancelled inside a map resumes without re-running any finished step or item,
    and ends with the same output as an uninterrupted run."""
    expected = await _uninterrupted()
    storage = MemoryStorage()
    stop_after = 3  # cancel once three map items have been answered
    first = FakeExecutor()
    answered = asyncio.Event()
    original = first.reply

    def counting(request: Any) -> str:
        done = sum(v for k, v in first.calls.items() if k.startswith("sum "))
        if request.messages[-1].content.startswith("sum ") and done >= stop_after:
            answered.set()
            first.gate = asyncio.Event()  # calls not yet answered wait until the cancel
        return original(request)

    first.reply = counting
    engine, _ = make_engine(first, storage=storage, durability=durability)
    async with engine:
        handle = engine.start(MIXED, INPUTS)
        await answered.wait()
        handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result()
        run_id = handle.run_id
        finished = await engine.runstore.finished_steps(run_id)
    done_items = {item for (sid, item) in finished if sid == "m" and item is not None}
    assert ("a", None) in finished and 0 < len(done_items) < 6

    second = FakeExecutor()
    engine2, _ = make_engine(second, storage=storage)
    async with engine2:
        result = await engine2.resume(run_id)
        record = await engine2.runstore.load_run(run_id)
    assert result.output == expected
    assert record.status == "succeeded" and record.output == expected
    assert second.calls["a t"] == 0
    for index in done_items:
        assert second.calls[f"sum d{index} after None|a t"] == 0
    assert sum(second.calls.values()) == (6 - len(done_items)) + 3  # items left, g1, g2, z
    await storage.aclose()


async def test_resume_after_failure_retries_the_failed_step_only() -> None:
    """A run failed by a permanent error resumes from the failed step (earlier ones kept)."""
    storage = MemoryStorage()
    first = FakeExecutor()
    first.fail("b", InvalidRequest("nope"))
    steps = pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"})
    engine, _ = make_engine(first, storage=storage)
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(steps)
        run_id = (await engine.runstore.list_runs())[0].run_id
    second = FakeExecutor()
    engine2, _ = make_engine(second, storage=storage)
    async with engine2:
        handle = engine2.start_resume(run_id)
        result = await handle.result()
        skipped = [e.step_id async for e in handle.events() if isinstance(e, StepSkipped)]
    assert result.output == "None|b"
    assert second.calls == {"b": 1}
    assert result.steps["a"] == "None|a"
    assert skipped == ["a"]
    await storage.aclose()


async def test_resuming_a_finished_run_returns_its_result_without_calls() -> None:
    """Resume of a succeeded run returns the stored result and calls nothing."""
    engine, fake = make_engine()
    async with engine:
        result = await engine.run(MIXED, INPUTS)
        calls = fake.total_calls
        again = await engine.resume(result.run_id)
    assert again.output == result.output and again.status == "succeeded"
    assert again.usage == result.usage
    assert fake.total_calls == calls


async def test_resume_with_changed_pipeline_is_refused() -> None:
    """Resuming with a pipeline that differs from the run's raises PipelineChanged."""
    storage = MemoryStorage()
    engine, fake = make_engine(storage=storage)
    fake.fail("b", InvalidRequest("nope"))
    steps = pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"})
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(steps)
        run_id = (await engine.runstore.list_runs())[0].run_id
        changed = pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "B!"})
        with pytest.raises(PipelineChanged):
            await engine.resume(run_id, changed)
        result = await engine.resume(run_id, steps)
    assert result.output == "None|b"
    await storage.aclose()


async def test_resume_of_a_held_run_is_refused() -> None:
    """While another holder has the run's lease, resume raises RunHeld and runs nothing."""
    engine, fake = make_engine()
    fake.fail("b", InvalidRequest("nope"))
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}))
        run_id = (await engine.runstore.list_runs())[0].run_id
        await engine.runstore.acquire_lease(run_id, "someone-else", ttl_s=60)
        calls = fake.total_calls
        with pytest.raises(RunHeld):
            await engine.resume(run_id)
        assert fake.total_calls == calls
        await engine.runstore.release_lease(run_id, "someone-else")


async def test_resume_unknown_run_is_not_found() -> None:
    """Resuming an id that was never run raises RunNotFound."""
    engine, _ = make_engine()
    async with engine:
        with pytest.raises(RunNotFound):
            await engine.resume("f" * 32)


async def test_every_finished_step_and_item_is_checkpointed() -> None:
    """A run stores one record per step, group child, group and map item."""
    engine, _ = make_engine()
    async with engine:
        result = await engine.run(MIXED, INPUTS)
        finished = await engine.runstore.finished_steps(result.run_id)
        events = await engine.runstore.events(result.run_id)
    keys = set(finished)
    assert keys == {
        ("a", None),
        ("m", None),
        *(("m", i) for i in range(6)),
        ("g1", None),
        ("g2", None),
        ("g", None),
        ("z", None),
    }
    assert finished[("m", None)].output == result.output["m"]
    names = [type(e).__name__ for _, e in events]
    assert names[0] == "RunStarted" and names[-1] == "RunSucceeded"


async def test_cache_hits_cost_no_call_and_emit_cache_hit() -> None:
    """A cached deterministic request is answered from the cache on the next run."""
    registry = ExecutorRegistry()
    fake = FakeExecutor()
    registry.register("fake", fake)
    cached = pipeline({"id": "a", "prompt": "p", "temperature": 0, "cache": True})
    async with Engine(registry=registry) as engine:
        first = await engine.run(cached)
        handle = engine.start(cached)
        second = await handle.result()
        hits = [e async for e in handle.events() if isinstance(e, CacheHit)]
    assert first.output == second.output
    assert fake.calls["p"] == 1
    assert len(hits) == 1 and hits[0].step_id == "a"


async def test_nondeterministic_requests_are_not_cached_unless_allowed() -> None:
    """Without temperature 0 or a seed a step is not cached, unless cache_nondeterministic."""
    registry = ExecutorRegistry()
    fake = FakeExecutor()
    registry.register("fake", fake)
    plain = pipeline({"id": "a", "prompt": "p", "cache": True})
    allowed = pipeline(
        {"id": "a", "prompt": "q"}, defaults={"cache": True, "cache_nondeterministic": True}
    )
    async with Engine(registry=registry) as engine:
        for _ in range(2):
            await engine.run(plain)
            await engine.run(allowed)
    assert fake.calls["p"] == 2
    assert fake.calls["q"] == 1


async def test_a_lost_lease_stops_the_run_with_run_held() -> None:
    """When a renewal finds the lease taken by another holder, the run stops with RunHeld."""
    engine, fake = make_engine(lease_ttl_s=0.03)
    fake.gate = asyncio.Event()
    async with engine:

        async def taken(run_id: str, holder: str, *, ttl_s: float = 30.0) -> None:
            raise RunHeld("taken over", holder="other")

        engine.runstore.renew_lease = taken
        with pytest.raises(RunHeld):
            await engine.run(pipeline({"id": "a", "prompt": "x"}))
    assert fake.in_flight == 0


async def test_the_lease_is_released_after_a_run() -> None:
    """A finished run leaves no lease behind, so another process may resume it at once."""
    engine, fake = make_engine()
    fake.fail("b", InvalidRequest("nope"))
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}))
        run_id = (await engine.runstore.list_runs())[0].run_id
        await engine.runstore.acquire_lease(run_id, "another-process", ttl_s=60)
        await engine.runstore.release_lease(run_id, "another-process")


async def test_resume_reruns_work_whose_needs_lost_their_checkpoint() -> None:
    """A store holding map items and a later step's checkpoint but not the checkpoint of the
    step they needed (a record deleted by hand): resume runs that step and everything built on
    it again instead of mixing old outputs with a new one."""
    from taskloom.sdk._runs.records import NS_STEPS, step_key

    storage = MemoryStorage()
    first = FakeExecutor()
    first.fail("z None|a t", InvalidRequest("nope"))
    pipe = pipeline(
        {"id": "a", "prompt": "a {{inputs.topic}}"},
        {
            "id": "m",
            "map": "{{inputs.docs}}",
            "concurrency": 2,
            "step": {"id": "s", "prompt": "sum {{item}} after {{steps.a.output}}"},
        },
        {"id": "b", "prompt": "b {{steps.a.output}}", "needs": ["a"]},
        {"id": "z", "prompt": "z {{steps.a.output}}", "needs": ["m", "b"]},
        inputs={"topic": {"type": "string"}, "docs": {"type": "array"}},
        output={"m": "{{steps.m.output}}", "b": "{{steps.b.output}}"},
    )
    engine, _ = make_engine(first, storage=storage)
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(pipe, INPUTS)
        run_id = (await engine.runstore.list_runs())[0].run_id
        before = set(await engine.runstore.finished_steps(run_id))
        assert {("a", None), ("m", None), ("b", None), ("m", 0)} <= before
        await storage.delete(NS_STEPS, step_key(run_id, "a", None))

    second = FakeExecutor(reply=lambda r: f"new|{r.messages[-1].content}")
    engine2, _ = make_engine(second, storage=storage)
    async with engine2:
        result = await engine2.resume(run_id, pipe)
    assert result.status == "succeeded"
    assert second.calls["a t"] == 1
    assert result.output["b"] == "new|b new|a t"
    assert result.output["m"] == [f"new|sum d{i} after new|a t" for i in range(6)]
    await storage.aclose()


async def test_usage_after_a_resume_counts_every_attempt_of_every_process() -> None:
    """A run fails after two paid attempts of a step (malformed replies) and is resumed: its
    usage counts those attempts too, not only the checkpoints and the resuming process."""
    from taskloom.contracts import CompletionRequest, StepFailed

    broken = {"on": True}

    def reply(request: CompletionRequest) -> str:
        prompt = request.messages[-1].content
        if prompt == "p2":
            return "not json" if broken["on"] else '{"ok": 1}'
        return "fine"

    fake = FakeExecutor(reply=reply)  # each call: 1 prompt token + 1 completion token
    engine, _ = make_engine(fake, storage=MemoryStorage())
    steps: list[dict[str, Any]] = [
        {"id": f"s{i}", "prompt": f"p{i}", "executor": "fake"} for i in range(4)
    ]
    steps[2].update(response_format={"type": "json"}, retry={"max_attempts": 2})
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(pipeline(*steps))
        (failed,) = await engine.runstore.list_runs()
        broken["on"] = False
        result = await engine.resume(failed.run_id)
        stored = await engine.runstore.load_run(failed.run_id)
    assert fake.total_calls == 6  # s0, s1, two bad s2 attempts; then s2 and s3
    assert result.usage.total_tokens == stored.usage.total_tokens == 2 * fake.total_calls
    assert stored.usage_by_executor["fake"].total_tokens == 2 * fake.total_calls
