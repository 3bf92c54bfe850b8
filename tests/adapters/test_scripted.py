"""ScriptedExecutor passes ExecutorConformance and does what its script says."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import (
    AuthenticationFailed,
    CompletionRequest,
    CompletionResult,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    LLMExecutor,
    Message,
    ProviderUnavailable,
    RateLimited,
    Usage,
    UsageError,
)
from taskloom.contracts.testing import ExecutorConformance

FAILURES: dict[str, ExecutorError] = {
    "rate_limited": RateLimited("slow down", retry_after=1.5),
    "timeout": ExecutorTimeout("took too long"),
    "unavailable": ProviderUnavailable("503 from upstream", status=503),
    "invalid_request": InvalidRequest("bad field", status=400),
    "authentication": AuthenticationFailed("bad key", status=401),
}


@asynccontextmanager
async def _opened(executor: ScriptedExecutor) -> AsyncIterator[LLMExecutor]:
    async with executor:
        yield executor


class TestScriptedExecutor(ExecutorConformance):
    """The default echo executor, and one that always fails with the asked-for error."""

    def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
        return _opened(ScriptedExecutor(chunk_size=5))

    def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
        return _opened(ScriptedExecutor(failures=itertools.repeat(FAILURES[failure])))


class TestScriptedTimeoutByLatency(ExecutorConformance):
    """Timeouts produced the real way: latency over the executor's timeout."""

    def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
        return _opened(ScriptedExecutor(latency_s=0.001, timeout_s=5.0, chunk_size=1))

    def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
        if failure == "timeout":
            return _opened(ScriptedExecutor(latency_s=10.0, timeout_s=0.01))
        return _opened(ScriptedExecutor(failures=itertools.repeat(FAILURES[failure])))


def _request(text: str, **fields: object) -> CompletionRequest:
    return CompletionRequest(messages=(Message(role="user", content=text),), **fields)  # type: ignore[arg-type]


async def test_echo_is_the_default() -> None:
    """With no script the reply is the last user message."""
    async with ScriptedExecutor() as executor:
        messages: Any = (
            Message(role="system", content="be brief"),
            Message(role="user", content="first"),
            Message(role="assistant", content="ok"),
            Message(role="user", content="hello there"),
        )
        request = CompletionRequest(messages=messages)
        result = await executor.complete(request)
        assert result.text == "hello there"
        assert result.finish_reason == "stop"
        assert result.usage == Usage(prompt_tokens=6, completion_tokens=2)
        assert result.model == "scripted"


async def test_list_replies_in_order_and_cycle() -> None:
    """A list is answered in order and starts over at its end."""
    async with ScriptedExecutor(["one", "two"]) as executor:
        texts = [(await executor.complete(_request("x"))).text for _ in range(5)]
    assert texts == ["one", "two", "one", "two", "one"]


async def test_used_up_list_raises_usage_error() -> None:
    """With cycle=False a used-up script raises UsageError saying so."""
    async with ScriptedExecutor(["only"], cycle=False) as executor:
        assert (await executor.complete(_request("x"))).text == "only"
        with pytest.raises(UsageError, match="used up"):
            await executor.complete(_request("x"))


async def test_mapping_answers_by_last_user_message() -> None:
    """A mapping picks the reply by the last user message; an unknown one is InvalidRequest."""
    async with ScriptedExecutor({"ping": "pong", "json": {"b": 1, "a": [True, None]}}) as ex:
        assert (await ex.complete(_request("ping"))).text == "pong"
        assert (await ex.complete(_request("json"))).text == '{"a": [true, null], "b": 1}'
        with pytest.raises(InvalidRequest, match="no reply"):
            await ex.complete(_request("other"))


async def test_function_scripts_sync_and_async() -> None:
    """A function of the request (plain or async) computes the reply."""

    def upper(request: CompletionRequest) -> str:
        return request.messages[-1].content.upper()

    async def counted(request: CompletionRequest) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"length": len(request.messages[-1].content)}

    async with ScriptedExecutor(upper) as executor:
        assert (await executor.complete(_request("abc"))).text == "ABC"
    async with ScriptedExecutor(counted) as executor:
        assert (await executor.complete(_request("abcd"))).text == '{"length": 4}'


async def test_whole_results_and_errors_as_replies() -> None:
    """A CompletionResult reply is returned as is; an ExecutorError reply is raised."""
    canned = CompletionResult(text="cut", finish_reason="length", usage=Usage(completion_tokens=9))
    async with ScriptedExecutor([canned, ProviderUnavailable("down")]) as executor:
        result = await executor.complete(_request("x"))
        assert (result.text, result.finish_reason, result.usage) == ("cut", "length", canned.usage)
        with pytest.raises(ProviderUnavailable):
            await executor.complete(_request("x"))


async def test_fail_first_then_succeed() -> None:
    """fail_first=n raises the given error n times, then the script answers."""
    error = RateLimited("slow down", retry_after=0.25)
    async with ScriptedExecutor(["ok"], fail_first=2, error=error) as executor:
        for _ in range(2):
            with pytest.raises(RateLimited) as caught:
                await executor.complete(_request("x"))
            assert caught.value.retry_after == 0.25
        assert (await executor.complete(_request("x"))).text == "ok"
        assert executor.calls == 3


async def test_failure_schedule_per_call() -> None:
    """``failures`` is consulted once per call: None answers, an error is raised."""
    schedule = [None, ExecutorTimeout("t"), None, AuthenticationFailed("no")]
    async with ScriptedExecutor(failures=schedule) as executor:
        outcomes: list[str] = []
        for _ in range(5):
            try:
                outcomes.append((await executor.complete(_request("hi"))).text)
            except ExecutorError as exc:
                outcomes.append(type(exc).__name__)
    assert outcomes == ["hi", "ExecutorTimeout", "hi", "AuthenticationFailed", "hi"]


async def test_stream_splits_into_chunks_with_usage_last() -> None:
    """Streaming splits the reply by chunk_size; the last chunk has finish reason and usage."""
    async with ScriptedExecutor(["abcdefg"], chunk_size=3) as executor:
        chunks = [c async for c in executor.stream(_request("one two"))]
    assert [c.delta for c in chunks] == ["abc", "def", "g"]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert [c.finish_reason for c in chunks] == [None, None, "stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=2, completion_tokens=1)
    assert chunks[0].usage is None


async def test_empty_reply_streams_one_empty_chunk() -> None:
    """An empty reply still streams one final chunk."""
    async with ScriptedExecutor([""]) as executor:
        chunks = [c async for c in executor.stream(_request("x"))]
    assert [(c.delta, c.index, c.finish_reason) for c in chunks] == [("", 0, "stop")]


async def test_stream_failure_raises_before_any_chunk() -> None:
    """A scheduled failure of a streamed call raises on the first iteration."""
    async with ScriptedExecutor(fail_first=1, error=InvalidRequest("no")) as executor:
        with pytest.raises(InvalidRequest):
            async for _ in executor.stream(_request("x")):
                pytest.fail("a chunk arrived before the failure")


async def test_records_requests_and_concurrency() -> None:
    """calls, requests and max_in_flight record what happened."""
    async with ScriptedExecutor(latency_s=0.02) as executor:
        requests = [_request(f"m{n}") for n in range(4)]
        results = await asyncio.gather(*(executor.complete(r) for r in requests))
        assert [r.text for r in results] == ["m0", "m1", "m2", "m3"]
        assert executor.calls == 4
        assert executor.requests == requests
        assert executor.max_in_flight == 4
        assert executor.in_flight == 0
        assert all(r.latency_s > 0 for r in results)


async def test_latency_over_timeout_raises_executor_timeout() -> None:
    """A latency over timeout_s raises ExecutorTimeout (after timeout_s, not the latency)."""
    async with ScriptedExecutor(latency_s=60.0, timeout_s=0.01) as executor:
        with pytest.raises(ExecutorTimeout):
            await executor.complete(_request("x"))


async def test_request_model_is_reported() -> None:
    """The result names the requested model, or the executor's own when none was asked."""
    async with ScriptedExecutor(model="fake-1") as executor:
        assert (await executor.complete(_request("x", model="gpt-x"))).model == "gpt-x"
        assert (await executor.complete(_request("x"))).model == "fake-1"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"latency_s": -1.0},
        {"timeout_s": 0.0},
        {"fail_first": 1},
        {"fail_first": -1, "error": RateLimited("x")},
        {"finish_reason": "because"},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense settings raise at construction instead of misbehaving later."""
    with pytest.raises(UsageError):
        ScriptedExecutor(**kwargs)  # type: ignore[arg-type]


def test_text_as_script_is_refused() -> None:
    """A bare string is refused: it would otherwise be replayed one character at a time."""
    with pytest.raises(UsageError):
        ScriptedExecutor("hello")


async def test_bad_reply_type_is_a_usage_error() -> None:
    """A script returning something that is not a reply raises UsageError."""
    async with ScriptedExecutor(lambda request: 42) as executor:  # type: ignore[arg-type,return-value]
        with pytest.raises(UsageError, match="int"):
            await executor.complete(_request("x"))


async def test_a_repeated_error_does_not_grow_its_traceback() -> None:
    """One error instance raised on every call keeps a traceback of one call only."""
    error = ProviderUnavailable("down")
    depths = []
    async with ScriptedExecutor(failures=itertools.repeat(error)) as executor:
        for _ in range(5):
            with pytest.raises(ProviderUnavailable):
                await executor.complete(_request("x"))
            depth, tb = 0, error.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    assert len(set(depths)) == 1


async def test_keeps_only_the_latest_requests() -> None:
    """By default only the latest 100 requests are kept: a long-lived process stays flat."""
    async with ScriptedExecutor() as executor:
        for n in range(250):
            await executor.complete(_request(f"m{n}"))
        assert executor.calls == 250
        assert len(executor.requests) == 100
        assert executor.requests[-1] == _request("m249")
        assert executor.requests[0] == _request("m150")
    async with ScriptedExecutor(keep_requests=None) as everything:
        for n in range(150):
            await everything.complete(_request(f"m{n}"))
        assert len(everything.requests) == 150
    async with ScriptedExecutor(keep_requests=0) as none_kept:
        await none_kept.complete(_request("x"))
        assert none_kept.requests == [] and none_kept.calls == 1
    with pytest.raises(UsageError):
        ScriptedExecutor(keep_requests=-1)
