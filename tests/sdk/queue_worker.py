"""A ``Worker`` process for the stall and kill-loop tests.

It runs queued runs of one store until SIGTERM. Its executor logs each call twice
to a shared calls file -- ``S <pid> <tag>`` when the call starts and ``E <pid>
<tag>`` when it ends -- with one ``os.write`` of one short line each (O_APPEND), so
tests can count, across processes, which process started and finished which call
and when (relative to a SIGSTOP or SIGCONT they sent). Replies are
``<digest of the prompt>@<pid>``: a stored output names the process that made it.

Usage::

    python queue_worker.py --kind sqlite --store DB --calls CALLS [--ttl 1.0]
        [--latency 0.1] [--concurrency 2] [--queue NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from durable_worker import open_storage

from taskloom.contracts import CompletionChunk, CompletionRequest, CompletionResult, Usage
from taskloom.sdk import Engine, ExecutorRegistry, Worker

EXECUTOR_ID = "tagged"


def digest(prompt: str) -> str:
    """The pid-free part of a reply."""
    return "r" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:10]


def map_pipeline(items: int, *, concurrency: int = 3) -> dict[str, Any]:
    """A run of one map over ``items`` items; a call's tag is ``item=<index>:<item>``."""
    return {
        "taskloom": "pipeline/v1",
        "name": "queued-map",
        "inputs": {"items": {"type": "array"}},
        "defaults": {"executor": EXECUTOR_ID, "temperature": 0.0},
        "steps": [
            {
                "id": "m",
                "map": "{{inputs.items}}",
                "concurrency": concurrency,
                "step": {"id": "body", "prompt": "item={{index}}:{{item}} | reply"},
            },
        ],
        "output": {"items": "{{steps.m.output}}"},
    }


class TaggedExecutor:
    """Logs call starts and ends to the calls file; replies name this process."""

    def __init__(self, calls_path: str, latency_s: float) -> None:
        self._fd = os.open(calls_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._latency = latency_s
        self._pid = os.getpid()

    def _log(self, kind: str, prompt: str) -> None:
        tag = prompt.split(" | ", 1)[0]
        os.write(self._fd, f"{kind} {self._pid} {tag}\n".encode())

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        prompt = request.messages[-1].content
        self._log("S", prompt)
        await asyncio.sleep(self._latency)
        self._log("E", prompt)
        return CompletionResult(
            text=f"{digest(prompt)}@{self._pid}", usage=Usage(prompt_tokens=1, completion_tokens=1)
        )

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        result = await self.complete(request)
        yield CompletionChunk(delta=result.text, index=0, finish_reason="stop")

    async def aclose(self) -> None:
        os.close(self._fd)


async def serve(args: argparse.Namespace) -> None:
    storage = await open_storage(args.kind, args.store)
    registry = ExecutorRegistry()
    registry.register(EXECUTOR_ID, TaggedExecutor(args.calls, args.latency))
    try:
        async with Engine(storage=storage, registry=registry, lease_ttl_s=args.ttl) as engine:
            worker = Worker(
                engine,
                queues=[args.queue],
                concurrency=args.concurrency,
                poll_s=0.05,
                recover_every_s=0.1,
                grace_s=0.0,
            )
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, worker.stop)
            async with worker:
                await worker.wait_stopped()
    finally:
        await storage.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--calls", required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--queue", default="default")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    main()
