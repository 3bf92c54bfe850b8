"""What a reply really was: finish reasons, truncation, refusals, JSON extraction, waits."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from engine_support import FakeTime, pipeline

from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import (
    CompletionRequest,
    CompletionResult,
    ProviderUnavailable,
    RateLimited,
    Secret,
    StepFailed,
    StepRetrying,
    StepSucceeded,
    Usage,
)
from taskloom.sdk import Engine, ExecutorRegistry


def _engine(executor: Any, **kwargs: Any) -> Engine:
    registry = ExecutorRegistry()
    registry.register("x", executor)
    return Engine(registry=registry, **kwargs)


def _json_step(**extra: Any) -> dict[str, Any]:
    return {"id": "a", "prompt": "give json", "response_format": {"type": "json"}, **extra}


async def test_finish_reason_reaches_event_record_and_result() -> None:
    """A text reply cut off by max_tokens succeeds, and its 'length' is in the event and record."""
    async with _engine(ScriptedExecutor(["half a sent"], finish_reason="length")) as engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "p"}))
        result = await handle.result()
        events = [e async for e in handle.events()]
        steps = await engine.runstore.finished_steps(result.run_id)
    assert result.output == "half a sent"
    succeeded = [e for e in events if isinstance(e, StepSucceeded)]
    assert succeeded[0].finish_reason == "length" and succeeded[0].truncated
    record = steps[("a", None)]
    assert record.finish_reason == "length" and record.truncated


async def test_finish_reason_survives_a_reload_of_the_stored_record() -> None:
    """The stored step record and event keep the finish reason through their JSON."""
    async with _engine(ScriptedExecutor(["ok"], finish_reason="stop")) as engine:
        result = await engine.run(pipeline({"id": "a", "prompt": "p"}))
        steps = await engine.runstore.finished_steps(result.run_id)
        events = await engine.runstore.events(result.run_id)
    assert steps[("a", None)].finish_reason == "stop"
    stored = [e for _seq, e in events if isinstance(e, StepSucceeded)]
    assert stored and stored[0].finish_reason == "stop"


async def test_json_step_cut_off_fails_with_reply_truncated_without_retry() -> None:
    """A JSON step whose reply hit max_tokens fails at once with ReplyTruncated."""
    executor = ScriptedExecutor(['{"a": [1, 2'], finish_reason="length")
    async with _engine(executor) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(pipeline(_json_step()))
    assert caught.value.cause_type == "ReplyTruncated"
    assert executor.calls == 1
    assert "max_tokens" in str(caught.value)


async def test_json_step_that_is_valid_but_cut_off_still_fails() -> None:
    """Valid JSON with finish_reason 'length' is still a truncated reply, not a success."""
    executor = ScriptedExecutor(['{"a": 1}'], finish_reason="length")
    async with _engine(executor) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(pipeline(_json_step()))
    assert caught.value.cause_type == "ReplyTruncated"


async def test_text_step_with_on_truncated_fail_fails() -> None:
    """on_truncated: fail makes a cut-off text reply fail with ReplyTruncated."""
    executor = ScriptedExecutor(["half"], finish_reason="length")
    async with _engine(executor) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(pipeline({"id": "a", "prompt": "p", "on_truncated": "fail"}))
    assert caught.value.cause_type == "ReplyTruncated"
    assert executor.calls == 1


async def test_refusal_finish_reason_is_a_permanent_refused_error() -> None:
    """A reply whose finish reason is 'refusal' fails with Refused, not retried."""
    executor = ScriptedExecutor(["I can't help with that."], finish_reason="refusal")
    async with _engine(executor) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(pipeline({"id": "a", "prompt": "p"}))
    assert caught.value.cause_type == "Refused"
    assert "I can't help with that." in str(caught.value)
    assert executor.calls == 1


async def test_prose_around_json_is_refused_unless_extract_json() -> None:
    """Prose around one JSON value fails a JSON step, and passes with extract_json: true."""
    reply = 'Sure! Here it is: {"k": [1, 2]} Hope that helps.'
    async with _engine(ScriptedExecutor([reply])) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(pipeline(_json_step(retry={"max_attempts": 1})))
        assert "extract_json" in str(caught.value)
        result = await engine.run(pipeline(_json_step(extract_json=True)))
    assert result.output == {"k": [1, 2]}


async def test_extract_json_still_checks_the_schema() -> None:
    """With extract_json the value found must still satisfy the step's schema."""
    step = _json_step(
        extract_json=True,
        retry={"max_attempts": 1},
        response_format={"type": "json", "json_schema": {"type": "object", "required": ["x"]}},
    )
    async with _engine(ScriptedExecutor(['text {"y": 1} text'])) as engine:
        with pytest.raises(StepFailed, match="JSON Schema"):
            await engine.run(pipeline(step))


async def test_a_day_long_retry_after_fails_at_once_naming_the_wait() -> None:
    """A provider wait over max_retry_wait_s fails the step at once with RateLimited."""
    clock = FakeTime()
    executor = ScriptedExecutor(fail_first=5, error=RateLimited("slow down", retry_after=86400.0))
    async with _engine(executor, clock=clock.clock, sleep=clock.sleep) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(pipeline({"id": "a", "prompt": "p"}))
    assert clock.sleeps == []
    assert executor.calls == 1
    assert caught.value.cause_type == "RateLimited"
    assert "86400" in str(caught.value) and "max_retry_wait_s" in str(caught.value)


async def test_a_wait_within_max_retry_wait_s_is_slept() -> None:
    """A provider wait at or under max_retry_wait_s is waited out, then retried."""
    clock = FakeTime()
    executor = ScriptedExecutor(fail_first=1, error=RateLimited("slow down", retry_after=30.0))
    async with _engine(executor, clock=clock.clock, sleep=clock.sleep) as engine:
        result = await engine.run(
            pipeline({"id": "a", "prompt": "p", "retry": {"max_retry_wait_s": 30}})
        )
    assert result.output == "p"
    assert clock.sleeps == [30.0]


async def test_retry_after_of_an_outage_is_honoured() -> None:
    """A ProviderUnavailable carrying retry_after (a 503's Retry-After) waits that long."""
    clock = FakeTime()
    executor = ScriptedExecutor(fail_first=1, error=ProviderUnavailable("503", retry_after=7.0))
    async with _engine(executor, clock=clock.clock, sleep=clock.sleep) as engine:
        await engine.run(pipeline({"id": "a", "prompt": "p"}))
    assert clock.sleeps == [7.0]


_KEY = "sk-embedded-0123456789abcdef"  # not a local: a traceback's frames must not show it


class _Leaky:
    """An executor whose errors quote its key, as a careless third-party adapter might."""

    def __init__(self, key: Secret) -> None:
        self.key = key

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        inner = ValueError(f"header Bearer {self.key.reveal()} refused")
        try:
            raise inner
        except ValueError as exc:
            raise ProviderUnavailable(f"call failed for key {self.key.reveal()}") from exc

    def stream(self, request: CompletionRequest) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class _Store:
    """A one-secret SecretStore."""

    def __init__(self, value: str) -> None:
        self.value = value

    async def get(self, name: str) -> Secret:
        return Secret(self.value)

    async def names(self) -> list[str]:
        return ["k"]


async def test_engine_masks_every_secret_it_resolved_without_a_redactor() -> None:
    """An embedded engine (no CLI, no redactor given) masks resolved keys in errors and events."""
    registry = ExecutorRegistry()
    registry.register_type("leaky", lambda settings, secrets: _build(secrets))
    registry.register_config("x", {"type": "leaky"}, secrets=_Store(_KEY))  # type: ignore[arg-type]
    clock = FakeTime()
    async with Engine(registry=registry, clock=clock.clock, sleep=clock.sleep) as engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "p"}))
        with pytest.raises(StepFailed) as caught:
            await handle.result()
        events = [e async for e in handle.events()]
        stored = await engine.runstore.events(handle.run_id)
        record = await engine.runstore.load_run(handle.run_id)
    texts = [str(caught.value), repr(events), repr(stored), repr(record)]
    texts.append(
        "".join(
            traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
        )
    )
    for text in texts:
        assert _KEY not in text
    assert any(isinstance(e, StepRetrying) for e in events)


async def _build(secrets: Any) -> _Leaky:
    return _Leaky(await secrets.get("k"))


def test_usage_default_is_untouched_by_finish_reason() -> None:
    """A CompletionResult's default finish reason stays 'stop' and 'refusal' is a known one."""
    from taskloom.contracts import FINISH_REASONS

    assert CompletionResult(text="x", usage=Usage()).finish_reason == "stop"
    assert "refusal" in FINISH_REASONS
