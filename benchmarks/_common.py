"""taskloom's shapes and raw baselines, shared by the scaling group and the LangGraph peer.

The shapes (a chain of zero-latency LLM steps, a ``map`` over a list) are built
once here so that the scaling group and the LangGraph peer measure exactly the
same pipelines. Timing covers ``engine.run`` only: the engine is open and the
pipeline is loaded before the clock starts, as LangGraph's graph is compiled
before its clock starts. Statistics, rows and the command line are in ``_timing``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import CompletionRequest, Message, Pipeline, StorageAdapter
from taskloom.sdk import Engine, ExecutorRegistry, load_pipeline

# --- taskloom's shapes ------------------------------------------------------------------


def chain_pipeline(steps: int) -> Pipeline:
    """``steps`` LLM steps in order (no ``needs``: each depends on the one before)."""
    return load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": f"chain_{steps}",
            "steps": [{"id": f"s{i}", "prompt": "next"} for i in range(steps)],
            "output": f"{{{{steps.s{steps - 1}.output}}}}",
        }
    )


def map_pipeline(concurrency: int) -> Pipeline:
    """One ``map`` step over ``inputs.items`` with ``concurrency`` calls in flight."""
    return load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": f"map_{concurrency}",
            "inputs": {"items": {"type": "array"}},
            "steps": [
                {
                    "id": "fan",
                    "map": "{{inputs.items}}",
                    "as": "item",
                    "concurrency": concurrency,
                    "step": {"id": "call", "prompt": "item {{item}}"},
                }
            ],
        }
    )


class TaskloomBench:
    """An open engine with one scripted executor, for timing ``engine.run`` alone."""

    def __init__(
        self, storage: StorageAdapter | None, latency_s: float = 0.0, durability: str = "async"
    ) -> None:
        self.executor = ScriptedExecutor(["ok"], latency_s=latency_s)
        registry = ExecutorRegistry()
        registry.register("scripted", self.executor)
        self.engine = Engine(storage=storage, registry=registry, durability=durability)
        self.storage = storage

    async def __aenter__(self) -> TaskloomBench:
        await self.engine.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.engine.aclose()
        await self.executor.aclose()
        if self.storage is not None:
            await self.storage.aclose()

    async def seconds(self, pipeline: Pipeline, inputs: dict[str, Any] | None = None) -> float:
        """Wall seconds of one run; raises if the run did not succeed."""
        self.executor.requests.clear()  # the executor keeps every request: keep memory flat
        start = time.perf_counter()
        result = await self.engine.run(pipeline, inputs)
        elapsed = time.perf_counter() - start
        if result.status != "succeeded":
            raise RuntimeError(f"benchmark run ended {result.status}: {result.error}")
        return elapsed


# --- raw asyncio baselines -----------------------------------------------------------------


def _request(text: str) -> CompletionRequest:
    messages: Any = (Message(role="user", content=text),)  # attrs' converter confuses mypy
    return CompletionRequest(messages=messages, model="scripted")


async def raw_chain_seconds(executor: ScriptedExecutor, steps: int) -> float:
    """The same calls awaited one after another with no engine: the floor of a chain."""
    executor.requests.clear()
    start = time.perf_counter()
    for _ in range(steps):
        await executor.complete(_request("next"))
    return time.perf_counter() - start


async def raw_gather_seconds(executor: ScriptedExecutor, items: int) -> float:
    """The same calls all started at once with ``asyncio.gather``: the floor of a fan-out."""
    executor.requests.clear()
    start = time.perf_counter()  # building the requests is part of the work, as in the engine
    requests = [_request(f"item {i}") for i in range(items)]
    await asyncio.gather(*(executor.complete(request) for request in requests))
    return time.perf_counter() - start
