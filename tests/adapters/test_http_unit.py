"""Unit tests of the HTTP executors with ``httpx.MockTransport``.

These cover what a real server cannot be made to do on demand: bodies that are
not the protocol's JSON, streams cut off mid-way, ``Retry-After`` in every
form, huge bodies, a slow trickle, every status code, cancellation, and the
API key never leaking. The same behaviours against a live server are in
``test_http_katan.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskloom.adapters._http import common
from taskloom.adapters._http.network import AsyncioBackend
from taskloom.adapters._http.pool import ConnectionPool
from taskloom.adapters.anthropic import AnthropicExecutor
from taskloom.adapters.anthropic import from_config as anthropic_from_config
from taskloom.adapters.memory import MemorySecretStore
from taskloom.adapters.openai import OpenAIExecutor
from taskloom.adapters.openai import from_config as openai_from_config
from taskloom.contracts import (
    MASK,
    AuthenticationFailed,
    CompletionChunk,
    CompletionRequest,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    LLMExecutor,
    MalformedResponse,
    Message,
    ProviderUnavailable,
    RateLimited,
    ResponseFormat,
    Secret,
    SecretNotFound,
    Usage,
    UsageError,
)
from taskloom.contracts.testing import ExecutorConformance

KEY = "sk-test-0123456789abcdef-SECRET"
Handler = Callable[[httpx.Request], Any]

REQUEST = CompletionRequest(
    messages=[Message(role="system", content="be brief"), Message(role="user", content="hi")],
    model="m",
)

OPENAI_OK = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m-2024",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
ANTHROPIC_OK = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


class Body(httpx.AsyncByteStream):
    """A response body given in parts, optionally slow, that records being closed."""

    def __init__(self, parts: Iterable[bytes], *, delay_s: float = 0.0, hang: bool = False):
        self.parts = list(parts)
        self.delay_s = delay_s
        self.hang = hang
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.sent += 1
            yield part
        if self.hang:
            await asyncio.sleep(3600)

    async def aclose(self) -> None:
        self.closed = True


def openai(handler: Handler, **kwargs: Any) -> OpenAIExecutor:
    kwargs.setdefault("api_key", Secret(KEY))
    return OpenAIExecutor(
        base_url="http://llm.test/v1", transport=httpx.MockTransport(handler), **kwargs
    )


def anthropic(handler: Handler, **kwargs: Any) -> AnthropicExecutor:
    kwargs.setdefault("api_key", Secret(KEY))
    return AnthropicExecutor(
        base_url="http://llm.test", transport=httpx.MockTransport(handler), **kwargs
    )


def reply(status: int = 200, data: Any = None, *, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=data, headers=headers)

    return handler


def sse(*events: str, content_type: str = "text/event-stream") -> bytes:
    return "".join(events).encode()


def oai_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return (
        "data: "
        + json.dumps({"object": "chat.completion.chunk", "choices": choices, **extra})
        + "\n\n"
    )


def ant_event(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields}) + "\n\n"


OPENAI_STREAM_KATAN = sse(
    oai_chunk({"role": "assistant"}),
    oai_chunk({"content": "hel"}),
    oai_chunk({"content": "lo"}),
    oai_chunk({}, "stop", usage={"prompt_tokens": 3, "completion_tokens": 2}),
    "data: [DONE]\n\n",
)
OPENAI_STREAM_OPENAI = sse(
    oai_chunk({"role": "assistant", "content": ""}),
    oai_chunk({"content": "hel"}),
    oai_chunk({"content": "lo"}),
    oai_chunk({}, "length"),
    oai_chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2}),
    "data: [DONE]\n\n",
)
ANTHROPIC_STREAM = sse(
    ant_event(
        "message_start",
        message={
            "id": "m",
            "model": "claude-x",
            "content": [],
            "usage": {"input_tokens": 3, "output_tokens": 1},
        },
    ),
    ant_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    ": a comment line\n\n",
    ant_event("ping"),
    ant_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hel"}),
    ant_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
    ant_event("content_block_stop", index=0),
    ant_event("message_delta", delta={"stop_reason": "max_tokens"}, usage={"output_tokens": 2}),
    ant_event("message_stop"),
)


def streaming(body: bytes | Body, content_type: str = "text/event-stream") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        stream = body if isinstance(body, Body) else Body([body])
        return httpx.Response(200, stream=stream, headers={"content-type": content_type})

    return handler


async def collect(executor: Any, request: CompletionRequest = REQUEST) -> list[CompletionChunk]:
    return [chunk async for chunk in executor.stream(request)]


# --- requests -------------------------------------------------------------------------


async def test_openai_request_carries_every_field() -> None:
    """The OpenAI body has messages, model, sampling, stop, seed, JSON mode and the bearer key."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OPENAI_OK)

    request = CompletionRequest(
        messages=[
            Message(role="system", content="s"),
            Message(role="user", content="u", name="ann"),
        ],
        model="gpt-x",
        temperature=0.0,
        top_p=0.5,
        max_tokens=7,
        stop=["END"],
        seed=42,
        response_format=ResponseFormat(type="json"),
    )
    async with openai(handler, model="default-model") as ex:
        await ex.complete(request)
    body = json.loads(seen[0].content)
    assert str(seen[0].url) == "http://llm.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u", "name": "ann"},
        ],
        "temperature": 0.0,
        "top_p": 0.5,
        "max_completion_tokens": 7,
        "stop": ["END"],
        "seed": 42,
        "response_format": {"type": "json_object"},
    }


async def test_openai_defaults_schema_and_stream_options() -> None:
    """The default model is used, a schema gives json_schema, streams ask for usage."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if seen[-1].get("stream"):
            return httpx.Response(
                200, content=OPENAI_STREAM_KATAN, headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json=OPENAI_OK)

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = CompletionRequest(
        messages=[Message(role="user", content="u")],
        response_format=ResponseFormat(type="json", json_schema=schema),
    )
    async with openai(handler, model="default-model", api_key=None) as ex:
        await ex.complete(request)
        await collect(ex, request)
    assert seen[0]["model"] == "default-model"
    assert seen[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "strict": True, "schema": schema},
    }
    assert "stream" not in seen[0]
    assert seen[1]["stream"] is True
    assert seen[1]["stream_options"] == {"include_usage": True}


async def test_no_api_key_sends_no_credentials() -> None:
    """Without a key neither Authorization nor x-api-key is sent (local servers need none)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OPENAI_OK if "chat" in request.url.path else ANTHROPIC_OK)

    async with openai(handler, api_key=None) as a, anthropic(handler, api_key=None) as b:
        await a.complete(REQUEST)
        await b.complete(REQUEST)
    assert "authorization" not in seen[0].headers
    assert "x-api-key" not in seen[1].headers


async def test_anthropic_request_maps_system_max_tokens_and_json() -> None:
    """System goes top-level, max_tokens defaults, stop → stop_sequences, JSON → instruction."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANTHROPIC_OK)

    schema = {"type": "object"}
    request = CompletionRequest(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="q"),
            Message(role="assistant", content="a"),
            Message(role="tool", content="t"),
        ],
        temperature=0.2,
        top_p=0.9,
        stop=["X"],
        seed=3,
        response_format=ResponseFormat(type="json", json_schema=schema),
    )
    async with anthropic(handler, model="claude-x") as ex:
        await ex.complete(request)
        await ex.complete(
            CompletionRequest(messages=[Message(role="user", content="q")], max_tokens=9)
        )
    first, second = (json.loads(r.content) for r in seen)
    assert str(seen[0].url) == "http://llm.test/v1/messages"
    assert seen[0].headers["x-api-key"] == KEY
    assert seen[0].headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen[0].headers
    assert first["model"] == "claude-x"
    assert first["max_tokens"] == 1024
    assert first["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "t"},
    ]
    assert first["system"].startswith("be brief\n\nReply with one JSON value only")
    assert json.dumps(schema, sort_keys=True) in first["system"]
    assert first["stop_sequences"] == ["X"]
    assert first["temperature"] == 0.2 and "top_p" not in first  # never both
    assert "seed" not in first and "response_format" not in first
    assert second["max_tokens"] == 9 and "system" not in second


async def test_missing_model_is_invalid_request() -> None:
    """Neither the request nor the executor names a model: InvalidRequest saying where to set it."""
    calls: list[httpx.Request] = []
    async with openai(lambda r: calls.append(r), model=None) as ex:
        with pytest.raises(InvalidRequest, match="no model"):
            await ex.complete(CompletionRequest(messages=[Message(role="user", content="x")]))
    assert calls == []


async def test_anthropic_needs_a_turn() -> None:
    """Only system messages: InvalidRequest before anything is sent."""
    async with anthropic(reply(200, ANTHROPIC_OK), model="c") as ex:
        with pytest.raises(InvalidRequest, match="at least one user"):
            await ex.complete(CompletionRequest(messages=[Message(role="system", content="s")]))


# --- results ----------------------------------------------------------------------------


async def test_openai_result() -> None:
    """Text, finish reason, usage, model and a non-negative latency come back."""
    async with openai(reply(200, OPENAI_OK)) as ex:
        result = await ex.complete(REQUEST)
    assert (result.text, result.finish_reason, result.model) == ("hello", "stop", "m-2024")
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=1)
    assert result.latency_s >= 0.0


async def test_anthropic_result_joins_text_blocks_and_counts_cache_tokens() -> None:
    """Text blocks are joined; cache tokens count as prompt tokens; tool_use blocks add no text."""
    data = dict(ANTHROPIC_OK)
    data["content"] = [
        *ANTHROPIC_OK["content"],
        {"type": "tool_use", "id": "t", "name": "f", "input": {}},
    ]
    data["usage"] = {
        "input_tokens": 3,
        "output_tokens": 1,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 2,
    }
    async with anthropic(reply(200, data)) as ex:
        result = await ex.complete(REQUEST)
    assert (result.text, result.finish_reason, result.model) == ("hello", "stop", "claude-x")
    assert result.usage == Usage(prompt_tokens=15, completion_tokens=1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        (None, "other"),
        ("something_new", "other"),
    ],
)
async def test_openai_finish_reasons(raw: str | None, expected: str) -> None:
    """OpenAI finish reasons map onto FINISH_REASONS; unknown or missing ones are 'other'."""
    data = json.loads(json.dumps(OPENAI_OK))
    data["choices"][0]["finish_reason"] = raw
    async with openai(reply(200, data)) as ex:
        assert (await ex.complete(REQUEST)).finish_reason == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "other"),
    ],
)
async def test_anthropic_stop_reasons(raw: str, expected: str) -> None:
    """Anthropic stop reasons map onto FINISH_REASONS."""
    async with anthropic(reply(200, {**ANTHROPIC_OK, "stop_reason": raw})) as ex:
        assert (await ex.complete(REQUEST)).finish_reason == expected


async def test_openai_null_content_with_tool_calls_is_empty_text() -> None:
    """A tool-call reply (content null) gives empty text and finish reason tool_calls."""
    data = json.loads(json.dumps(OPENAI_OK))
    data["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": []}
    data["choices"][0]["finish_reason"] = "tool_calls"
    async with openai(reply(200, data)) as ex:
        result = await ex.complete(REQUEST)
    assert (result.text, result.finish_reason) == ("", "tool_calls")


# --- streaming ------------------------------------------------------------------------------


def check_ex2(chunks: list[CompletionChunk]) -> str:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is not None
    return "".join(c.delta for c in chunks)


@pytest.mark.parametrize(
    ("body", "finish"), [(OPENAI_STREAM_KATAN, "stop"), (OPENAI_STREAM_OPENAI, "length")]
)
async def test_openai_stream_usage_on_finish_chunk_or_separate_chunk(
    body: bytes, finish: str
) -> None:
    """Usage on the finish chunk (llm-katan) or a choices-less chunk (OpenAI) ends up last."""
    async with openai(streaming(body)) as ex:
        chunks = await collect(ex)
    assert check_ex2(chunks) == "hello"
    assert chunks[-1].finish_reason == finish
    assert chunks[-1].usage == Usage(prompt_tokens=3, completion_tokens=2)


async def test_anthropic_stream() -> None:
    """message_start/content_block_delta/message_delta/message_stop give text, finish and usage."""
    async with anthropic(streaming(ANTHROPIC_STREAM)) as ex:
        chunks = await collect(ex)
    assert check_ex2(chunks) == "hello"
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage == Usage(prompt_tokens=3, completion_tokens=2)


@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_STREAM)), max_size=12),
    crlf=st.booleans(),
)
def test_sse_split_anywhere_gives_the_same_events(cuts: list[int], crlf: bool) -> None:
    """However the bytes are split (inside CR LF, inside a UTF-8 character) the events are equal."""
    raw = ANTHROPIC_STREAM.replace(b"hel", "h\u00e9l".encode())
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    whole = common.SSEDecoder()
    expected = [(e.event, e.data) for e in whole.feed(raw) + whole.finish()]
    decoder = common.SSEDecoder()
    got: list[tuple[str, str]] = []
    bounds = [0, *sorted(cuts), len(raw)]
    for start, end in itertools.pairwise(bounds):
        got += [(e.event, e.data) for e in decoder.feed(raw[start:end])]
    got += [(e.event, e.data) for e in decoder.finish()]
    assert got == expected
    assert len(expected) == 8


def test_sse_decoder_rules() -> None:
    """Multi-line data joins with LF, CR alone ends lines, comments and empty events are skipped."""
    decoder = common.SSEDecoder()
    events = decoder.feed(b": hi\r\n\r\nevent: x\rdata: a\rdata:b\r\rdata: tail\n")
    assert [(e.event, e.data) for e in events] == [("x", "a\nb")]
    with pytest.raises(MalformedResponse, match="cut off"):
        decoder.finish()
    ended_by_cr = common.SSEDecoder()
    assert ended_by_cr.feed(b"data: z\n\r") == []
    assert [e.data for e in ended_by_cr.finish()] == ["z"]


@pytest.mark.parametrize(
    "body",
    [
        OPENAI_STREAM_KATAN[: OPENAI_STREAM_KATAN.index(b"lo") + 1],
        OPENAI_STREAM_KATAN.replace(b"data: [DONE]\n\n", b"data: [DO"),
        b"",
    ],
    ids=["mid-json", "mid-done", "empty"],
)
async def test_openai_stream_cut_off(body: bytes) -> None:
    """A stream cut off before its finish reason raises MalformedResponse saying so."""
    async with openai(streaming(body)) as ex:
        with pytest.raises(MalformedResponse, match="cut off"):
            await collect(ex)


@pytest.mark.parametrize("cut", [b"event: message_stop", b"event: message_delta"])
async def test_anthropic_stream_cut_off(cut: bytes) -> None:
    """A stream that ends before message_stop raises MalformedResponse saying it was cut off."""
    body = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(cut)]
    async with anthropic(streaming(body)) as ex:
        with pytest.raises(MalformedResponse, match="cut off"):
            await collect(ex)


async def test_stream_events_that_are_not_json() -> None:
    """An event whose data is not JSON, or not an object, is MalformedResponse, not ValueError."""
    for body in (b"data: {nope\n\n", b"data: [1, 2]\n\n"):
        async with openai(streaming(body)) as ex:
            with pytest.raises(MalformedResponse):
                await collect(ex)
    async with anthropic(streaming(b"event: message_start\ndata: 12\n\n")) as ex:
        with pytest.raises(MalformedResponse):
            await collect(ex)


async def test_error_events_inside_streams_are_typed() -> None:
    """An error sent inside a 200 stream becomes the matching typed error."""
    overloaded = ant_event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    async with anthropic(
        streaming(ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: ping")] + overloaded.encode())
    ) as ex:
        with pytest.raises(ProviderUnavailable, match="Overloaded"):
            await collect(ex)
    limited = 'data: {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}\n\n'
    async with openai(streaming(sse(oai_chunk({"content": "a"}), limited))) as ex:
        with pytest.raises(RateLimited, match="slow down"):
            await collect(ex)


async def test_streamed_request_answered_with_plain_json() -> None:
    """A server that answers a stream request with one JSON reply still gives EX2 chunks."""
    async with openai(streaming(json.dumps(OPENAI_OK).encode(), "application/json")) as ex:
        chunks = await collect(ex)
    assert check_ex2(chunks) == "hello"
    assert chunks[-1].usage == Usage(prompt_tokens=3, completion_tokens=1)


# --- bodies that are not the protocol's JSON ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html>502 Bad Gateway</html>", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"[]", r"\$ should be an object"),
        (b"{}", r"\$\.choices is missing"),
        (b'{"choices": []}', r"\$\.choices is empty"),
        (b'{"choices": {}}', r"\$\.choices should be an array"),
        (b'{"choices": [{}]}', r"\$\.choices\[0\]\.message is missing"),
        (b'{"choices": [{"message": {"content": 5}}]}', r"content should be a string"),
        (
            b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": -1}}',
            "prompt_tokens",
        ),
        (
            b'{"choices": [{"message": {"content": "x"}}], "usage": []}',
            r"\$\.usage should be an object",
        ),
    ],
)
async def test_openai_malformed_bodies(body: bytes, match: str) -> None:
    """A 200 body that is not the expected JSON is MalformedResponse saying what is wrong."""
    async with openai(lambda r: httpx.Response(200, content=body)) as ex:
        with pytest.raises(MalformedResponse, match=match):
            await ex.complete(REQUEST)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"stop_reason": "end_turn"}, r"\$\.content is missing"),
        ({"content": [], "usage": {}}, r"\$\.stop_reason is missing"),
        (
            {"content": [{"type": "text", "text": 1}], "stop_reason": "end_turn"},
            r"content\[0\]\.text",
        ),
        ({"content": ["x"], "stop_reason": "end_turn"}, r"content\[0\] should be an object"),
    ],
)
async def test_anthropic_malformed_bodies(data: Any, match: str) -> None:
    """A 200 Messages body missing fields or with wrong types is MalformedResponse with a path."""
    async with anthropic(reply(200, data)) as ex:
        with pytest.raises(MalformedResponse, match=match):
            await ex.complete(REQUEST)


KEYS = [
    "choices",
    "message",
    "content",
    "usage",
    "prompt_tokens",
    "finish_reason",
    "model",
    "delta",
    "type",
    "text",
    "stop_reason",
    "error",
    "input_tokens",
    "output_tokens",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.sampled_from([*KEYS, "[DONE]", "text_delta", "message_stop", "message_start"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(data=JSON)
def test_parsers_raise_only_typed_errors(data: Any) -> None:
    """Any JSON a server sends parses to a result or an ExecutorError, never KeyError/TypeError."""
    events = [common.ServerSentEvent("message", json.dumps(data))]
    if isinstance(data, dict) and isinstance(data.get("type"), str):
        events.append(common.ServerSentEvent(data["type"], json.dumps(data)))
    for ex in (OpenAIExecutor(base_url="http://x"), AnthropicExecutor()):
        with contextlib.suppress(ExecutorError):
            ex._parse(data)
        state = common.StreamState()
        for event in events:
            with contextlib.suppress(ExecutorError):
                ex._on_event(event, state)


# --- size caps ------------------------------------------------------------------------------------


async def test_huge_body_with_content_length_is_refused_unread() -> None:
    """A body announced over the cap is refused before it is read."""
    body = Body([b"x" * 1000] * 100)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body, headers={"content-length": str(100_000)})

    async with openai(handler, max_response_bytes=10_000) as ex:
        with pytest.raises(MalformedResponse, match="over the 10000-byte limit"):
            await ex.complete(REQUEST)
    assert body.sent == 0 and body.closed


async def test_huge_chunked_body_is_cut_at_the_cap() -> None:
    """A chunked body that grows past the cap is refused as soon as it passes it."""
    bodies: list[Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Body([b"x" * 1000] * 100))
        return httpx.Response(200, stream=bodies[-1], headers={"content-type": "application/json"})

    async with openai(handler, max_response_bytes=10_000) as ex:
        with pytest.raises(MalformedResponse, match="limit"):
            await ex.complete(REQUEST)
        with pytest.raises(MalformedResponse, match="limit"):
            await collect(ex)
    assert [b.sent for b in bodies] == [11, 11] and all(b.closed for b in bodies)


async def test_compressed_body_is_capped_after_decoding() -> None:
    """A small gzip body that inflates past the cap is refused (no decompression bomb)."""
    import gzip

    packed = gzip.compress(b" " * 200_000)
    assert len(packed) < 10_000

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-encoding": "gzip", "content-length": str(len(packed))}
        return httpx.Response(200, stream=Body([packed]), headers=headers)

    async with openai(handler, max_response_bytes=10_000) as ex:
        with pytest.raises(MalformedResponse, match="limit"):
            await ex.complete(REQUEST)
    small = gzip.compress(json.dumps(OPENAI_OK).encode())

    def fine(request: httpx.Request) -> httpx.Response:
        headers = {"content-encoding": "gzip", "content-length": str(len(small))}
        return httpx.Response(200, stream=Body([small]), headers=headers)

    async with openai(fine, max_response_bytes=10_000) as ex:
        assert (await ex.complete(REQUEST)).text == "hello"


async def test_huge_event_is_refused() -> None:
    """A single server-sent event larger than the cap is refused while it grows."""
    body = Body([b"data: "] + [b"x" * 1000] * 100)
    async with openai(streaming(body), max_response_bytes=10_000) as ex:
        with pytest.raises(MalformedResponse, match="larger than 10000"):
            await collect(ex)
    assert body.sent <= 12 and body.closed


async def test_the_default_cap_is_16_mib() -> None:
    """Without a setting the cap is 16 MiB: a 17 MiB body announced by its length is refused."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Body([]), headers={"content-length": str(17 << 20)})

    async with openai(handler) as ex:
        with pytest.raises(MalformedResponse, match=str(16 << 20)):
            await ex.complete(REQUEST)


# --- status codes ---------------------------------------------------------------------------------

STATUSES: list[tuple[int, type[ExecutorError]]] = [
    (400, InvalidRequest),
    (401, AuthenticationFailed),
    (403, AuthenticationFailed),
    (404, InvalidRequest),
    (405, InvalidRequest),
    (408, ExecutorTimeout),
    (409, ProviderUnavailable),
    (413, InvalidRequest),
    (422, InvalidRequest),
    (429, RateLimited),
    (500, ProviderUnavailable),
    (502, ProviderUnavailable),
    (503, ProviderUnavailable),
    (504, ExecutorTimeout),
    (529, ProviderUnavailable),
    (301, InvalidRequest),
    (599, ProviderUnavailable),
]


@pytest.mark.parametrize(("status", "error"), STATUSES)
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_status_mapping(
    status: int, error: type[ExecutorError], protocol: str, streamed: bool
) -> None:
    """Every status maps to its typed error, with the status and the provider's message."""
    body = {"error": {"type": "x", "message": "the provider says no"}}
    make = openai if protocol == "openai" else anthropic
    async with make(reply(status, body)) as ex:
        with pytest.raises(error) as caught:
            if streamed:
                await collect(ex)
            else:
                await ex.complete(REQUEST)
    assert type(caught.value) is error
    assert caught.value.status == status
    if status != 301:
        assert "the provider says no" in str(caught.value)
    assert caught.value.retryable == (error not in (InvalidRequest, AuthenticationFailed))


@pytest.mark.parametrize(
    "message",
    [
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens",
                "code": "context_length_exceeded",
            }
        },
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 210000 tokens > 200000 maximum",
            },
        },
        {"error": {"message": "Context length exceeded for model"}},
    ],
)
async def test_context_length_exceeded_is_named(message: dict[str, Any]) -> None:
    """A refused over-long prompt sets context_length_exceeded and the message names it."""
    async with openai(reply(400, message)) as ex:
        with pytest.raises(InvalidRequest) as caught:
            await ex.complete(REQUEST)
    assert caught.value.context_length_exceeded
    assert "context length exceeded" in str(caught.value)


async def test_plain_invalid_request_is_not_context_length() -> None:
    """Other 400s leave context_length_exceeded False; 404 says to check base_url and model."""
    async with openai(reply(400, {"error": {"message": "bad temperature"}})) as ex:
        with pytest.raises(InvalidRequest) as caught:
            await ex.complete(REQUEST)
    assert not caught.value.context_length_exceeded
    async with openai(reply(404, {"detail": "Not Found"})) as ex:
        with pytest.raises(InvalidRequest, match="check base_url and the model name"):
            await ex.complete(REQUEST)


async def test_error_body_that_is_not_json_is_quoted_and_short() -> None:
    """A non-JSON error body (an HTML page) is quoted, shortened, and the status still decides."""
    page = b"<html>" + b"x" * 10_000 + b"</html>"
    async with openai(lambda r: httpx.Response(502, content=page)) as ex:
        with pytest.raises(ProviderUnavailable) as caught:
            await ex.complete(REQUEST)
    assert "<html>" in str(caught.value) and len(str(caught.value)) < 700


async def test_error_inside_a_200_body() -> None:
    """A gateway's 200 with an error object is typed by the error's kind."""
    async with openai(
        reply(200, {"error": {"type": "invalid_request_error", "message": "bad"}})
    ) as ex:
        with pytest.raises(InvalidRequest, match="bad"):
            await ex.complete(REQUEST)
    async with anthropic(
        reply(200, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    ) as ex:
        with pytest.raises(ProviderUnavailable, match="busy"):
            await ex.complete(REQUEST)


# --- Retry-After ----------------------------------------------------------------------------------

NOW = 1_800_000_000.0


def http_date(offset_s: float) -> str:
    return email.utils.formatdate(NOW + offset_s, usegmt=True)


def iso(offset_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(NOW + offset_s, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": http_date(30)}, 30.0),
        ({"retry-after": http_date(-30)}, 0.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "40s"}, 2.0),
        (
            {
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-requests": "5",
                "x-ratelimit-reset-tokens": "40s",
                "x-ratelimit-remaining-tokens": "0",
            },
            40.0,
        ),
        ({"x-ratelimit-reset-requests": "later"}, None),
        ({"anthropic-ratelimit-requests-reset": iso(12)}, 12.0),
        (
            {
                "anthropic-ratelimit-requests-reset": iso(5),
                "anthropic-ratelimit-tokens-reset": iso(50),
                "anthropic-ratelimit-tokens-remaining": "0",
            },
            50.0,
        ),
        ({"retry-after": "3", "anthropic-ratelimit-requests-reset": iso(50)}, 3.0),
        ({"retry-after": str(10**9)}, 86400.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Retry-After (seconds or a date), retry-after-ms and provider reset headers give the wait."""
    got = common.parse_retry_after(httpx.Headers(headers), now=NOW)
    assert got == pytest.approx(expected) if expected is not None else got is None


async def test_rate_limited_carries_retry_after_from_a_date() -> None:
    """A 429 whose Retry-After is an HTTP date two minutes ahead gives retry_after near 120 s."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    async with openai(
        reply(429, {"error": {"message": "slow"}}, headers={"retry-after": when})
    ) as ex:
        with pytest.raises(RateLimited) as caught:
            await ex.complete(REQUEST)
    assert caught.value.retry_after is not None and 60 < caught.value.retry_after <= 120
    assert caught.value.retryable


async def test_rate_limited_without_headers_has_no_retry_after() -> None:
    """A bare 429 (as llm-katan sends) gives RateLimited with retry_after None."""
    async with anthropic(
        reply(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "x"}})
    ) as ex:
        with pytest.raises(RateLimited) as caught:
            await ex.complete(REQUEST)
    assert caught.value.retry_after is None


# --- the httpx boundary ---------------------------------------------------------------------

EXPECTED_HTTPX: dict[str, type[ExecutorError]] = {
    "ConnectTimeout": ExecutorTimeout,
    "ReadTimeout": ExecutorTimeout,
    "WriteTimeout": ExecutorTimeout,
    "PoolTimeout": ExecutorTimeout,
    "TimeoutException": ExecutorTimeout,
    "ConnectError": ProviderUnavailable,
    "ReadError": ProviderUnavailable,
    "WriteError": ProviderUnavailable,
    "CloseError": ProviderUnavailable,
    "NetworkError": ProviderUnavailable,
    "RemoteProtocolError": ProviderUnavailable,
    "LocalProtocolError": InvalidRequest,
    "ProtocolError": ProviderUnavailable,
    "ProxyError": ProviderUnavailable,
    "UnsupportedProtocol": InvalidRequest,
    "TransportError": ProviderUnavailable,
    "DecodingError": MalformedResponse,
    "TooManyRedirects": InvalidRequest,
    "HTTPStatusError": ProviderUnavailable,
    "RequestError": ProviderUnavailable,
    "HTTPError": ProviderUnavailable,
    "InvalidURL": InvalidRequest,
    "CookieConflict": InvalidRequest,
    "StreamError": ProviderUnavailable,
    "StreamClosed": ProviderUnavailable,
    "StreamConsumed": ProviderUnavailable,
    "ResponseNotRead": ProviderUnavailable,
    "RequestNotRead": ProviderUnavailable,
}


def httpx_exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in httpx.__all__
        if inspect.isclass(obj := getattr(httpx, name)) and issubclass(obj, BaseException)
    ]


def instantiate(cls: type[BaseException]) -> BaseException:
    request = httpx.Request("GET", "http://x")
    if cls is httpx.HTTPStatusError:
        return cls(f"boom {KEY}", request=request, response=httpx.Response(502, request=request))
    if cls in (
        httpx.StreamClosed,
        httpx.StreamConsumed,
        httpx.ResponseNotRead,
        httpx.RequestNotRead,
    ):
        return cls()
    return cls(f"boom {KEY}")


@pytest.mark.parametrize("cls", httpx_exception_classes(), ids=lambda c: c.__name__)
def test_every_httpx_exception_is_translated(cls: type[BaseException]) -> None:
    """Each exception class httpx exports becomes its expected typed error, chained, scrubbed."""
    assert cls.__name__ in EXPECTED_HTTPX, f"new httpx exception {cls.__name__}: map it"
    exc = instantiate(cls)
    with (
        pytest.raises(ExecutorError) as caught,
        common.translate_httpx(
            provider="openai", redactor=common.Redactor(Secret(KEY)), timeout_s=1.0
        ),
    ):
        raise exc
    assert type(caught.value) is EXPECTED_HTTPX[cls.__name__]
    assert caught.value.__cause__ is exc
    assert KEY not in str(caught.value)


def test_expected_table_has_no_stale_entries() -> None:
    """The expected table names only classes httpx still exports (so it cannot pass vacuously)."""
    assert {c.__name__ for c in httpx_exception_classes()} == set(EXPECTED_HTTPX)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("connection refused"), ProviderUnavailable),
        (httpx.ReadError("connection reset by peer"), ProviderUnavailable),
        (
            httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ),
            ProviderUnavailable,
        ),
        (httpx.ReadTimeout("timed out"), ExecutorTimeout),
        (httpx.ConnectTimeout("timed out"), ExecutorTimeout),
    ],
)
async def test_transport_failures_are_typed(exc: Exception, error: type[ExecutorError]) -> None:
    """Connection resets, refused connections and read timeouts are retryable typed errors."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    for make in (openai, anthropic):
        async with make(handler) as ex:
            with pytest.raises(error) as caught:
                await ex.complete(REQUEST)
            assert caught.value.retryable
            with pytest.raises(error):
                await collect(ex)


async def test_reset_in_the_middle_of_a_stream() -> None:
    """A connection reset after some chunks surfaces as ProviderUnavailable from the iterator."""

    class Broken(Body):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield oai_chunk({"content": "a"}).encode()
            raise httpx.ReadError("connection reset by peer")

    async with openai(streaming(Broken([]))) as ex:
        got: list[str] = []
        with pytest.raises(ProviderUnavailable, match="broke while reading"):
            async for chunk in ex.stream(REQUEST):
                got.append(chunk.delta)
    assert got == ["a"]


async def test_slow_trickle_hits_the_total_timeout() -> None:
    """A server trickling bytes past total_timeout_s gives ExecutorTimeout and is closed."""
    parts = [bytes([b]) for b in json.dumps(OPENAI_OK).encode()]
    body = Body(parts, delay_s=0.05)
    async with openai(streaming(body, "application/json"), total_timeout_s=0.3) as ex:
        with pytest.raises(ExecutorTimeout, match=r"total_timeout_s=0\.3"):
            await ex.complete(REQUEST)
    assert body.closed and body.sent < len(parts)
    stream_body = Body([oai_chunk({"content": "x"}).encode()] * 1000, delay_s=0.05)
    async with openai(streaming(stream_body), total_timeout_s=0.3) as ex:
        with pytest.raises(ExecutorTimeout):
            await collect(ex)
    assert stream_body.closed and stream_body.sent < 1000


async def test_deadline_turns_only_its_own_cancellation_into_timeout() -> None:
    """Deadline raises TimeoutError when it fires; a cancel from elsewhere stays a cancel."""
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), common.Deadline(loop.time() + 0.05):
        await asyncio.sleep(10)
    with pytest.raises(TimeoutError), common.Deadline(loop.time() - 1):
        await asyncio.sleep(0)
    limit = common.Deadline(loop.time() + 10)
    for _ in range(3):  # re-entered, as for every chunk of a stream
        with limit:
            await asyncio.sleep(0)

    async def victim() -> None:
        with common.Deadline(loop.time() + 10):
            await asyncio.sleep(10)

    task = asyncio.create_task(victim())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


# --- cancellation and lifecycle ------------------------------------------------------------------


async def test_closing_the_stream_iterator_closes_the_response() -> None:
    """aclose() on a half-read stream closes its response, and the executor keeps working (EX5)."""
    bodies: list[Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Body([oai_chunk({"content": "a"}).encode()], hang=True))
        return httpx.Response(200, stream=bodies[-1], headers={"content-type": "text/event-stream"})

    async with openai(handler) as ex:
        stream = ex.stream(REQUEST)
        first = await anext(stream)
        assert first.delta == "a" and not bodies[0].closed
        await stream.aclose()
        assert bodies[0].closed
        assert ex._pool is not None
        await ex._pool.aclose()
        ex._transport = httpx.MockTransport(streaming(OPENAI_STREAM_KATAN))
        ex._pool = None
        assert check_ex2(await collect(ex)) == "hello"


async def test_cancelling_the_task_closes_the_response() -> None:
    """Cancelling the task that reads a stream, or awaits complete(), closes the response."""
    bodies: list[Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        part = (
            oai_chunk({"content": "a"}).encode()
            if json.loads(request.content).get("stream")
            else b"{"
        )
        bodies.append(Body([part], hang=True))
        return httpx.Response(200, stream=bodies[-1], headers={"content-type": "text/event-stream"})

    async with openai(handler) as ex:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in ex.stream(REQUEST):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bodies[0].closed
        call = asyncio.create_task(ex.complete(REQUEST))
        while len(bodies) < 2 or bodies[1].sent == 0:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert bodies[1].closed


async def test_lifecycle() -> None:
    """aclose is idempotent; calls after it raise UsageError; closing an unused one is fine."""
    ex = openai(reply(200, OPENAI_OK))
    await ex.aclose()
    ex = openai(reply(200, OPENAI_OK))
    assert (await ex.complete(REQUEST)).text == "hello"
    await ex.aclose()
    await ex.aclose()
    with pytest.raises(UsageError, match="closed"):
        await ex.complete(REQUEST)
    with pytest.raises(UsageError, match="closed"):
        ex.stream(REQUEST)


async def test_use_from_a_second_live_loop_is_refused() -> None:
    """While the loop it first ran on is alive, another loop's call raises UsageError."""
    import threading

    outcome: list[BaseException] = []
    async with openai(reply(200, OPENAI_OK)) as ex:
        await ex.complete(REQUEST)

        def elsewhere() -> None:
            try:
                asyncio.run(ex.complete(REQUEST))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert (await ex.complete(REQUEST)).text == "hello"
    assert len(outcome) == 1 and isinstance(outcome[0], UsageError)
    assert "another event loop" in str(outcome[0])


async def test_an_unclosed_executor_warns() -> None:
    """An executor that opened its pool and is dropped unclosed emits a ResourceWarning."""
    import gc

    ex = openai(reply(200, OPENAI_OK))
    await ex.complete(REQUEST)
    pool = ex._pool
    with pytest.warns(ResourceWarning, match="never closed"):
        del ex
        gc.collect()
    assert pool is not None
    await pool.aclose()


async def test_one_pool_for_all_calls() -> None:
    """All calls of one executor share one pool; concurrent calls keep their own replies."""

    def handler(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        data = json.loads(json.dumps(OPENAI_OK))
        data["choices"][0]["message"]["content"] = text
        return httpx.Response(200, json=data)

    async with openai(handler) as ex:
        first = await ex.complete(REQUEST)
        pool = ex._pool
        requests = [
            CompletionRequest(messages=[Message(role="user", content=f"q{i}")], model="m")
            for i in range(50)
        ]
        results = await asyncio.gather(*(ex.complete(r) for r in requests))
        assert ex._pool is pool and first.text == "hi"
    assert [r.text for r in results] == [f"q{i}" for i in range(50)]


def test_pool_shape() -> None:
    """An executor's own pool is one ConnectionPool of max_connections on the asyncio backend."""
    url = httpx.URL("http://x/")
    pool: Any = common.pooled_transport(100, url)
    assert isinstance(pool, ConnectionPool) and pool.max_connections == 100
    assert isinstance(pool._backend, AsyncioBackend)
    assert pool.connections == () and pool.in_use == 0
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UsageError, match="max_connections"):
            ConnectionPool(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": "http://x", "read_timeout_s": 0}, "read_timeout_s"),
        ({"base_url": "http://x", "max_connections": 0}, "max_connections"),
        ({"base_url": "http://x", "headers": {"a": 1}}, "headers"),
        ({"base_url": "http://x", "api_key": KEY}, "Secret"),
    ],
)
def test_constructor_checks(kwargs: dict[str, Any], match: str) -> None:
    """Bad constructor arguments raise UsageError naming the argument (and never echo a key)."""
    with pytest.raises(UsageError, match=match) as caught:
        OpenAIExecutor(**kwargs)
    assert KEY not in str(caught.value)


# --- secrets never leak ---------------------------------------------------------------------------


async def test_the_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    """The key is in no repr, no error text (even when the server quotes it) and no log line."""
    caplog.set_level(logging.DEBUG)
    echoing = {"error": {"message": f"invalid API key: got '{KEY}', expected 'other'"}}
    errors: list[BaseException] = []
    masked: list[BaseException] = []
    for make in (openai, anthropic):
        for handler, quotes_key in (
            (reply(401, echoing), True),
            (reply(500, echoing), True),
            (reply(200, {"error": echoing["error"]}), make is openai),
            (reply(200, {"type": "error", "error": echoing["error"]}), True),
            (lambda r: (_ for _ in ()).throw(httpx.ConnectError(f"refused {KEY}")), True),
            (lambda r: httpx.Response(200, content=f"not json {KEY}".encode()), False),
        ):
            ex = make(handler)
            assert KEY not in repr(ex) and KEY not in str(ex)
            for call in (ex.complete(REQUEST), collect(ex)):
                with pytest.raises(ExecutorError) as caught:
                    await call
                errors.append(caught.value)
                if quotes_key:
                    masked.append(caught.value)
            await ex.aclose()
    assert len(errors) == 24 and len(masked) == 18
    for exc in errors:
        assert KEY not in str(exc) and KEY not in repr(exc)
    for exc in masked:
        assert MASK in str(exc), str(exc)
    auth = [e for e in errors if isinstance(e, AuthenticationFailed)]
    assert auth and all("secret" in str(e) for e in auth)
    assert KEY not in caplog.text


# --- configuration ---------------------------------------------------------------------------


async def test_from_config_resolves_the_secret_reference() -> None:
    """api_key = {secret = NAME} is read from the SecretStore and sent; nothing else holds it."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OPENAI_OK if "chat" in request.url.path else ANTHROPIC_OK)

    store = MemorySecretStore({"openai_api_key": KEY, "anthropic_api_key": KEY + "-a"})
    settings = {
        "type": "openai",
        "base_url": "http://llm.test/v1",
        "model": "gpt-x",
        "api_key": {"secret": "openai_api_key"},
        "headers": {"x-team": "t"},
        "read_timeout_s": 5,
    }
    ex = await openai_from_config(settings, store)
    ex._transport = httpx.MockTransport(handler)
    assert (
        await ex.complete(CompletionRequest(messages=[Message(role="user", content="x")]))
    ).text == "hello"
    await ex.aclose()
    ant = await anthropic_from_config(
        {
            "type": "anthropic",
            "api_key": {"secret": "anthropic_api_key"},
            "model": "c",
            "default_max_tokens": 5,
        },
        store,
    )
    ant._transport = httpx.MockTransport(handler)
    await ant.complete(REQUEST)
    await ant.aclose()
    assert seen[0].headers["authorization"] == f"Bearer {KEY}" and seen[0].headers["x-team"] == "t"
    assert seen[1].headers["x-api-key"] == KEY + "-a"
    assert json.loads(seen[1].content)["max_tokens"] == 5
    assert str(ant).startswith("AnthropicExecutor(base_url='https://api.anthropic.com'")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"base_url": "http://x", "api_key": KEY}, "secret reference"),
        ({"base_url": "http://x", "api_key": {"value": KEY}}, "secret reference"),
        (
            {"base_url": "http://x", "headers": {"Authorization": f"Bearer {KEY}"}},
            "api_key = { secret",
        ),
        ({"base_url": "http://x", "colour": "red"}, "unknown setting"),
        ({"model": "m"}, "base_url is required"),
        ({"type": "anthropic", "base_url": "http://x"}, "type='anthropic'"),
        ({"base_url": "http://x", "api_key": {"secret": "k"}}, "no SecretStore"),
    ],
)
async def test_from_config_refuses_bad_settings(settings: dict[str, Any], match: str) -> None:
    """Literal keys, credential headers, unknown settings, no base_url: refused, key unseen."""
    with pytest.raises(UsageError, match=match) as caught:
        await openai_from_config(settings, None)
    assert KEY not in str(caught.value)


async def test_from_config_missing_secret() -> None:
    """A reference to a secret the store does not hold raises SecretNotFound naming it."""
    with pytest.raises(SecretNotFound, match="openai_api_key"):
        await openai_from_config(
            {"base_url": "http://x", "api_key": {"secret": "openai_api_key"}}, MemorySecretStore()
        )


# --- the conformance suite, against an in-process echo server ------------------------------------


def echo_server(protocol: str, failure: str | None = None) -> Handler:
    """A deterministic MockTransport server: replies 'echo: <last user text>', or fails."""
    statuses = {
        "rate_limited": 429,
        "unavailable": 503,
        "invalid_request": 400,
        "authentication": 401,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if failure is not None:
            return httpx.Response(
                statuses[failure],
                json={"error": {"message": failure}},
                headers={"retry-after": "1"},
            )
        body = json.loads(request.content)
        text = "echo: " + body["messages"][-1]["content"]
        usage = {"prompt_tokens": 3, "completion_tokens": len(text.split())}
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        if protocol == "openai" and not body.get("stream"):
            data = json.loads(json.dumps(OPENAI_OK))
            data["choices"][0]["message"]["content"] = text
            data["usage"] = usage
            return httpx.Response(200, json=data)
        if protocol == "openai":
            events = [oai_chunk({"content": p}) for p in pieces]
            events += [oai_chunk({}, "stop", usage=usage), "data: [DONE]\n\n"]
        elif not body.get("stream"):
            data = {**ANTHROPIC_OK, "content": [{"type": "text", "text": text}]}
            return httpx.Response(200, json=data)
        else:
            start = {"id": "m", "model": "c", "usage": {"input_tokens": 3, "output_tokens": 0}}
            events = [ant_event("message_start", message=start)]
            events += [
                ant_event("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
                for p in pieces
            ]
            events += [
                ant_event(
                    "message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 4}
                ),
                ant_event("message_stop"),
            ]
        return httpx.Response(
            200,
            stream=Body([e.encode() for e in events]),
            headers={"content-type": "text/event-stream"},
        )

    return handler


class _MockConformance(ExecutorConformance):
    protocol = "openai"

    def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
        make_executor = openai if self.protocol == "openai" else anthropic
        return make_executor(echo_server(self.protocol), model="m")

    def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
        make_executor = openai if self.protocol == "openai" else anthropic
        return make_executor(echo_server(self.protocol, failure), model="m")


class TestOpenAIConformanceInProcess(_MockConformance):
    """OpenAIExecutor passes ExecutorConformance against a deterministic in-process server."""

    protocol = "openai"


class TestAnthropicConformanceInProcess(_MockConformance):
    """AnthropicExecutor passes ExecutorConformance against a deterministic in-process server."""

    protocol = "anthropic"
