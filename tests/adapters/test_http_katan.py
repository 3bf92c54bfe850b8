"""Integration tests of the HTTP executors against llm-katan, a real server.

One llm-katan process per failure scenario (its counters never reset), all
started together for this module and killed after it. The echo backend
answers ``[echo] model=... messages=N max_tokens=M temperature=T\\nUser: <last
user message>``, with ``prompt_tokens`` the word count of all messages and
``completion_tokens`` the word count of that reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from katan_server import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    KatanServer,
    katan_executable,
    start_servers,
    stop_servers,
)

from taskloom.adapters._http.pool import ConnectionPool
from taskloom.adapters.anthropic import AnthropicExecutor
from taskloom.adapters.openai import OpenAIExecutor
from taskloom.contracts import (
    MASK,
    AuthenticationFailed,
    CompletionChunk,
    CompletionRequest,
    ExecutorError,
    ExecutorTimeout,
    LLMExecutor,
    Message,
    ProviderUnavailable,
    RateLimited,
    ResponseFormat,
    Secret,
    Usage,
)
from taskloom.contracts.testing import ExecutorConformance

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(katan_executable() is None, reason="llm-katan is not installed"),
]

SCENARIOS: dict[str, list[str]] = {
    "plain": [],
    "errors": ["--error-rate", "1.0"],
    "rate_limit": ["--rate-limit-after", "2"],
    "gateway_timeout": ["--timeout-after", "1"],
    "slow": ["--latency-ms", "20000"],
    "inflight": ["--max-inflight", "1", "--latency-ms", "1500"],
    "auth": ["--validate-keys", "--api-keys", f"openai={OPENAI_KEY},anthropic={ANTHROPIC_KEY}"],
    "doomed": ["--latency-ms", "20000"],
    "conf_rate_limit": ["--rate-limit-after", "1"],
}
PROTOCOLS = ["openai", "anthropic"]
ECHO = re.compile(
    r"\[echo\] model=test-model host=\S+ time=\S+ "
    r"messages=(\d+) max_tokens=(\d+) temperature=(\S+)\nUser: (.*)",
    re.S,
)


@pytest.fixture(scope="module")
def katan() -> Iterator[dict[str, KatanServer]]:
    servers = start_servers(SCENARIOS)
    try:
        yield servers
    finally:
        stop_servers(servers)


def make(protocol: str, server: KatanServer, **kwargs: Any) -> OpenAIExecutor | AnthropicExecutor:
    """An executor for ``server`` speaking ``protocol``, with a key katan accepts."""
    if protocol == "openai":
        kwargs.setdefault("api_key", Secret(OPENAI_KEY))
        # llm-katan reads only max_tokens, as older compatible servers do
        kwargs.setdefault("max_tokens_field", "max_tokens")
        return OpenAIExecutor(base_url=server.openai_url, model="katan-model", **kwargs)
    kwargs.setdefault("api_key", Secret(ANTHROPIC_KEY))
    return AnthropicExecutor(base_url=server.anthropic_url, model="katan-model", **kwargs)


def ask(text: str, *, system: str | None = None, **fields: Any) -> CompletionRequest:
    messages = [Message(role="system", content=system)] if system else []
    return CompletionRequest(messages=[*messages, Message(role="user", content=text)], **fields)


def words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


async def collect(stream: AsyncIterator[CompletionChunk]) -> list[CompletionChunk]:
    return [chunk async for chunk in stream]


# --- completions -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_plain_completion(katan: dict[str, KatanServer], protocol: str) -> None:
    """A completion returns the echo text, finish 'stop', the request's model and exact usage."""
    async with make(protocol, katan["plain"]) as ex:
        result = await ex.complete(
            ask("say hello world", system="be brief", max_tokens=50, temperature=0.0)
        )
    match = ECHO.fullmatch(result.text)
    assert match, result.text
    assert match.groups()[0] == "2" and match.group(2) == "50" and match.group(3) == "0.0"
    assert match.group(4) == "say hello world"
    assert result.finish_reason == "stop"
    assert result.model == "katan-model"
    assert result.usage == Usage(
        prompt_tokens=words("be brief", "say hello world"), completion_tokens=words(result.text)
    )
    assert result.latency_s > 0.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streamed_completion(katan: dict[str, KatanServer], protocol: str) -> None:
    """A stream yields indexed deltas that join to the echo text; usage and finish come last."""
    async with make(protocol, katan["plain"]) as ex:
        chunks = await collect(ex.stream(ask("stream me please", system="sys")))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len(chunks) > 10
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    text = "".join(c.delta for c in chunks)
    assert ECHO.fullmatch(text) and text.endswith("\nUser: stream me please")
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(
        prompt_tokens=words("sys", "stream me please"), completion_tokens=words(text)
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_json_mode(katan: dict[str, KatanServer], protocol: str) -> None:
    """JSON mode: OpenAI sends json_object (katan wraps the reply); Anthropic adds a system rule."""
    request = ask("give json", response_format=ResponseFormat(type="json"))
    async with make(protocol, katan["plain"]) as ex:
        result = await ex.complete(request)
    if protocol == "openai":
        inner = json.loads(result.text)["response"]
        assert ECHO.fullmatch(inner) and inner.endswith("User: give json")
    else:
        match = ECHO.fullmatch(result.text)
        assert match and match.group(1) == "2"  # the JSON instruction arrived as a system message
        assert result.usage.prompt_tokens > words("give json") + 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_concurrent_calls_do_not_mix(katan: dict[str, KatanServer], protocol: str) -> None:
    """Forty concurrent calls (half streamed) on one executor each get their own reply (EX4)."""

    async def one(ex: OpenAIExecutor | AnthropicExecutor, i: int) -> str:
        if i % 2:
            return "".join(c.delta for c in await collect(ex.stream(ask(f"question {i}"))))
        return (await ex.complete(ask(f"question {i}"))).text

    async with make(protocol, katan["plain"]) as ex:
        texts = await asyncio.gather(*(one(ex, i) for i in range(40)))
    assert [t.rsplit("User: ", 1)[1] for t in texts] == [f"question {i}" for i in range(40)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_closing_a_stream_early(katan: dict[str, KatanServer], protocol: str) -> None:
    """Closing a stream after its first chunk releases it and the executor keeps working (EX5)."""
    async with make(protocol, katan["plain"], max_connections=1) as ex:
        for _ in range(3):
            stream = ex.stream(ask("long enough to stream in many pieces"))
            first = await anext(stream)
            assert first.index == 0 and first.delta
            await stream.aclose()
        assert (await ex.complete(ask("after"))).text.endswith("User: after")


async def test_key_never_logged_on_the_wire(
    katan: dict[str, KatanServer], caplog: pytest.LogCaptureFixture
) -> None:
    """With httpx and httpcore logging at DEBUG, no log line holds either key."""
    caplog.set_level(logging.DEBUG)
    for protocol in PROTOCOLS:
        async with make(protocol, katan["plain"]) as ex:
            await ex.complete(ask("hi"))
            await collect(ex.stream(ask("hi")))
    assert "HTTP Request: POST" in caplog.text
    assert OPENAI_KEY not in caplog.text and ANTHROPIC_KEY not in caplog.text


# --- failure simulation -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_error_rate_is_provider_unavailable(
    katan: dict[str, KatanServer], protocol: str
) -> None:
    """--error-rate 1.0 (HTTP 500) is a retryable ProviderUnavailable, streamed or not."""
    async with make(protocol, katan["errors"]) as ex:
        with pytest.raises(ProviderUnavailable, match="internal server error") as caught:
            await ex.complete(ask("hi"))
        assert caught.value.status == 500 and caught.value.retryable
        with pytest.raises(ProviderUnavailable):
            await collect(ex.stream(ask("hi")))


async def test_rate_limit_after(katan: dict[str, KatanServer]) -> None:
    """--rate-limit-after 2: two calls pass, then both protocols get RateLimited, no wait given."""
    server = katan["rate_limit"]
    async with make("openai", server) as oa, make("anthropic", server) as an:
        await oa.complete(ask("one"))
        await an.complete(ask("two"))
        for call in (oa.complete(ask("3")), an.complete(ask("4")), collect(oa.stream(ask("5")))):
            with pytest.raises(RateLimited, match="rate limit") as caught:
                await call
            assert caught.value.status == 429 and caught.value.retry_after is None
    assert server.stats_total() == 5


async def test_timeout_after_is_executor_timeout(katan: dict[str, KatanServer]) -> None:
    """--timeout-after 1: the first call succeeds, later ones get 504, an ExecutorTimeout."""
    async with (
        make("anthropic", katan["gateway_timeout"]) as an,
        make("openai", katan["gateway_timeout"]) as oa,
    ):
        await an.complete(ask("first"))
        for call in (an.complete(ask("x")), oa.complete(ask("y")), collect(an.stream(ask("z")))):
            with pytest.raises(ExecutorTimeout, match="timed out") as caught:
                await call
            assert caught.value.status == 504


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_latency_beyond_the_read_timeout(
    katan: dict[str, KatanServer], protocol: str
) -> None:
    """Latency far above read_timeout_s, or total_timeout_s, gives ExecutorTimeout."""
    async with make(protocol, katan["slow"], read_timeout_s=0.3) as ex:
        with pytest.raises(ExecutorTimeout, match="read timeout"):
            await ex.complete(ask("hi"))
        with pytest.raises(ExecutorTimeout, match="read timeout"):
            await collect(ex.stream(ask("hi")))
    async with make(protocol, katan["slow"], total_timeout_s=0.3) as ex:
        with pytest.raises(ExecutorTimeout, match="total_timeout_s"):
            await ex.complete(ask("hi"))


async def test_max_inflight_is_provider_unavailable(katan: dict[str, KatanServer]) -> None:
    """--max-inflight 1: of three concurrent calls, two get 503, a ProviderUnavailable."""
    async with make("openai", katan["inflight"]) as ex:
        outcomes = await asyncio.gather(
            *(ex.complete(ask(f"q{i}")) for i in range(3)), return_exceptions=True
        )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 2, outcomes
    assert all(isinstance(e, ProviderUnavailable) and e.status == 503 for e in errors)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_key_is_authentication_failed(
    katan: dict[str, KatanServer], protocol: str
) -> None:
    """--validate-keys: a wrong key is AuthenticationFailed, key masked; the right one works."""
    wrong = "sk-wrong-key-that-must-not-leak"
    async with make(protocol, katan["auth"], api_key=Secret(wrong)) as ex:
        with pytest.raises(AuthenticationFailed) as caught:
            await ex.complete(ask("hi"))
    message = str(caught.value)
    assert caught.value.status == 401 and not caught.value.retryable
    assert wrong not in message and MASK in message and "secret" in message
    async with make(protocol, katan["auth"]) as ex:
        assert (await ex.complete(ask("hi"))).text.endswith("User: hi")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_nothing_listening_is_provider_unavailable(protocol: str) -> None:
    """A port with no server gives ProviderUnavailable (connection refused), not an httpx error."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = KatanServer("dead", [])
    dead.port = port
    async with make(protocol, dead) as ex:
        with pytest.raises(ProviderUnavailable, match="could not connect"):
            await ex.complete(ask("hi"))


async def test_server_killed_mid_request(katan: dict[str, KatanServer]) -> None:
    """A server that dies while answering gives a retryable typed error (the connection broke)."""
    server = katan["doomed"]
    async with make("openai", server) as ex:
        call = asyncio.create_task(ex.complete(ask("hi")))
        await asyncio.sleep(0.3)  # usually mid-request by now; refused-connection is typed too
        server.kill()
        with pytest.raises(ExecutorError) as caught:
            await call
    assert isinstance(caught.value, ProviderUnavailable), repr(caught.value)


# --- the conformance suite, against llm-katan -----------------------------------------------------


class _KatanConformance(ExecutorConformance):
    """ExecutorConformance with each failure kind produced by a katan server configured for it.

    The echo text holds the time to the second, so replies are not deterministic.
    """

    deterministic = False
    protocol = "openai"
    servers: dict[str, KatanServer]

    @pytest.fixture(autouse=True)
    def _katan(self, katan: dict[str, KatanServer]) -> None:
        self.servers = katan

    def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
        return make(self.protocol, self.servers["plain"])

    @asynccontextmanager
    async def _burnt(
        self, executor: OpenAIExecutor | AnthropicExecutor
    ) -> AsyncIterator[LLMExecutor]:
        """The executor after one call, which uses up --rate-limit-after 1."""
        async with executor:
            with contextlib.suppress(RateLimited):
                await executor.complete(ask("burn"))
            yield executor

    def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
        servers = self.servers
        if failure == "rate_limited":
            return self._burnt(make(self.protocol, servers["conf_rate_limit"]))
        if failure == "timeout":
            return make(self.protocol, servers["slow"], read_timeout_s=0.2)
        if failure == "unavailable":
            return make(self.protocol, servers["errors"])
        if failure == "authentication":
            return make(self.protocol, servers["auth"], api_key=Secret("sk-not-the-key"))
        # a path the server does not serve: its 404 is a refused request
        if self.protocol == "openai":
            return OpenAIExecutor(
                base_url=servers["plain"].url + "/no-such-api", model="m", api_key=Secret("k")
            )
        return AnthropicExecutor(
            base_url=servers["plain"].url + "/no-such-api", model="m", api_key=Secret("k")
        )


class TestOpenAIConformanceAgainstKatan(_KatanConformance):
    """OpenAIExecutor passes ExecutorConformance against llm-katan."""

    protocol = "openai"


class TestAnthropicConformanceAgainstKatan(_KatanConformance):
    """AnthropicExecutor passes ExecutorConformance against llm-katan."""

    protocol = "anthropic"


async def test_cancelled_call_releases_its_connection(katan: dict[str, KatanServer]) -> None:
    """Cancelling a call in flight closes its response and its connection; none stays busy."""
    async with make("openai", katan["slow"], max_connections=17) as ex:
        pool = ex._get_pool()
        pool = getattr(pool, "_inner", pool)  # under the network-grant check
        assert isinstance(pool, ConnectionPool)
        for call in (ex.complete(ask("hi")), collect(ex.stream(ask("hi")))):
            task = asyncio.create_task(call)
            while pool.in_use == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.in_use == 0
            assert pool.connections == ()


def test_one_executor_across_event_loops(katan: dict[str, KatanServer]) -> None:
    """asyncio.run twice with one executor works: connections of a closed loop are dropped."""
    executor = make("openai", katan["plain"])
    with warnings.catch_warnings():
        # the first loop's sockets can no longer be closed: the collector reclaims them
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(2):
            assert asyncio.run(executor.complete(ask("again"))).text.endswith("User: again")
        gc.collect()
    asyncio.run(executor.aclose())
