"""The engine and the HTTP executors against an in-process HTTP server scripted per request.

The server (asyncio, 127.0.0.1, real sockets) answers each request with the next
scripted reply: a reply cut off by max_tokens, a refusal, a day-long Retry-After, a
401 that echoes the key. The engine runs without a redactor, as an application
embedding it would.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskloom.adapters.memory import MemorySecretStore
from taskloom.contracts import StepFailed, StepRetrying
from taskloom.sdk import Engine, ExecutorRegistry

KEY = "sk-inproc-5f3c9a0b7e21d4c8a6"


Reply = tuple[int, dict[str, str], bytes]


def _chat(content: str | None, finish: str, refusal: str | None = None) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    body = {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9},
    }
    return 200, {}, json.dumps(body).encode()


class Scripted:
    """An HTTP/1.1 server answering each request with the next scripted reply."""

    def __init__(self, *replies: tuple[int, dict[str, str], bytes]) -> None:
        self.replies = list(replies)
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                self.bodies.append(json.loads(await reader.readexactly(length)))
                status, headers, body = self.replies.pop(0)
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[asyncio.Server] = []

    async def start(*replies: tuple[int, dict[str, str], bytes]) -> Scripted:
        scripted = Scripted(*replies)
        server = await asyncio.start_server(scripted._handle, "127.0.0.1", 0)
        servers.append(server)
        scripted.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        return scripted

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _engine(url: str) -> Engine:
    secrets = MemorySecretStore()
    await secrets.set("llm_key", KEY)
    registry = ExecutorRegistry()
    registry.register_config(
        "llm",
        {"type": "openai", "base_url": url, "model": "m", "api_key": {"secret": "llm_key"}},
        secrets=secrets,
    )
    return Engine(registry=registry, sleep=_no_sleep)


async def _no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


def _pipeline(**step: Any) -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "t",
        "steps": [{"id": "a", "prompt": "p", **step}],
    }


async def test_length_and_refusal_over_real_sockets(serve: Any) -> None:
    """A cut-off JSON reply is ReplyTruncated, a cut-off text reply is marked, a refusal fails."""
    server = await serve(
        _chat('{"a": [1, 2', "length"),
        _chat("half a sent", "length"),
        _chat(None, "stop", refusal="I won't."),
    )
    async with await _engine(server.url) as engine:
        with pytest.raises(StepFailed) as truncated:
            await engine.run(_pipeline(response_format={"type": "json"}, max_tokens=8))
        text = await engine.run(_pipeline())
        steps = await engine.runstore.finished_steps(text.run_id)
        with pytest.raises(StepFailed) as refused:
            await engine.run(_pipeline())
    assert truncated.value.cause_type == "ReplyTruncated"
    assert text.output == "half a sent" and steps[("a", None)].truncated
    assert refused.value.cause_type == "Refused" and "I won't." in str(refused.value)
    assert len(server.bodies) == 3  # nothing was retried
    assert "max_completion_tokens" in server.bodies[0]  # the modern field by default


async def test_a_day_long_retry_after_fails_fast_over_real_sockets(serve: Any) -> None:
    """A 503 asking for a day fails the step at once, naming the wait, with no sleep."""
    server = await serve((503, {"retry-after": "86400"}, b'{"error": {"message": "busy"}}'))
    async with await _engine(server.url) as engine:
        with pytest.raises(StepFailed) as caught:
            await engine.run(_pipeline())
    assert "86400" in str(caught.value) and "max_retry_wait_s" in str(caught.value)
    assert len(server.bodies) == 1


async def test_an_echoed_key_is_masked_by_an_embedded_engine(serve: Any) -> None:
    """A server echoing the key, plain and base64 (a Basic header), in a 500 and a 401: the
    events, records and error of an engine given no redactor hold neither form."""
    encoded = base64.b64encode(KEY.encode()).decode()
    said = f"key {KEY} ({encoded}) is not valid"
    echo = json.dumps({"error": {"message": said, "type": "x"}}).encode()
    server = await serve((500, {}, echo), (401, {}, echo))
    async with await _engine(server.url) as engine:
        handle = engine.start(_pipeline(retry={"max_attempts": 3, "initial_delay_s": 0}))
        with pytest.raises(StepFailed) as caught:
            await handle.result()
        events = [e async for e in handle.events()]
        stored = await engine.runstore.events(handle.run_id)
        record = await engine.runstore.load_run(handle.run_id)
    assert any(isinstance(e, StepRetrying) for e in events)
    for text in (str(caught.value), repr(events), repr(stored), repr(record)):
        assert KEY not in text and encoded not in text
