"""Input and approval steps: a run waits durably for a value, ``provide`` continues it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from engine_support import FakeExecutor, FakeTime, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import (
    AlreadyProvided,
    InputProvided,
    InputRejected,
    InputTimedOut,
    NotAnInputStep,
    NotWaiting,
    PipelineInvalid,
    RunNotFound,
    StepFailed,
    StepWaiting,
)
from taskloom.sdk._runs.cancel import cancel_run

SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["topic"],
    "additionalProperties": False,
}


def _waiting_pipeline(**input_extra: Any) -> dict[str, Any]:
    return pipeline(
        {"id": "draft", "prompt": "draft"},
        {"id": "ask", "input": {"prompt": "topic after {{steps.draft.output}}?", "schema": SCHEMA}}
        | input_extra,
        {"id": "write", "prompt": "about {{steps.ask.output.topic}}"},
    )


async def _events(engine: Any, run_id: str) -> list[Any]:
    return [event for _n, event in await engine.runstore.events(run_id)]


async def test_a_run_reaching_an_input_step_waits_and_holds_no_lease() -> None:
    """The run reports status waiting (no error), its record says waiting, a StepWaiting
    event carries the rendered prompt and schema, and no lease is held."""
    engine, fake = make_engine(storage=MemoryStorage())
    async with engine:
        result = await engine.run(_waiting_pipeline())
        assert result.status == "waiting" and result.waiting == ("ask",)
        assert result.output is None
        record = await engine.runstore.load_run(result.run_id)
        assert record.status == "waiting" and set(record.waiting) == {"ask"}
        assert await engine.runstore.lease(result.run_id) is None
        waits = [e for e in await _events(engine, result.run_id) if isinstance(e, StepWaiting)]
        assert len(waits) == 1
        assert waits[0].prompt == f"topic after {result.steps['draft']}?"
        assert result.steps["draft"].endswith("|draft")
        assert waits[0].schema == SCHEMA
    assert fake.calls == {"draft": 1}  # "write" needs the value: never called


async def test_provide_continues_the_run_and_records_who() -> None:
    """provide checkpoints the value, records InputProvided with ``by``, and finishes."""
    engine, fake = make_engine(storage=MemoryStorage())
    async with engine:
        waiting = await engine.run(_waiting_pipeline())
        result = await engine.provide(waiting.run_id, "ask", {"topic": "owls"}, by="alice")
        assert result.status == "succeeded"
        assert result.steps["ask"] == {"topic": "owls"}
        assert result.output.endswith("about owls")
        record = await engine.runstore.load_run(waiting.run_id)
        assert record.status == "succeeded" and record.waiting == {}
        provided = [
            e for e in await _events(engine, waiting.run_id) if isinstance(e, InputProvided)
        ]
        assert [(e.step_id, e.by) for e in provided] == [("ask", "alice")]
    assert fake.calls == {"draft": 1, "about owls": 1}  # the draft ran once, not again


async def test_provide_defaults_by_to_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``by`` the OS user is recorded as the provider."""
    monkeypatch.setattr("getpass.getuser", lambda: "osuser")
    engine, _ = make_engine(storage=MemoryStorage())
    async with engine:
        waiting = await engine.run(_waiting_pipeline())
        await engine.provide(waiting.run_id, "ask", {"topic": "x"})
        events = await _events(engine, waiting.run_id)
    assert [e.by for e in events if isinstance(e, InputProvided)] == ["osuser"]


async def test_a_waiting_run_survives_a_restart(tmp_path: Path) -> None:
    """A new engine on the same SQLite file provides the value and finishes the run."""
    path = tmp_path / "runs.db"
    before = SQLiteStorage(path)
    first, fake1 = make_engine(storage=before)
    async with first:
        waiting = await first.run(_waiting_pipeline())
    await before.aclose()
    assert waiting.status == "waiting"
    storage = SQLiteStorage(path)
    second, fake2 = make_engine(storage=storage)
    async with second:
        result = await second.provide(waiting.run_id, "ask", {"topic": "bees"}, by="bob")
    await storage.aclose()
    assert result.status == "succeeded" and result.output.endswith("about bees")
    assert fake1.calls == {"draft": 1} and fake2.calls == {"about bees": 1}


async def test_independent_branches_finish_while_a_step_waits() -> None:
    """A root step that does not need the input step runs to the end first."""
    engine, fake = make_engine(storage=MemoryStorage())
    p = pipeline(
        {"id": "ask", "input": {"prompt": "go?"}, "needs": []},
        {"id": "other", "prompt": "independent", "needs": []},
        {"id": "after", "prompt": "after {{steps.ask.output}}", "needs": ["ask"]},
        output={"other": "{{steps.other.output}}", "after": "{{steps.after.output}}"},
    )
    async with engine:
        waiting = await engine.run(p)
        assert waiting.status == "waiting" and "other" in waiting.steps
        result = await engine.provide(waiting.run_id, "ask", "yes")
    assert result.output["after"].endswith("after yes")
    assert fake.calls == {"independent": 1, "after yes": 1}


async def test_start_handle_reports_waiting() -> None:
    """A run started with ``start`` ends its handle with status waiting, not an error."""
    engine, _ = make_engine(storage=MemoryStorage())
    async with engine:
        handle = engine.start(_waiting_pipeline())
        result = await handle.result()
        kinds = [type(e).__name__ async for e in handle.events()]
    assert result.status == "waiting"
    assert "StepWaiting" in kinds


async def test_a_value_of_the_wrong_shape_is_refused_with_its_path() -> None:
    """A value that breaks the schema raises InputRejected naming the path; nothing is
    recorded and the run still waits."""
    engine, _ = make_engine(storage=MemoryStorage())
    async with engine:
        waiting = await engine.run(_waiting_pipeline())
        with pytest.raises(InputRejected) as info:
            await engine.provide(waiting.run_id, "ask", {"topic": "x", "n": "three"})
        assert info.value.path == "$.n"
        assert info.value.step_id == "ask"
        with pytest.raises(InputRejected) as missing:
            await engine.provide(waiting.run_id, "ask", {})
        assert missing.value.path == "$"
        with pytest.raises(InputRejected):
            await engine.provide(waiting.run_id, "ask", float("nan"))
        record = await engine.runstore.load_run(waiting.run_id)
        assert record.status == "waiting"
        assert ("ask", None) not in await engine.runstore.finished_steps(waiting.run_id)


async def test_every_bad_target_is_a_typed_error() -> None:
    """Unknown run, a step that is not an input step, an unknown step, a step not reached
    yet, and a value provided twice each raise their own error."""
    engine, _ = make_engine(storage=MemoryStorage())
    p = pipeline(
        {"id": "a", "input": {"prompt": "first"}},
        {"id": "b", "input": {"prompt": "second"}},
        {"id": "c", "prompt": "end"},
    )
    async with engine:
        waiting = await engine.run(p)
        with pytest.raises(RunNotFound):
            await engine.provide("nosuchrun", "a", 1)
        with pytest.raises(NotAnInputStep, match="input steps: a, b"):
            await engine.provide(waiting.run_id, "c", 1)
        with pytest.raises(NotAnInputStep):
            await engine.provide(waiting.run_id, "zzz", 1)
        with pytest.raises(NotWaiting, match="not at 'b' yet"):
            await engine.provide(waiting.run_id, "b", 1)
        again = await engine.provide(waiting.run_id, "a", 1)
        assert again.status == "waiting" and again.waiting == ("b",)
        with pytest.raises(AlreadyProvided):
            await engine.provide(waiting.run_id, "a", 2)
        done = await engine.provide(waiting.run_id, "b", 2)
        assert done.status == "succeeded"
        with pytest.raises(AlreadyProvided):
            await engine.provide(waiting.run_id, "b", 3)
        assert not isinstance(NotWaiting("x", run_id="r", step_id="s"), AlreadyProvided)


async def test_approval_approve_continues() -> None:
    """An approve decision is the step's output and the run goes on."""
    engine, _ = make_engine(storage=MemoryStorage())
    p = pipeline({"id": "ok", "approval": {"prompt": "ship it?"}}, {"id": "ship", "prompt": "s"})
    async with engine:
        waiting = await engine.run(p)
        result = await engine.provide(
            waiting.run_id, "ok", {"decision": "approve", "comment": "fine"}
        )
    assert result.status == "succeeded"
    assert result.steps["ok"] == {"decision": "approve", "comment": "fine"}


async def test_approval_reject_fails_the_run_with_the_comment() -> None:
    """A reject decision fails the run (StepFailed, cause ApprovalRejected) with its comment."""
    engine, fake = make_engine(storage=MemoryStorage())
    p = pipeline({"id": "ok", "approval": {"prompt": "ship it?"}}, {"id": "ship", "prompt": "s"})
    async with engine:
        waiting = await engine.run(p)
        with pytest.raises(StepFailed, match="too risky") as info:
            await engine.provide(
                waiting.run_id, "ok", {"decision": "reject", "comment": "too risky"}
            )
        record = await engine.runstore.load_run(waiting.run_id)
    assert info.value.cause_type == "ApprovalRejected" and info.value.step_id == "ok"
    assert record.status == "failed" and record.error is not None
    assert "too risky" in record.error.message
    assert fake.total_calls == 0


async def test_approval_refuses_anything_but_a_decision() -> None:
    """An approval value without a valid decision is InputRejected."""
    engine, _ = make_engine(storage=MemoryStorage())
    p = pipeline({"id": "ok", "approval": {"prompt": "ship it?"}})
    async with engine:
        waiting = await engine.run(p)
        for bad in ({"decision": "maybe"}, "approve", {"decision": "approve", "extra": 1}):
            with pytest.raises(InputRejected):
                await engine.provide(waiting.run_id, "ok", bad)


async def test_timeout_fail_fails_the_run_when_next_touched() -> None:
    """Past timeout_s with on_timeout fail: provide refuses the value with InputTimedOut
    and the run is failed."""
    time = FakeTime()
    engine, _ = make_engine(storage=MemoryStorage(), clock=time.clock)
    async with engine:
        waiting = await engine.run(_waiting_pipeline(timeout_s=60))
        time.now += 61
        with pytest.raises(InputTimedOut) as info:
            await engine.provide(waiting.run_id, "ask", {"topic": "late"})
        record = await engine.runstore.load_run(waiting.run_id)
    assert info.value.timeout_s == 60
    assert record.status == "failed" and record.error is not None
    assert "InputTimedOut" in record.error.message or "timeout" in record.error.message


async def test_timeout_default_goes_on_with_the_default_on_resume() -> None:
    """Past timeout_s with on_timeout default, a resume uses the default value."""
    time = FakeTime()
    engine, fake = make_engine(storage=MemoryStorage(), clock=time.clock)
    async with engine:
        waiting = await engine.run(
            _waiting_pipeline(timeout_s=60, on_timeout="default", default={"topic": "dflt"})
        )
        time.now += 30
        still = await engine.resume(waiting.run_id)
        assert still.status == "waiting"  # not yet timed out: counts from the first wait
        time.now += 31
        result = await engine.resume(waiting.run_id)
    assert result.status == "succeeded" and result.steps["ask"] == {"topic": "dflt"}
    assert fake.calls["about dflt"] == 1


async def test_a_value_within_the_timeout_is_taken() -> None:
    """Before timeout_s runs out, a value is accepted as usual."""
    time = FakeTime()
    engine, _ = make_engine(storage=MemoryStorage(), clock=time.clock)
    async with engine:
        waiting = await engine.run(_waiting_pipeline(timeout_s=60))
        time.now += 59
        result = await engine.provide(waiting.run_id, "ask", {"topic": "in time"})
    assert result.status == "succeeded"


async def test_a_waiting_run_can_be_cancelled_and_listed_by_status() -> None:
    """runs listed by status waiting include it; cancelling records it cancelled."""
    engine, _ = make_engine(storage=MemoryStorage())
    async with engine:
        waiting = await engine.run(_waiting_pipeline())
        listed = await engine.runstore.list_runs(status="waiting")
        assert [r.run_id for r in listed] == [waiting.run_id]
        outcome = await cancel_run(engine.runstore, waiting.run_id)
        assert outcome.cancelled
        with pytest.raises(NotWaiting, match="cancelled"):
            await engine.provide(waiting.run_id, "ask", {"topic": "x"})


@pytest.mark.parametrize(
    ("step", "path"),
    [
        ({"id": "x", "input": {"prompt": "p", "schema": {"type": "nonsense"}}}, "input.schema"),
        ({"id": "x", "input": {"prompt": "p", "bogus": 1}}, "input.bogus"),
        (
            {
                "id": "x",
                "input": {"prompt": "p", "schema": {"type": "integer"}},
                "timeout_s": 5,
                "on_timeout": "default",
                "default": "text",
            },
            "default",
        ),
        ({"id": "x", "input": {"prompt": "p"}, "on_timeout": "default"}, "on_timeout"),
        ({"id": "x", "approval": {"prompt": "{{steps.nope.output}}"}}, "approval.prompt"),
        ({"id": "g", "parallel": [{"id": "x", "input": {"prompt": "p"}}]}, "parallel[0]"),
        (
            {"id": "m", "map": "{{inputs.xs}}", "step": {"id": "x", "approval": {"prompt": "p"}}},
            "$.steps[0].step",
        ),
    ],
)
async def test_bad_input_steps_are_refused_before_running(step: dict[str, Any], path: str) -> None:
    """A broken input schema, unknown fields, a default the schema refuses, on_timeout
    default without timeout_s, bad prompt templates and nesting are PipelineInvalid."""
    engine, _ = make_engine(storage=MemoryStorage())
    async with engine:
        with pytest.raises(PipelineInvalid) as info:
            engine.validate(pipeline(step))
    assert any(path in p.path for p in info.value.problems), info.value.problems


def test_the_published_schema_accepts_input_steps() -> None:
    """An input and an approval step validate against examples/pipeline.schema.json."""
    import jsonschema

    root = Path(__file__).resolve().parents[2]
    schema = json.loads((root / "examples" / "pipeline.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(
        pipeline(
            {"id": "a", "input": {"prompt": "p", "schema": SCHEMA}, "timeout_s": 5},
            {"id": "b", "approval": {"prompt": "ok?"}},
        )
    )


async def test_without_storage_provide_is_a_usage_error() -> None:
    """An engine that keeps no state cannot provide (nothing could wait)."""
    from taskloom.contracts import UsageError

    engine, _ = make_engine(FakeExecutor(), storage=None)
    async with engine:
        with pytest.raises(UsageError):
            await engine.provide("r", "s", 1)


def test_sync_engine_provides_too() -> None:
    """SyncEngine.provide blocks and returns the continued run's result."""
    from taskloom.sdk import ExecutorRegistry, SyncEngine

    registry = ExecutorRegistry()
    registry.register("fake", FakeExecutor())
    with SyncEngine(registry=registry) as engine:
        waiting = engine.run(_waiting_pipeline())
        assert waiting.status == "waiting"
        result = engine.provide(waiting.run_id, "ask", {"topic": "sync"}, by="me")
    assert result.status == "succeeded" and result.output.endswith("about sync")


async def test_a_worker_sweep_resolves_a_timed_out_step() -> None:
    """A worker continues a waiting run whose input step is past timeout_s: with
    on_timeout default the run goes on with the default and succeeds."""
    import asyncio

    from taskloom.sdk import Worker

    time = FakeTime()
    engine, fake = make_engine(storage=MemoryStorage(), clock=time.clock)
    async with engine:
        waiting = await engine.run(
            _waiting_pipeline(timeout_s=60, on_timeout="default", default={"topic": "dflt"})
        )
        time.now += 61
        async with Worker(engine, poll_s=0.01, recover_every_s=0.01, timeout_sweep_s=0.01):
            async with asyncio.timeout(10):
                while (await engine.runstore.load_run(waiting.run_id)).status != "succeeded":
                    await asyncio.sleep(0.01)
    assert fake.calls["about dflt"] == 1


async def test_resolve_timeouts_fails_a_run_past_its_timeout_and_leaves_others() -> None:
    """resolve_timeouts continues only the runs past their timeout: on_timeout fail
    records the run failed (InputTimedOut); a run still in time keeps waiting."""
    time = FakeTime()
    engine, _ = make_engine(storage=MemoryStorage(), clock=time.clock)
    async with engine:
        late = await engine.run(_waiting_pipeline(timeout_s=60))
        time.now += 30
        fresh = await engine.run(_waiting_pipeline(timeout_s=60))
        time.now += 31
        handles = await engine.resolve_timeouts()
        assert [h.run_id for h in handles] == [late.run_id]
        with pytest.raises(StepFailed, match="timeout_s"):
            await handles[0].result()
        assert (await engine.runstore.load_run(late.run_id)).status == "failed"
        assert (await engine.runstore.load_run(fresh.run_id)).status == "waiting"


async def test_resolve_timeouts_goes_on_past_a_damaged_waiting_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A waiting run whose stored record is damaged is logged and skipped: the sweep (a
    worker calls it before claiming) still times out the other runs instead of raising."""
    time = FakeTime()
    storage = MemoryStorage()
    engine, _ = make_engine(storage=storage, clock=time.clock)
    async with engine:
        damaged = await engine.run(_waiting_pipeline(timeout_s=60))
        late = await engine.run(_waiting_pipeline(timeout_s=60))
        await storage.put("runs", damaged.run_id, b"{not json")
        time.now += 61
        handles = await engine.resolve_timeouts()
        assert [h.run_id for h in handles] == [late.run_id]
        with pytest.raises(StepFailed, match="timeout_s"):
            await handles[0].result()
    assert any(damaged.run_id in r.getMessage() for r in caplog.records)


async def test_two_values_at_once_record_one() -> None:
    """Two provides racing for one step: exactly one is recorded, the other is refused
    with a typed error (AlreadyProvided, or RunHeld while the first holds the run)."""
    import asyncio

    from taskloom.contracts import RunHeld

    engine, _ = make_engine(FakeExecutor(delay=0.01), storage=MemoryStorage())
    async with engine:
        waiting = await engine.run(_waiting_pipeline())
        outcomes = await asyncio.gather(
            engine.provide(waiting.run_id, "ask", {"topic": "one"}),
            engine.provide(waiting.run_id, "ask", {"topic": "two"}),
            return_exceptions=True,
        )
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(done) == 1 and len(refused) == 1
        assert isinstance(refused[0], AlreadyProvided | RunHeld), refused
        events = await _events(engine, waiting.run_id)
    assert len([e for e in events if isinstance(e, InputProvided)]) == 1


async def test_a_map_over_an_input_step_is_refused_with_a_clear_problem() -> None:
    """A map whose step is an input or approval step is PipelineInvalid saying why."""
    engine, _ = make_engine(storage=MemoryStorage())
    body = {"id": "x", "input": {"prompt": "p"}}
    async with engine:
        with pytest.raises(PipelineInvalid) as info:
            engine.validate(
                pipeline(
                    {"id": "m", "map": "{{inputs.xs}}", "step": body},
                    inputs={"xs": {"type": "array"}},
                )
            )
    assert any("map's step cannot be an input" in p.message for p in info.value.problems)


async def test_a_late_value_is_refused_and_the_default_used() -> None:
    """Past timeout_s with on_timeout default, provide refuses the late value with
    InputTimedOut, and the run has gone on with the default instead."""
    time = FakeTime()
    engine, _ = make_engine(storage=MemoryStorage(), clock=time.clock)
    async with engine:
        waiting = await engine.run(
            _waiting_pipeline(timeout_s=10, on_timeout="default", default={"topic": "dflt"})
        )
        time.now += 11
        with pytest.raises(InputTimedOut, match="succeeded"):
            await engine.provide(waiting.run_id, "ask", {"topic": "late"})
        steps = await engine.runstore.finished_steps(waiting.run_id)
        record = await engine.runstore.load_run(waiting.run_id)
    assert steps[("ask", None)].output == {"topic": "dflt"}
    assert record.status == "succeeded"


async def test_an_approval_timing_out_to_reject_fails_the_run() -> None:
    """An approval whose default on timeout is a rejection fails the run when resolved."""
    time = FakeTime()
    engine, _ = make_engine(storage=MemoryStorage(), clock=time.clock)
    p = pipeline(
        {
            "id": "ok",
            "approval": {"prompt": "ship?"},
            "timeout_s": 5,
            "on_timeout": "default",
            "default": {"decision": "reject", "comment": "nobody answered"},
        },
        {"id": "ship", "prompt": "s"},
    )
    async with engine:
        waiting = await engine.run(p)
        time.now += 6
        with pytest.raises(StepFailed, match="nobody answered"):
            await engine.resume(waiting.run_id)


async def test_a_known_secret_in_a_provided_value_is_masked() -> None:
    """A secret value the engine knows is masked in the provided value's checkpoint."""
    engine, _ = make_engine(storage=MemoryStorage())
    async with engine:
        engine.remember_secret("sk-live-123456789")
        waiting = await engine.run(_waiting_pipeline())
        result = await engine.provide(waiting.run_id, "ask", {"topic": "key sk-live-123456789"})
        steps = await engine.runstore.finished_steps(waiting.run_id)
    assert "sk-live-123456789" not in json.dumps(steps[("ask", None)].output)
    assert "sk-live-123456789" not in json.dumps(result.steps["ask"])
