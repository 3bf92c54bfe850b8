"""``ScriptedExecutor``: an LLM executor that answers from a script, for tests and demos.

Deterministic by construction: replies come from a list, a mapping or a function,
usage is counted in whitespace-separated words, and failures are injected from a
schedule. It records the latest requests it was given (``keep_requests``, 100 by
default: a long-lived worker must not keep every request it ever served) and how
many were in flight at once, so tests of retries, caches and concurrency limits can
assert on it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeAlias

from taskloom.contracts import (
    FINISH_REASONS,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    Usage,
    UsageError,
)

__all__ = ["Reply", "ScriptedExecutor"]

Reply: TypeAlias = str | dict[str, Any] | list[Any] | CompletionResult | ExecutorError
"""One scripted answer: text; a dict or list (sent as JSON text); a whole
``CompletionResult``; or an ``ExecutorError`` instance, which the call raises."""

Script: TypeAlias = (
    Sequence[Reply]
    | Mapping[str, Reply]
    | Callable[[CompletionRequest], Reply | Awaitable[Reply]]
    | None
)


def _words(text: str) -> int:
    return len(text.split())


def _last_user_message(request: CompletionRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""


class ScriptedExecutor:
    """An ``LLMExecutor`` whose replies are scripted.

    ``script`` decides each reply:

    * ``None`` (the default): echo the last user message;
    * a sequence: the replies in order, starting over at the end when ``cycle``
      is true, else raising ``UsageError`` once they are used up;
    * a mapping: the reply for the last user message (a missing one raises
      ``InvalidRequest``, as a provider refuses what it cannot serve);
    * a function of the request, sync or async, returning a reply.

    A reply that is a dict or list is sent as JSON text; an ``ExecutorError``
    instance is raised instead of answering.

    Failures: ``failures`` is consumed one item per call, each either None
    (answer normally) or an ``ExecutorError`` to raise; ``fail_first=n`` raises
    ``error`` on the first ``n`` calls before the schedule is consulted.
    ``latency_s`` is slept before answering (or before the first chunk); when
    ``timeout_s`` is set and the latency exceeds it, the call sleeps ``timeout_s``
    and raises ``ExecutorTimeout``, as a client with a deadline would.
    Streams split the reply into pieces of ``chunk_size`` characters, sleeping
    ``chunk_delay_s`` between them; the last chunk carries finish reason and usage.

    ``requests`` holds the latest ``keep_requests`` requests (None: all of them,
    for a test that needs the whole log; memory then grows with every call).
    """

    def __init__(
        self,
        script: Script = None,
        *,
        cycle: bool = True,
        latency_s: float = 0.0,
        timeout_s: float | None = None,
        chunk_size: int = 8,
        chunk_delay_s: float = 0.0,
        failures: Iterable[ExecutorError | None] = (),
        fail_first: int = 0,
        error: ExecutorError | None = None,
        model: str = "scripted",
        finish_reason: str = "stop",
        keep_requests: int | None = 100,
    ) -> None:
        if keep_requests is not None and (
            isinstance(keep_requests, bool)
            or not isinstance(keep_requests, int)
            or keep_requests < 0
        ):
            raise UsageError(f"keep_requests must be an int >= 0 or None, got {keep_requests!r}")
        if chunk_size < 1:
            raise UsageError(f"chunk_size must be at least 1, got {chunk_size}")
        if latency_s < 0 or chunk_delay_s < 0:
            raise UsageError("latency_s and chunk_delay_s must be >= 0")
        if timeout_s is not None and timeout_s <= 0:
            raise UsageError(f"timeout_s must be > 0 or None, got {timeout_s}")
        if fail_first < 0:
            raise UsageError(f"fail_first must be >= 0, got {fail_first}")
        if fail_first and error is None:
            raise UsageError("fail_first needs error=, the ExecutorError to raise")
        if isinstance(script, str | bytes):
            raise UsageError("script must be a list of replies, a mapping or a function, not text")
        if finish_reason not in FINISH_REASONS:
            raise UsageError(
                f"finish_reason must be one of {FINISH_REASONS}, got {finish_reason!r}"
            )
        self._script = script
        self._cycle = cycle
        self._position = 0
        self._latency_s = latency_s
        self._timeout_s = timeout_s
        self._chunk_size = chunk_size
        self._chunk_delay_s = chunk_delay_s
        self._failures: Iterator[ExecutorError | None] = iter(failures)
        self._fail_first = fail_first
        self._error = error
        self._model = model
        self._finish_reason = finish_reason
        self._closed = False
        self.calls = 0
        """How many calls were made (a stream counts once its iteration starts)."""
        self._keep_requests = keep_requests
        self.requests: list[CompletionRequest] = []
        """The latest ``keep_requests`` requests, in the order the calls were made."""
        self.in_flight = 0
        """Calls running now."""
        self.max_in_flight = 0
        """The most calls that ever ran at once."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ScriptedExecutor {state}: {self.calls} call(s)>"

    async def __aenter__(self) -> ScriptedExecutor:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the script ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this ScriptedExecutor is closed: create a new one")

    def _start(self, request: CompletionRequest) -> ExecutorError | None:
        """Count the call and return the failure scheduled for it, if any."""
        self._check_open()
        if not isinstance(request, CompletionRequest):
            raise UsageError(f"expected a CompletionRequest, got {type(request).__name__}")
        self.calls += 1
        requests = self.requests
        requests.append(request)
        keep = self._keep_requests
        if keep is not None and len(requests) > keep:
            del requests[: len(requests) - keep]
        if self.calls <= self._fail_first:
            return self._error
        return next(self._failures, None)

    async def _reply(self, request: CompletionRequest) -> CompletionResult:
        script = self._script
        reply: Any
        if script is None:
            reply = _last_user_message(request)
        elif isinstance(script, Mapping):
            key = _last_user_message(request)
            if key not in script:
                raise InvalidRequest(
                    f"the script has no reply for the message {key[:60]!r}: add it to the mapping"
                )
            reply = script[key]
        elif callable(script):
            reply = script(request)
            if inspect.isawaitable(reply):
                reply = await reply
        else:
            if not script:
                raise UsageError("the script is an empty list: give at least one reply")
            if self._position >= len(script):
                if not self._cycle:
                    raise UsageError(
                        f"the script's {len(script)} replies are used up: add more, or cycle=True"
                    )
                self._position = 0
            reply = script[self._position]
            self._position += 1
        return self._result(request, reply)

    def _result(self, request: CompletionRequest, reply: object) -> CompletionResult:
        if isinstance(reply, ExecutorError):
            # The same instance may be scripted many times: drop the last traceback.
            raise reply.with_traceback(None)
        if isinstance(reply, CompletionResult):
            return reply
        if isinstance(reply, dict | list):
            text = json.dumps(reply, sort_keys=True, ensure_ascii=False)
        elif isinstance(reply, str):
            text = reply
        else:
            raise UsageError(
                f"a scripted reply must be text, a dict, a list, a CompletionResult or an "
                f"ExecutorError, got {type(reply).__name__}"
            )
        prompt = sum(_words(m.content) for m in request.messages)
        return CompletionResult(
            text=text,
            finish_reason=self._finish_reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=prompt, completion_tokens=_words(text)),
            model=request.model or self._model,
        )

    async def _wait(self) -> None:
        """Sleep the latency, or time out like a client with a deadline would."""
        if self._timeout_s is not None and self._latency_s > self._timeout_s:
            await asyncio.sleep(self._timeout_s)
            raise ExecutorTimeout(
                f"the scripted reply takes {self._latency_s} s, over the {self._timeout_s} s "
                "timeout"
            )
        if self._latency_s:
            await asyncio.sleep(self._latency_s)

    def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    # --- the protocol ------------------------------------------------------------------

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        """The scripted reply to ``request``, after the latency (or the scheduled failure)."""
        failure = self._start(request)
        started = time.perf_counter()
        self._enter()
        try:
            await self._wait()
            if failure is not None:
                raise failure.with_traceback(None)
            result = await self._reply(request)
        finally:
            self.in_flight -= 1
        latency = time.perf_counter() - started
        return CompletionResult(
            text=result.text,
            finish_reason=result.finish_reason,
            usage=result.usage,
            model=result.model,
            latency_s=max(latency, result.latency_s),
        )

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        """The scripted reply in chunks of ``chunk_size`` characters."""
        failure = self._start(request)
        self._enter()
        try:
            await self._wait()
            if failure is not None:
                raise failure.with_traceback(None)
            result = await self._reply(request)
            text = result.text
            pieces = [
                text[start : start + self._chunk_size]
                for start in range(0, len(text), self._chunk_size)
            ] or [""]
            for index, piece in zip(itertools.count(), pieces, strict=False):
                last = index == len(pieces) - 1
                if index and self._chunk_delay_s:
                    await asyncio.sleep(self._chunk_delay_s)
                yield CompletionChunk(
                    delta=piece,
                    index=index,
                    finish_reason=result.finish_reason if last else None,
                    usage=result.usage if last else None,
                )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        """Close the executor (idempotent); later calls raise UsageError."""
        self._closed = True
