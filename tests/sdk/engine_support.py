"""Shared fakes for the engine tests: a deterministic executor, fake time, task checks.

The fake executor replies ``"<model>|<last message>"`` (deterministic), counts
calls per prompt, tracks how many calls are in flight, and can be told to fail
a prompt with given errors before answering, or to wait on a gate.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from taskloom.contracts import CompletionChunk, CompletionRequest, CompletionResult, Usage
from taskloom.sdk import Engine, ExecutorRegistry


class FakeExecutor:
    """A deterministic LLM executor with failure injection and call accounting."""

    def __init__(
        self,
        *,
        reply: Callable[[CompletionRequest], str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.reply = reply or (lambda r: f"{r.model}|{r.messages[-1].content}")
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.requests: list[CompletionRequest] = []
        self.failures: dict[str, list[BaseException]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event() if _loop_running() else None
        self.closed = False

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def fail(self, prompt: str, *errors: BaseException) -> None:
        """Make calls whose last message is ``prompt`` raise ``errors`` first, in order."""
        self.failures.setdefault(prompt, []).extend(errors)

    async def _enter(self, request: CompletionRequest) -> str:
        prompt = request.messages[-1].content
        self.calls[prompt] += 1
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.started is not None:
            self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            pending = self.failures.get(prompt)
            if pending:
                raise pending.pop(0)
            return self.reply(request)
        finally:
            self.in_flight -= 1

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        text = await self._enter(request)
        return CompletionResult(
            text=text, usage=Usage(prompt_tokens=len(request.messages), completion_tokens=1)
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        text = await self._enter(request)
        pieces = [text[i : i + 3] for i in range(0, len(text), 3)] or [""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            yield CompletionChunk(
                delta=piece,
                index=index,
                finish_reason="stop" if last else None,
                usage=Usage(prompt_tokens=1, completion_tokens=1) if last else None,
            )

    async def aclose(self) -> None:
        self.closed = True


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class FakeTime:
    """An injectable clock and sleep: sleeping advances the clock and is recorded."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def pipeline(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A pipeline dict with these steps."""
    return {"taskloom": "pipeline/v1", "name": "test", "steps": list(steps), **extra}


def make_engine(
    executor: FakeExecutor | None = None, *, executor_id: str = "fake", **kwargs: Any
) -> tuple[Engine, FakeExecutor]:
    """An engine over a fresh registry holding ``executor`` (a new FakeExecutor by default)."""
    executor = executor or FakeExecutor()
    registry = kwargs.pop("registry", None) or ExecutorRegistry()
    if executor_id not in registry:
        registry.register(executor_id, executor)
    return Engine(registry=registry, **kwargs), executor


async def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks other than the current one that are still running after a few loop turns."""
    current = asyncio.current_task()
    for _ in range(5):
        await asyncio.sleep(0)
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]
