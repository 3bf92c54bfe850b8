"""A bug inside the engine fails the run; only the step's own code fails a step."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import InternalError, MalformedResponse, RunNotFound, StepFailed
from taskloom.sdk._engine import calls, leaf
from taskloom.sdk._engine.blame import is_step_failure, mark_step_code

CONTINUE = {"on_error": "continue", "retry": {"max_attempts": 1}}


def _broken_parse(node: Any, result: Any) -> Any:
    raise AttributeError("'NodePlan' object has no attribute 'wants_jsn'")


async def test_an_engine_bug_fails_the_run_even_with_on_error_continue(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An AttributeError raised by the engine's own code (not the executor) is not a
    step failure: with ``on_error: continue`` the run still fails, as InternalError
    naming the step, and the record says failed, not succeeded with output None."""
    monkeypatch.setattr(leaf, "parse_reply", _broken_parse)
    storage = MemoryStorage()
    engine, fake = make_engine(storage=storage)
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "x", **CONTINUE}))
        with pytest.raises(InternalError, match=r"step 'a'.*AttributeError.*taskloom resume"):
            await handle.result()
        record = await engine.runstore.load_run(handle.run_id)
    assert record.status == "failed"
    assert fake.total_calls == 1
    logged = [r for r in caplog.records if r.name == "taskloom.engine"]
    assert logged and logged[0].exc_info is not None  # the traceback is logged


async def test_a_run_failed_by_an_engine_bug_resumes_once_fixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run an engine bug stopped keeps its finished steps and resumes to success."""
    storage = MemoryStorage()
    engine, fake = make_engine(storage=storage)
    steps = (
        {"id": "a", "prompt": "one"},
        {"id": "b", "prompt": "two", "response_format": {"type": "text"}},
    )
    real = leaf.parse_reply

    def broken_on_b(node: Any, result: Any) -> Any:
        if node.id == "b":
            raise KeyError("internal")
        return real(node, result)

    async with engine:
        monkeypatch.setattr(leaf, "parse_reply", broken_on_b)
        handle = engine.start(pipeline(*steps))
        with pytest.raises(InternalError):
            await handle.result()
        monkeypatch.setattr(leaf, "parse_reply", real)
        result = await engine.resume(handle.run_id)
    assert result.status == "succeeded"
    assert fake.calls["one"] == 1  # the finished step was not run again


async def test_executor_and_plugin_errors_still_fail_only_the_step() -> None:
    """Errors raised inside an executor or a plugin function are the step's failure:
    ``on_error: continue`` goes on, ``fail`` raises StepFailed."""

    async def plugin(args: Any) -> Any:
        raise AttributeError("the plugin's own bug")

    fake = FakeExecutor()
    fake.failures["boom"] = [AttributeError("the executor's own bug")]
    engine, _ = make_engine(fake, plugin_steps={"p": plugin})
    async with engine:
        result = await engine.run(
            pipeline(
                {"id": "a", "prompt": "boom", **CONTINUE},
                {"id": "b", "uses": "p", **CONTINUE},
                {"id": "c", "prompt": "fine"},
            )
        )
        assert result.status == "succeeded"
        with pytest.raises(StepFailed, match="AttributeError: the plugin's own bug"):
            await engine.run(pipeline({"id": "b", "uses": "p", "retry": {"max_attempts": 1}}))


async def test_executor_errors_through_the_limited_call_path_are_the_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a timeout (the call path through ``call_executor``) an executor's own
    exception is still the step's failure."""
    fake = FakeExecutor()
    fake.failures["boom"] = [LookupError("executor bug")]
    engine, _ = make_engine(fake)
    async with engine:
        result = await engine.run(
            pipeline({"id": "a", "prompt": "boom", "timeout_s": 5, **CONTINUE})
        )
    assert result.status == "succeeded"
    assert result.output is None


def test_blame_marks() -> None:
    """Typed executor errors are step failures; a plain exception only once marked."""
    assert is_step_failure(MalformedResponse("bad reply"))
    plain = ValueError("x")
    assert not is_step_failure(plain)
    mark_step_code(plain)
    assert is_step_failure(plain)
    assert not is_step_failure(RunNotFound("r"))
    assert calls.mark_step_code is mark_step_code  # the limited call path marks too
    logging.getLogger(__name__).debug("done")
