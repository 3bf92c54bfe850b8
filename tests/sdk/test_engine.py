"""The engine: running steps, groups and maps, failures, limits, JSON replies, streaming,
cancellation and timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engine_support import FakeExecutor, FakeTime, make_engine, pipeline

from taskloom.contracts import (
    ChunkStreamed,
    ExecutorTimeout,
    InvalidRequest,
    PipelineInvalid,
    ProviderUnavailable,
    RunCancelled,
    RunCancelledEvent,
    RunFailed,
    RunStarted,
    StepFailed,
    StepFailedEvent,
    StepRetrying,
    StepSucceeded,
    UsageError,
)
from taskloom.sdk import Engine, ExecutorRegistry, ExecutorSettings

FAST = {"max_attempts": 3, "initial_delay_s": 0, "jitter": 0}


async def test_sequential_steps_see_earlier_outputs() -> None:
    """Steps run in order and a later step's template sees an earlier step's output."""
    engine, _ = make_engine()
    async with engine:
        result = await engine.run(
            pipeline(
                {"id": "a", "prompt": "hi {{inputs.who}}"},
                {"id": "b", "prompt": "re {{steps.a.output}}"},
                inputs={"who": {"type": "string"}},
            ),
            {"who": "ann"},
        )
    assert result.status == "succeeded"
    assert result.steps == {"a": "None|hi ann", "b": "None|re None|hi ann"}
    assert result.output == "None|re None|hi ann"


async def test_single_template_keeps_json_type_and_output_template() -> None:
    """A pipeline output of one template keeps the referenced value's type."""
    engine, _ = make_engine()
    async with engine:
        result = await engine.run(
            pipeline(
                {"id": "a", "prompt": "x"},
                inputs={"n": {"type": "integer"}, "xs": {"type": "array"}},
                output={"n": "{{inputs.n}}", "first": "{{inputs.xs.1}}", "text": "n={{inputs.n}}"},
            ),
            {"n": 7, "xs": [{"k": 1}, {"k": 2}]},
        )
    assert result.output == {"n": 7, "first": {"k": 2}, "text": "n=7"}


async def test_model_defaults_come_from_step_then_defaults_then_executor_settings() -> None:
    """The request's model is the step's, else the pipeline default, else the executor's."""
    registry = ExecutorRegistry()
    fake = FakeExecutor()
    registry.register("fake", fake, settings=ExecutorSettings(default_model="base"))
    async with Engine(registry=registry) as engine:
        r1 = await engine.run(pipeline({"id": "a", "prompt": "p", "model": "own"}))
        r2 = await engine.run(pipeline({"id": "a", "prompt": "p"}, defaults={"model": "dflt"}))
        r3 = await engine.run(pipeline({"id": "a", "prompt": "p"}))
    assert (r1.output, r2.output, r3.output) == ("own|p", "dflt|p", "base|p")


async def test_parallel_group_output_maps_ids_and_inner_ids_are_referable() -> None:
    """A parallel group's output maps inner ids to outputs; later steps can use inner ids."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()
    async with engine:
        handle = engine.start(
            pipeline(
                {"id": "g", "parallel": [{"id": "x", "prompt": "1"}, {"id": "y", "prompt": "2"}]},
                {"id": "after", "prompt": "{{steps.x.output}}+{{steps.g.output.y}}"},
            )
        )
        while fake.in_flight < 2:
            await asyncio.sleep(0)
        fake.gate.set()
        result = await handle.result()
    assert result.steps["g"] == {"x": "None|1", "y": "None|2"}
    assert result.output == "None|None|1+None|2"
    assert fake.max_in_flight == 2


async def test_map_keeps_order_and_respects_its_concurrency() -> None:
    """A map's output lists the body's outputs in item order, at most `concurrency` at once."""
    engine, fake = make_engine(FakeExecutor(delay=0.001))
    items = [f"d{i}" for i in range(12)]
    async with engine:
        result = await engine.run(
            pipeline(
                {
                    "id": "m",
                    "map": "{{inputs.docs}}",
                    "as": "doc",
                    "concurrency": 3,
                    "step": {"id": "s", "prompt": "{{index}}:{{doc}}"},
                },
                inputs={"docs": {"type": "array"}},
            ),
            {"docs": items},
        )
    assert result.output == [f"None|{i}:d{i}" for i in range(12)]
    assert fake.max_in_flight <= 3
    assert fake.max_in_flight >= 2


async def test_global_and_per_executor_concurrency_limits() -> None:
    """Engine(max_concurrency) and ExecutorSettings(concurrency) both cap calls in flight."""
    for engine_limit, executor_limit, expected in ((2, None, 2), (None, 3, 3), (4, 1, 1)):
        fake = FakeExecutor(delay=0.001)
        registry = ExecutorRegistry()
        registry.register("fake", fake, settings=ExecutorSettings(concurrency=executor_limit))
        async with Engine(registry=registry, max_concurrency=engine_limit) as engine:
            await engine.run(
                pipeline(
                    {
                        "id": "m",
                        "map": "{{inputs.xs}}",
                        "concurrency": 10,
                        "step": {"id": "s", "prompt": "{{item}}"},
                    },
                    inputs={"xs": {"type": "array"}},
                ),
                {"xs": list(range(20))},
            )
        assert fake.max_in_flight == expected


async def test_failed_step_fails_run_and_dependents_never_start() -> None:
    """A permanent error fails the step at once: StepFailed, and later steps never run."""
    engine, fake = make_engine()
    fake.fail("bad", InvalidRequest("no"))
    events: list[Any] = []
    engine.bus.subscribe(events.append)
    async with engine:
        with pytest.raises(StepFailed) as info:
            await engine.run(
                pipeline({"id": "a", "prompt": "bad", "retry": FAST}, {"id": "b", "prompt": "x"})
            )
        await engine.bus.drain()
        runs = await engine.runstore.list_runs()
    assert info.value.step_id == "a"
    assert info.value.cause_type == "InvalidRequest"
    assert fake.calls["bad"] == 1 and fake.calls["x"] == 0
    assert isinstance(events[-1], RunFailed) and events[-1].step_id == "a"
    assert runs[0].status == "failed" and runs[0].error is not None


async def test_on_error_continue_records_null_and_dependents_run() -> None:
    """With on_error: continue a failed step's output is null and its dependents still run."""
    engine, fake = make_engine()
    fake.fail("bad", InvalidRequest("no"))
    async with engine:
        handle = engine.start(
            pipeline(
                {"id": "a", "prompt": "bad", "on_error": "continue"},
                {"id": "b", "prompt": "saw {{steps.a.output}}"},
            )
        )
        result = await handle.result()
        events = [e async for e in handle.events()]
    assert result.steps["a"] is None
    assert result.output == "None|saw null"
    failed = [e for e in events if isinstance(e, StepFailedEvent)]
    assert failed[0].continued is True


async def test_retryable_errors_are_retried_then_succeed() -> None:
    """Retryable failures are retried (StepRetrying events) until an attempt succeeds."""
    time = FakeTime()
    engine, fake = make_engine(clock=time.clock, sleep=time.sleep, random=lambda: 0.0)
    fake.fail("p", ProviderUnavailable("down"), ProviderUnavailable("down"))
    async with engine:
        handle = engine.start(
            pipeline(
                {
                    "id": "a",
                    "prompt": "p",
                    "retry": {"max_attempts": 3, "initial_delay_s": 1, "jitter": 0},
                }
            )
        )
        result = await handle.result()
        events = [e async for e in handle.events()]
    assert result.output == "None|p"
    assert fake.calls["p"] == 3
    retrying = [e for e in events if isinstance(e, StepRetrying)]
    assert [e.delay_s for e in retrying] == [1.0, 2.0]
    assert time.sleeps == [1.0, 2.0]
    done = [e for e in events if isinstance(e, StepSucceeded)]
    assert done[0].attempt == 3


async def test_json_reply_is_parsed_validated_and_retried_when_invalid() -> None:
    """A json step strips code fences, validates against its schema and retries bad replies."""
    replies = iter(["not json", '```json\n{"n": "x"}\n```', '```json\n{"n": 3}\n```'])
    fake = FakeExecutor(reply=lambda _r: next(replies))
    engine, _ = make_engine(fake)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    async with engine:
        result = await engine.run(
            pipeline(
                {
                    "id": "a",
                    "prompt": "give json",
                    "response_format": {"type": "json", "json_schema": schema},
                    "retry": FAST,
                },
                output="{{steps.a.output.n}}",
            )
        )
    assert result.output == 3
    assert fake.calls["give json"] == 3


async def test_json_reply_never_valid_fails_the_step() -> None:
    """A reply that never satisfies the schema fails the step after the last attempt."""
    engine, fake = make_engine(FakeExecutor(reply=lambda _r: "[1, 2]"))
    async with engine:
        with pytest.raises(StepFailed, match="MalformedResponse"):
            await engine.run(
                pipeline(
                    {
                        "id": "a",
                        "prompt": "p",
                        "response_format": {"type": "json", "json_schema": {"type": "object"}},
                        "retry": FAST,
                    }
                )
            )
    assert fake.calls["p"] == 3


async def test_streaming_step_emits_chunks_and_joins_text() -> None:
    """stream: true emits ChunkStreamed events whose deltas join to the step's output."""
    engine, _ = make_engine()
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "hello there", "stream": True}))
        result = await handle.result()
        events = [e async for e in handle.events()]
    chunks = [e for e in events if isinstance(e, ChunkStreamed)]
    assert len(chunks) > 1
    assert "".join(c.delta for c in chunks) == result.output == "None|hello there"
    assert [c.index for c in chunks] == list(range(len(chunks)))


async def test_plugin_step_gets_rendered_arguments() -> None:
    """A plugin step's function receives its `with` arguments with templates resolved."""
    seen: list[Any] = []

    async def shout(args: Any) -> Any:
        seen.append(args)
        return {"loud": str(args["text"]).upper(), "n": args["n"]}

    engine, _ = make_engine(plugin_steps={"shout": shout})
    async with engine:
        result = await engine.run(
            pipeline(
                {"id": "a", "prompt": "x"},
                {"id": "b", "uses": "shout", "with": {"text": "{{steps.a.output}}", "n": 2}},
                output="{{steps.b.output.loud}}",
            )
        )
    assert seen == [{"text": "None|x", "n": 2}]
    assert result.output == "NONE|X"


async def test_plugin_step_exception_fails_step_without_retry() -> None:
    """A plugin step raising a non-retryable exception fails at once."""
    calls = 0

    async def broken(args: Any) -> Any:
        nonlocal calls
        calls += 1
        raise ValueError("boom")

    engine, _ = make_engine(plugin_steps={"broken": broken})
    async with engine:
        with pytest.raises(StepFailed, match="ValueError: boom"):
            await engine.run(pipeline({"id": "b", "uses": "broken", "retry": FAST}))
    assert calls == 1


async def test_invalid_pipeline_never_calls_the_executor() -> None:
    """Validation problems raise PipelineInvalid before any executor call."""
    engine, fake = make_engine()
    async with engine:
        with pytest.raises(PipelineInvalid):
            await engine.run(pipeline({"id": "a", "prompt": "{{steps.zz.output}}"}))
        with pytest.raises(PipelineInvalid):
            engine.start(pipeline({"id": "a", "prompt": "x"}, inputs={"q": {"type": "string"}}))
    assert fake.total_calls == 0


async def test_handle_cancel_cancels_in_flight_work_and_records_it() -> None:
    """handle.cancel() cancels the call in flight, emits RunCancelled and stores the status."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}))
        while fake.in_flight == 0:
            await asyncio.sleep(0)
        handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result()
        events = [e async for e in handle.events()]
        record = await engine.runstore.load_run(handle.run_id)
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunCancelledEvent)
    assert record.status == "cancelled"
    assert fake.in_flight == 0 and fake.calls["y"] == 0


async def test_cancelling_the_awaiting_task_cancels_the_run() -> None:
    """Cancelling the task that awaits engine.run() cancels the run and records it."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()
    async with engine:
        task = asyncio.create_task(engine.run(pipeline({"id": "a", "prompt": "x"})))
        while fake.in_flight == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        runs = await engine.runstore.list_runs()
    assert runs[0].status == "cancelled"
    assert fake.in_flight == 0


async def test_attempt_timeout_is_retryable_and_leaves_nothing_running() -> None:
    """A call slower than timeout_s becomes ExecutorTimeout, is retried, and is cancelled."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()  # never set: every call hangs
    async with engine:
        with pytest.raises(StepFailed, match="ExecutorTimeout"):
            await engine.run(pipeline({"id": "a", "prompt": "x", "timeout_s": 0.01, "retry": FAST}))
    assert fake.calls["x"] == 3
    assert fake.in_flight == 0


async def test_step_deadline_stops_retries() -> None:
    """A step's deadline_s bounds all its attempts together; passing it fails the step."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()
    async with engine:
        with pytest.raises(StepFailed, match="deadline"):
            await engine.run(
                pipeline(
                    {
                        "id": "a",
                        "prompt": "x",
                        "timeout_s": 10,
                        "deadline_s": 0.02,
                        "retry": {"max_attempts": 5},
                    }
                )
            )
    assert fake.calls["x"] == 1


async def test_deadline_by_injected_clock_refuses_a_retry_that_would_pass_it() -> None:
    """No retry is started when its backoff would end after the step's deadline."""
    time = FakeTime()
    engine, fake = make_engine(clock=time.clock, sleep=time.sleep, random=lambda: 0.0)
    fake.fail("x", *(ExecutorTimeout("slow") for _ in range(5)))
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(
                pipeline(
                    {
                        "id": "a",
                        "prompt": "x",
                        "deadline_s": 100,
                        "retry": {
                            "max_attempts": 10,
                            "initial_delay_s": 30,
                            "jitter": 0,
                            "max_delay_s": 1000,
                        },
                    }
                )
            )
    # waits 30 then 60 (total 90); the next wait (120) would pass the deadline
    assert time.sleeps == [30.0, 60.0]
    assert fake.calls["x"] == 3


async def test_usage_is_summed_per_executor_and_run() -> None:
    """The run record sums usage over steps and per executor id."""
    registry = ExecutorRegistry()
    one, two = FakeExecutor(), FakeExecutor()
    registry.register("one", one)
    registry.register("two", two)
    async with Engine(registry=registry) as engine:
        result = await engine.run(
            pipeline(
                {"id": "a", "prompt": "x"},
                {"id": "b", "prompt": "y", "executor": "two"},
                {"id": "c", "prompt": "z", "executor": "two"},
            )
        )
        record = await engine.runstore.load_run(result.run_id)
    assert record.usage_by_executor["one"].total_tokens == 2
    assert record.usage_by_executor["two"].total_tokens == 4
    assert record.usage.total_tokens == 6 == result.usage.total_tokens


async def test_engine_without_storage_runs_but_cannot_resume() -> None:
    """storage=None keeps no state: runs work, resume is a UsageError."""
    engine, _ = make_engine(storage=None)
    async with engine:
        result = await engine.run(pipeline({"id": "a", "prompt": "x"}))
        assert result.output == "None|x"
        with pytest.raises(UsageError):
            await engine.resume(result.run_id)


async def test_closed_engine_refuses_new_runs() -> None:
    """Using an engine after aclose() is a UsageError."""
    engine, _ = make_engine()
    async with engine:
        pass
    with pytest.raises(UsageError):
        await engine.run(pipeline({"id": "a", "prompt": "x"}))


async def test_aclose_cancels_started_runs() -> None:
    """Closing the engine cancels runs still going; their handles raise RunCancelled."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "x"}))
        while fake.in_flight == 0:
            await asyncio.sleep(0)
    with pytest.raises(RunCancelled):
        await handle.result()


async def test_events_cover_the_run_in_order() -> None:
    """A run emits RunStarted, per-step started/succeeded, and RunSucceeded last."""
    engine, _ = make_engine()
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}))
        await handle.result()
        kinds = [(type(e).__name__, getattr(e, "step_id", None)) async for e in handle.events()]
    assert kinds == [
        ("RunStarted", None),
        ("StepStarted", "a"),
        ("StepSucceeded", "a"),
        ("StepStarted", "b"),
        ("StepSucceeded", "b"),
        ("RunSucceeded", None),
    ]


async def test_non_json_output_fails_the_run_with_a_usage_error() -> None:
    """A plugin output that is not JSON cannot be checkpointed: UsageError, run failed."""

    async def returns_a_set(args: Any) -> Any:
        return {1, 2}

    engine, _ = make_engine(plugin_steps={"bad": returns_a_set})
    async with engine:
        with pytest.raises(UsageError, match="not JSON"):
            await engine.run(pipeline({"id": "a", "uses": "bad"}))
        runs = await engine.runstore.list_runs()
    assert runs[0].status == "failed"
    assert runs[0].error is not None and runs[0].error.type == "UsageError"


async def test_validate_returns_the_pipeline_and_is_reused_by_run() -> None:
    """engine.validate() returns the structured Pipeline; running it reuses the check."""
    engine, _ = make_engine()
    async with engine:
        checked = engine.validate(pipeline({"id": "a", "prompt": "x"}))
        assert checked.steps[0].id == "a"
        assert engine.validate(checked) is checked
        result = await engine.run(checked)
    assert result.output == "None|x"


async def test_tokens_of_failed_attempts_are_counted() -> None:
    """Replies that fail validation still cost tokens, and the run's usage shows them."""
    engine, fake = make_engine(FakeExecutor(reply=lambda _r: "not json"))
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(
                pipeline(
                    {"id": "a", "prompt": "p", "response_format": {"type": "json"}, "retry": FAST}
                )
            )
        record = (await engine.runstore.list_runs())[0]
    assert fake.calls["p"] == 3
    assert record.usage.total_tokens == 6  # 3 attempts x (1 prompt + 1 completion)
    assert record.usage_by_executor["fake"].total_tokens == 6


async def test_storage_errors_propagate_instead_of_failing_the_step() -> None:
    """A store that fails (here: the response cache) raises its StorageError, not StepFailed."""
    from taskloom.adapters.memory import MemoryStorage
    from taskloom.contracts import StorageUnavailable

    class BrokenCache(MemoryStorage):
        async def get(self, namespace: str, key: str) -> Any:
            if namespace == "cache":
                raise StorageUnavailable("the cache disk is gone")
            return await super().get(namespace, key)

    engine, fake = make_engine(storage=BrokenCache())
    async with engine:
        with pytest.raises(StorageUnavailable):
            await engine.run(pipeline({"id": "a", "prompt": "p", "temperature": 0, "cache": True}))
        record = (await engine.runstore.list_runs())[0]
    assert record.status == "failed"
    assert fake.total_calls == 0
    await engine.storage.aclose()


async def test_known_secrets_are_masked_in_errors_events_and_records() -> None:
    """With a redactor, secret values in executor errors never reach events or stored runs."""
    from taskloom.contracts import MASK
    from taskloom.security import Redactor

    secret = "sk-very-secret-value-123456"
    engine, fake = make_engine(redactor=Redactor([secret]))
    fake.fail("p", InvalidRequest(f"the key {secret} was refused"))
    seen: list[Any] = []
    engine.bus.subscribe(seen.append)
    async with engine:
        with pytest.raises(StepFailed) as info:
            await engine.run(pipeline({"id": "a", "prompt": "p"}))
        await engine.bus.drain()
        record = (await engine.runstore.list_runs())[0]
        stored = await engine.runstore.events(record.run_id)
    assert secret not in str(info.value) and MASK in str(info.value)
    assert record.error is not None and secret not in record.error.message
    assert all(secret not in repr(event) for event in seen)
    assert all(secret not in repr(event) for _, event in stored)
