"""Broken executors, each a ScriptedExecutor with one realistic bug."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import attrs

from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import (
    AuthenticationFailed,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    ProviderUnavailable,
    RateLimited,
    Usage,
    UsageError,
)


class ReturnsText(ScriptedExecutor):
    """EX1: ``complete`` returns the bare text instead of a CompletionResult."""

    async def complete(self, request: CompletionRequest, /) -> Any:
        return (await super().complete(request)).text


class IndexFromOne(ScriptedExecutor):
    """EX2: chunk indexes start at 1."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        async for chunk in super().stream(request):
            yield attrs.evolve(chunk, index=chunk.index + 1)


class UntypedRateLimit(ScriptedExecutor):
    """EX3: a rate limit escapes as a bare RuntimeError (an untranslated backend error)."""

    def _start(self, request: CompletionRequest) -> ExecutorError | None:
        failure = super()._start(request)
        if isinstance(failure, RateLimited):
            raise RuntimeError("HTTP 429")
        return failure


class SharedReplyBuffer(ScriptedExecutor):
    """EX4: the reply is kept on the executor across an await, so concurrent calls mix."""

    buffer = ""

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        result = await super().complete(request)
        self.buffer = result.text
        await asyncio.sleep(0.001)
        return attrs.evolve(result, text=self.buffer)


class StreamHoldsLock(ScriptedExecutor):
    """EX5: a stream takes a lock it releases only when it runs to the end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock = asyncio.Lock()

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        async with self.lock:
            return await super().complete(request)

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        await self.lock.acquire()
        async for chunk in super().stream(request):
            yield chunk
        self.lock.release()


class WorksAfterCloseExecutor(ScriptedExecutor):
    """EX6: ``aclose`` does nothing."""

    async def aclose(self) -> None:
        return None


BROKEN_EXECUTORS: dict[str, tuple[type[ScriptedExecutor], str]] = {
    "returns bare text": (ReturnsText, "ex1"),
    "indexes from one": (IndexFromOne, "ex2"),
    "untyped rate limit": (UntypedRateLimit, "ex3"),
    "replies mixed under concurrency": (SharedReplyBuffer, "ex4"),
    "stream holds a lock after close": (StreamHoldsLock, "ex5"),
    "works after close": (WorksAfterCloseExecutor, "ex6"),
}
"""Each broken executor and the invariant whose tests must catch it."""


# --- more: results, chunks, non-ASCII text, errors, concurrency, lifetime ---------------


class NegativeLatency(ScriptedExecutor):
    """EX1: latency is computed as start minus end."""

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        result = await super().complete(request)
        return attrs.evolve(result, latency_s=-result.latency_s - 0.001)


class UsageOnEveryChunk(ScriptedExecutor):
    """EX2: every chunk carries the usage, not only the last."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        chunks = [chunk async for chunk in super().stream(request)]
        usage = chunks[-1].usage or Usage(prompt_tokens=1, completion_tokens=1)
        for chunk in chunks:
            yield attrs.evolve(chunk, usage=usage)


class LastDeltaDropped(ScriptedExecutor):
    """EX2: the final chunk carries the finish reason but loses its text."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        chunks = [chunk async for chunk in super().stream(request)]
        for chunk in chunks[:-1]:
            yield chunk
        yield attrs.evolve(chunks[-1], delta="")


class BytesSplitMidCharacter(ScriptedExecutor):
    """EX2 (non-ASCII): the reply is streamed as 4-byte pieces each decoded on its own,
    so a character split between two pieces becomes U+FFFD."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        result = await super().complete(request)
        raw = result.text.encode()
        pieces = [raw[i : i + 4].decode("utf-8", "replace") for i in range(0, len(raw), 4)]
        pieces = pieces or [""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            yield CompletionChunk(
                delta=piece,
                index=index,
                finish_reason=result.finish_reason if last else None,
                usage=result.usage if last else None,
            )


class EndlessStream(ScriptedExecutor):
    """EX2 (never hang): after the reply the stream keeps yielding empty chunks."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        last = 0
        async for chunk in super().stream(request):
            last = chunk.index
            yield attrs.evolve(chunk, finish_reason=None, usage=None)
        for index in itertools.count(last + 1):
            yield CompletionChunk(delta="", index=index)


class TimeoutAsUnavailable(ScriptedExecutor):
    """EX3: a timeout is reported as ProviderUnavailable."""

    def _start(self, request: CompletionRequest) -> ExecutorError | None:
        failure = super()._start(request)
        if isinstance(failure, ExecutorTimeout):
            return ProviderUnavailable(str(failure))
        return failure


class NegativeRetryAfter(ScriptedExecutor):
    """EX3: ``retry_after`` is the reset time minus now, computed the wrong way round."""

    def _start(self, request: CompletionRequest) -> ExecutorError | None:
        failure = super()._start(request)
        if isinstance(failure, RateLimited):
            return RateLimited(str(failure), retry_after=-5.0)
        return failure


class AuthAsInvalidRequest(ScriptedExecutor):
    """EX3: a 401 is mapped like any other 4xx, to InvalidRequest."""

    def _start(self, request: CompletionRequest) -> ExecutorError | None:
        failure = super()._start(request)
        if isinstance(failure, AuthenticationFailed):
            return InvalidRequest(str(failure))
        return failure


class BusyWhileInFlight(ScriptedExecutor):
    """EX4: a second call while one is in flight fails as unavailable (one connection)."""

    busy = False

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        if self.busy:
            raise ProviderUnavailable("connection busy")
        self.busy = True
        try:
            await asyncio.sleep(0.001)  # the request on the wire
            return await super().complete(request)
        finally:
            self.busy = False


class EarlyCloseBreaksExecutor(ScriptedExecutor):
    """EX5: closing a stream early marks the executor closed (a shared connection)."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        finished = False
        try:
            async for chunk in super().stream(request):
                yield chunk
            finished = True
        finally:
            if not finished:
                await self.aclose()


class StreamWorksAfterClose(ScriptedExecutor):
    """EX6: only ``complete`` checks for a closed executor; ``stream`` still answers."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        twin = ScriptedExecutor(chunk_size=4)
        async for chunk in twin.stream(request):
            yield chunk


class SecondAcloseRaisesExecutor(ScriptedExecutor):
    """EX6: closing twice raises."""

    closed_once = False

    async def aclose(self) -> None:
        if self.closed_once:
            raise UsageError("already closed")
        self.closed_once = True
        await super().aclose()


BROKEN_EXECUTORS_MORE: dict[str, tuple[type[ScriptedExecutor], str]] = {
    "negative latency": (NegativeLatency, "ex1"),
    "usage on every chunk": (UsageOnEveryChunk, "ex2"),
    "last delta dropped": (LastDeltaDropped, "ex2"),
    "non-ASCII split mid-character": (BytesSplitMidCharacter, "ex2"),
    "endless stream": (EndlessStream, "ex2"),
    "timeout reported as unavailable": (TimeoutAsUnavailable, "ex3"),
    "negative retry_after": (NegativeRetryAfter, "ex3"),
    "401 reported as invalid request": (AuthAsInvalidRequest, "ex3"),
    "busy while a call is in flight": (BusyWhileInFlight, "ex4"),
    "early stream close breaks the executor": (EarlyCloseBreaksExecutor, "ex5"),
    "stream works after close": (StreamWorksAfterClose, "ex6"),
    "second aclose raises": (SecondAcloseRaisesExecutor, "ex6"),
}
"""Each broken executor here and the invariant whose tests must catch it."""
