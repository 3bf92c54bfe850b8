"""The HTTP executors tell the truth: refusals, request fields, waits, keys, caps."""

from __future__ import annotations

import base64
import gzip
import json
import traceback
import tracemalloc
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from test_http_unit import (
    ANTHROPIC_OK,
    ANTHROPIC_STREAM,
    KEY,
    OPENAI_OK,
    OPENAI_STREAM_KATAN,
    REQUEST,
    Body,
    ant_event,
    anthropic,
    collect,
    oai_chunk,
    openai,
    reply,
    sse,
    streaming,
)

from taskloom.adapters._http.errors import Redactor, error_from_status
from taskloom.adapters._http.sse import SSEDecoder
from taskloom.adapters.anthropic import AnthropicExecutor
from taskloom.adapters.anthropic import from_config as anthropic_from_config
from taskloom.adapters.openai import OpenAIExecutor
from taskloom.adapters.openai import from_config as openai_from_config
from taskloom.contracts import (
    MASK,
    CompletionRequest,
    MalformedResponse,
    Message,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    Refused,
    ResponseFormat,
    RetryForbidden,
    Secret,
    UsageError,
)

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def recording(data: Any) -> tuple[list[httpx.Request], Any]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=data)

    return seen, handler


# --- refusals -------------------------------------------------------------------------


async def test_openai_refusal_is_refused_with_its_text() -> None:
    """OpenAI's message.refusal is a Refused error carrying the refusal, not an empty success."""
    body = {
        **OPENAI_OK,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't do that."},
                "finish_reason": "stop",
            }
        ],
    }
    async with openai(reply(200, body)) as ex:
        with pytest.raises(Refused) as caught:
            await ex.complete(REQUEST)
    assert caught.value.refusal == "I can't do that."
    assert not caught.value.retryable
    assert "I can't do that." in str(caught.value)


async def test_openai_streamed_refusal_is_refused() -> None:
    """Refusal pieces in a stream's deltas end the stream with Refused carrying them joined."""
    body = sse(
        oai_chunk({"role": "assistant", "content": None, "refusal": ""}),
        oai_chunk({"refusal": "I can't "}),
        oai_chunk({"refusal": "help."}),
        oai_chunk({}, "stop"),
        "data: [DONE]\n\n",
    )
    async with openai(streaming(body)) as ex:
        with pytest.raises(Refused) as caught:
            await collect(ex)
    assert caught.value.refusal == "I can't help."


async def test_anthropic_refusal_stop_reason_is_refused() -> None:
    """Anthropic's stop_reason 'refusal' is Refused, with the text that came, whole or streamed."""
    body = {**ANTHROPIC_OK, "stop_reason": "refusal"}
    async with anthropic(reply(200, body)) as ex:
        with pytest.raises(Refused) as caught:
            await ex.complete(REQUEST)
        assert caught.value.refusal == "hello"
        stream = ANTHROPIC_STREAM.replace(b'"max_tokens"', b'"refusal"')
    async with anthropic(streaming(stream)) as ex:
        with pytest.raises(Refused) as streamed:
            await collect(ex)
    assert streamed.value.refusal == "hello"


# --- request fields ---------------------------------------------------------------------


async def test_openai_max_tokens_field_is_a_setting_with_a_modern_default() -> None:
    """max_tokens goes out as max_completion_tokens by default, as max_tokens when configured."""
    request = CompletionRequest(
        messages=[Message(role="user", content="q")], model="m", max_tokens=5
    )
    seen, handler = recording(OPENAI_OK)
    async with openai(handler) as ex:
        await ex.complete(request)
    async with openai(handler, max_tokens_field="max_tokens") as ex:
        await ex.complete(request)
    modern, legacy = (json.loads(r.content) for r in seen)
    assert modern["max_completion_tokens"] == 5 and "max_tokens" not in modern
    assert legacy["max_tokens"] == 5 and "max_completion_tokens" not in legacy
    with pytest.raises(UsageError, match="max_tokens_field"):
        OpenAIExecutor(base_url="http://x", max_tokens_field="tokens")  # type: ignore[arg-type]
    built = await openai_from_config(
        {"base_url": "http://x", "max_tokens_field": "max_tokens"}, None
    )
    assert built._max_tokens_field == "max_tokens"


async def test_openai_tool_messages_carry_tool_call_id() -> None:
    """A tool message is sent with its tool_call_id; one without an id is sent as it is."""
    seen, handler = recording(OPENAI_OK)
    messages = [
        Message(role="user", content="q"),
        Message(role="tool", content="42", tool_call_id="call_1"),
    ]
    async with openai(handler) as ex:
        await ex.complete(CompletionRequest(messages=messages, model="m"))
        await ex.complete(
            CompletionRequest(messages=[Message(role="tool", content="42")], model="m")
        )
    sent = json.loads(seen[0].content)["messages"]
    assert sent[1] == {"role": "tool", "content": "42", "tool_call_id": "call_1"}
    assert json.loads(seen[1].content)["messages"] == [{"role": "tool", "content": "42"}]


async def test_openai_json_schema_is_strict() -> None:
    """A JSON schema goes to OpenAI as json_schema with strict: true."""
    seen, handler = recording(OPENAI_OK)
    request = CompletionRequest(
        messages=[Message(role="user", content="q")],
        model="m",
        response_format=ResponseFormat(type="json", json_schema=SCHEMA),
    )
    async with openai(handler) as ex:
        await ex.complete(request)
    fmt = json.loads(seen[0].content)["response_format"]
    assert fmt["json_schema"]["strict"] is True and fmt["json_schema"]["schema"] == SCHEMA


async def test_openai_stream_without_done_is_accepted_once_finished() -> None:
    """A stream whose finish reason arrived but whose [DONE] did not is a complete reply."""
    body = OPENAI_STREAM_KATAN.replace(b"data: [DONE]\n\n", b"")
    async with openai(streaming(body)) as ex:
        chunks = await collect(ex)
    assert "".join(c.delta for c in chunks) == "hello"
    assert chunks[-1].finish_reason == "stop"
    unfinished = sse(oai_chunk({"role": "assistant"}), oai_chunk({"content": "hel"}))
    async with openai(streaming(unfinished)) as ex:
        with pytest.raises(MalformedResponse, match="cut off"):
            await collect(ex)


async def test_anthropic_never_sends_temperature_and_top_p_together() -> None:
    """With both set, temperature is sent alone; top_p alone is sent as it is."""
    seen, handler = recording(ANTHROPIC_OK)
    both = CompletionRequest(messages=[REQUEST.messages[1]], model="c", temperature=0.1, top_p=0.5)
    top_p = CompletionRequest(messages=[REQUEST.messages[1]], model="c", top_p=0.5)
    async with anthropic(handler) as ex:
        await ex.complete(both)
        await ex.complete(top_p)
    first, second = (json.loads(r.content) for r in seen)
    assert first["temperature"] == 0.1 and "top_p" not in first
    assert second["top_p"] == 0.5 and "temperature" not in second


async def test_anthropic_text_in_content_block_start_is_kept() -> None:
    """Text that arrives inside content_block_start is part of the reply."""
    body = ANTHROPIC_STREAM.replace(
        b'"content_block": {"type": "text", "text": ""}',
        b'"content_block": {"type": "text", "text": "Oh, "}',
    )
    async with anthropic(streaming(body)) as ex:
        chunks = await collect(ex)
    assert "".join(c.delta for c in chunks) == "Oh, hello"


@pytest.mark.parametrize("mode", ["prompt", "native", "beta"])
async def test_anthropic_structured_output_modes(mode: str) -> None:
    """'native': output_config.format; 'beta': output_format and its header; 'prompt': a line."""
    seen, handler = recording(ANTHROPIC_OK)
    request = CompletionRequest(
        messages=[Message(role="user", content="q")],
        model="c",
        response_format=ResponseFormat(type="json", json_schema=SCHEMA),
    )
    schemaless = CompletionRequest(
        messages=[Message(role="user", content="q")],
        model="c",
        response_format=ResponseFormat(type="json"),
    )
    async with anthropic(handler, structured_output=mode) as ex:
        await ex.complete(request)
        await ex.complete(schemaless)
    body, plain = (json.loads(r.content) for r in seen)
    native = {"type": "json_schema", "schema": SCHEMA}
    if mode == "native":
        assert body["output_config"] == {"format": native} and "system" not in body
        assert "anthropic-beta" not in seen[0].headers
    elif mode == "beta":
        assert body["output_format"] == native and "system" not in body
        assert seen[0].headers["anthropic-beta"] == "structured-outputs-2025-11-13"
    else:
        assert "output_config" not in body and "output_format" not in body
        assert "JSON" in body["system"]
    assert "JSON" in plain["system"]  # no schema: the prompt line is the only way


async def test_anthropic_structured_output_setting_is_checked() -> None:
    """An unknown structured_output is a UsageError; from_config accepts the setting."""
    with pytest.raises(UsageError, match="structured_output"):
        AnthropicExecutor(structured_output="yes")  # type: ignore[arg-type]
    built = await anthropic_from_config({"structured_output": "native"}, None)
    assert built._structured == "native"


# --- statuses and waits -------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 529])
async def test_retry_after_on_an_outage_is_honoured(status: int) -> None:
    """Retry-After on 503 and 529 rides on the ProviderUnavailable as retry_after."""
    async with anthropic(reply(status, {}, headers={"retry-after": "17"})) as ex:
        with pytest.raises(ProviderUnavailable) as caught:
            await ex.complete(REQUEST)
    assert caught.value.retry_after == 17.0


async def test_insufficient_quota_is_permanent() -> None:
    """429 insufficient_quota is QuotaExceeded (permanent); a plain 429 stays RateLimited."""
    body = {"error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": "no"}}
    async with openai(reply(429, body)) as ex:
        with pytest.raises(QuotaExceeded) as caught:
            await ex.complete(REQUEST)
    assert not caught.value.retryable
    async with openai(reply(429, {"error": {"type": "requests", "message": "slow"}})) as ex:
        with pytest.raises(RateLimited):
            await ex.complete(REQUEST)


@pytest.mark.parametrize("status", [429, 500, 503, 529, 408])
async def test_x_should_retry_false_is_honoured(status: int) -> None:
    """x-should-retry: false makes an otherwise retryable status RetryForbidden."""
    async with openai(reply(status, {}, headers={"x-should-retry": "false"})) as ex:
        with pytest.raises(RetryForbidden) as caught:
            await ex.complete(REQUEST)
    assert not caught.value.retryable and caught.value.status == status


# --- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [KEY + "\n", KEY + " ", "sk-ключ-0123456789", "sk-a\tb-123456"])
async def test_unusable_keys_are_refused_at_configuration(bad: str) -> None:
    """A key a header cannot carry is refused when configured, naming the secret, not the value."""
    for build in (openai, anthropic):
        with pytest.raises(UsageError) as caught:
            build(reply(200, OPENAI_OK), api_key=Secret(bad))
        assert bad.strip() not in str(caught.value) and "api_key" in str(caught.value)

    class Store:
        async def get(self, name: str) -> Secret:
            return Secret(bad)

    with pytest.raises(UsageError) as named:
        await openai_from_config(
            {"base_url": "http://x", "api_key": {"secret": "openai_key"}},
            Store(),  # type: ignore[arg-type]
        )
    assert "openai_key" in str(named.value) and bad.strip() not in str(named.value)


def test_non_ascii_header_values_are_refused_at_configuration() -> None:
    """A configured header that httpx could not encode is a UsageError, not a UnicodeEncodeError."""
    with pytest.raises(UsageError, match="header"):
        openai(reply(200, OPENAI_OK), headers={"x-org": "café"})


# --- leak-proof errors --------------------------------------------------------------------


async def test_error_body_is_masked_before_it_is_cut() -> None:
    """A key straddling the quoting limit leaks none of its characters."""
    for offset in (380, 390, 395, 399):
        text = "x" * offset + KEY + " tail"
        for body in (text.encode(), json.dumps({"error": {"message": text}}).encode()):
            error = error_from_status(400, body, {}, provider="p", redactor=Redactor(Secret(KEY)))
            assert KEY[:4] not in str(error), (offset, str(error))


def test_encoded_keys_are_masked() -> None:
    """Base64 (both alphabets, padded or not) and percent-encoded forms of a key are masked."""
    key = "sk-live/0123+abc=def?x"
    redactor = Redactor(Secret(key))
    raw = key.encode()
    forms = [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        quote(key, safe=""),
        quote(key, safe="").lower(),
    ]
    for form in forms:
        assert form not in redactor.scrub(f"echo: {form} end"), form
        assert MASK in redactor.scrub(f"echo: {form} end")


async def test_translated_errors_hold_no_key_even_with_locals() -> None:
    """A transport error quoting the key leaves no key in the message, chain or frame locals."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused header 'Bearer {KEY}'", request=request)

    async with openai(handler) as ex:
        with pytest.raises(ProviderUnavailable) as caught:
            await ex.complete(REQUEST)
    text = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )
    assert KEY not in text


# --- bounded work -------------------------------------------------------------------------


def test_sse_decoder_refuses_a_huge_event_fed_in_small_pieces() -> None:
    """An event over the cap is refused while it arrives; pieces without line ends are kept."""
    decoder = SSEDecoder(max_bytes=1 << 20)
    with pytest.raises(MalformedResponse, match="larger than"):
        decoder.feed(b"data: ")
        for _ in range(1 << 9):
            decoder.feed(b"x" * 4096)


def test_sse_decoder_gives_the_same_events_for_any_split() -> None:
    """Events split at every byte, or in one piece, decode the same (CR LF across splits too)."""
    body = b'event: a\r\ndata: {"x": 1}\r\n\r\ndata: line1\ndata: line2\n\n: c\rdata: z\r\r'
    whole = SSEDecoder()
    expected = [(e.event, e.data) for e in [*whole.feed(body), *whole.finish()]]
    split = SSEDecoder()
    got = [(e.event, e.data) for i in range(len(body)) for e in split.feed(body[i : i + 1])]
    got += [(e.event, e.data) for e in split.finish()]
    assert got == expected
    assert expected == [("a", '{"x": 1}'), ("message", "line1\nline2"), ("message", "z")]


async def test_gzip_bomb_stops_decompressing_at_the_cap() -> None:
    """A 64 MiB gzip bomb against a 1 MiB cap is refused holding a few MiB, not the bomb."""
    bomb = gzip.compress(b"\0" * (64 << 20))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=Body([bomb]), headers={"content-encoding": "gzip", "content-type": "x"}
        )

    async with openai(handler, max_response_bytes=1 << 20) as ex:
        tracemalloc.start()
        try:
            with pytest.raises(MalformedResponse, match="limit"):
                await ex.complete(REQUEST)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while refusing a gzip bomb"


async def test_gzip_replies_still_decode() -> None:
    """A gzip-encoded reply (and a deflate one) decodes as before."""
    for encode, name in ((gzip.compress, "gzip"), (_deflate, "deflate")):

        def handler(request: httpx.Request, encode: Any = encode, name: str = name) -> Any:
            return httpx.Response(
                200,
                stream=Body([encode(json.dumps(OPENAI_OK).encode())]),
                headers={"content-encoding": name, "content-type": "application/json"},
            )

        async with openai(handler) as ex:
            assert (await ex.complete(REQUEST)).text == "hello"


def _deflate(data: bytes) -> bytes:
    import zlib

    return zlib.compress(data)


async def test_executors_ask_only_for_encodings_they_can_cap() -> None:
    """Requests say accept-encoding: gzip, deflate (br and zstd cannot be decompressed in steps)."""
    seen, handler = recording(OPENAI_OK)
    async with openai(handler) as ex:
        await ex.complete(REQUEST)
    assert seen[0].headers["accept-encoding"] == "gzip, deflate"


def test_stream_events_helper_is_used() -> None:
    """The Anthropic stream fixture still carries a content_block_start (guards the test above)."""
    assert b"content_block_start" in ANTHROPIC_STREAM
    assert ant_event("ping").startswith("event: ping")


def _formatted(exc: BaseException) -> str:
    return "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())


async def test_status_and_reply_errors_hold_no_key_even_with_locals() -> None:
    """A 401 echoing the key, a non-JSON reply quoting it and a stream error event naming it
    leave the key nowhere in a traceback printed with every frame's locals."""
    for handler, stream in _leaky_servers():
        async with openai(handler) as ex:
            with pytest.raises(Exception) as caught:
                if stream:
                    await collect(ex)
                else:
                    await ex.complete(REQUEST)
        assert KEY not in _formatted(caught.value), handler


def _leaky_servers() -> list[Any]:
    """Handlers quoting the key (built here: a test's own locals would show it)."""
    echoed = json.dumps({"error": {"message": f"bad key {KEY}", "type": "auth"}}).encode()
    return [
        (lambda r: httpx.Response(401, content=echoed), False),
        (lambda r: httpx.Response(200, content=f"<html>{KEY}".encode()), False),
        (
            streaming(
                sse(
                    oai_chunk({"content": "x"}),
                    "data: " + json.dumps({"error": {"message": KEY, "type": "server"}}) + "\n\n",
                )
            ),
            True,
        ),
    ]


async def test_x_should_retry_true_makes_a_refused_request_retryable() -> None:
    """x-should-retry: true on a 400 is retryable; on a 401 the credentials stay refused."""
    async with openai(reply(400, {}, headers={"x-should-retry": "true"})) as ex:
        with pytest.raises(ProviderUnavailable) as caught:
            await ex.complete(REQUEST)
    assert caught.value.retryable and caught.value.status == 400
    async with openai(reply(401, {}, headers={"x-should-retry": "true"})) as ex:
        with pytest.raises(Exception) as refused:
            await ex.complete(REQUEST)
    assert type(refused.value).__name__ == "AuthenticationFailed"
