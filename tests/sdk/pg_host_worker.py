"""The executor of the several-hosts test: it logs the start and end of every call.

Each host runs the real ``taskloom worker`` command; a ``sitecustomize`` the test
puts on the workers' path calls ``register_from_env()``, which makes ``type =
"hostlog"`` in their taskloom.toml build a ``LoggingExecutor`` appending
``start``/``end`` lines (wall clock, host, prompt) to ``$TL_HOSTS_LOG``, so the test
can check that no item ran on two live hosts at once.

``python pg_host_worker.py --dsn DSN --schema S --holder NAME --log FILE`` also runs
such a worker directly (an Engine and a Worker, as ``taskloom worker`` does), for
debugging one host by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs

from taskloom.adapters.postgres import PostgresStorage
from taskloom.contracts import CompletionChunk, CompletionRequest, CompletionResult, Usage
from taskloom.sdk import Engine, ExecutorRegistry, Worker, register_executor_type

EXECUTOR_ID = "echo"


class LoggingExecutor:
    """Replies ``done:<prompt>`` after ``latency`` seconds; logs start and end of each call."""

    def __init__(self, path: str, holder: str, latency: float) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._holder = holder
        self._latency = latency

    def _log(self, what: str, prompt: str) -> None:
        line = json.dumps({"at": time.time(), "what": what, "holder": self._holder, "p": prompt})
        os.write(self._fd, (line + "\n").encode())

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        prompt = request.messages[-1].content
        self._log("start", prompt)
        await asyncio.sleep(self._latency)
        self._log("end", prompt)
        return CompletionResult(
            text=f"done:{prompt}", usage=Usage(prompt_tokens=1, completion_tokens=1)
        )

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        result = await self.complete(request)
        yield CompletionChunk(delta=result.text, index=0, finish_reason="stop", usage=result.usage)

    async def aclose(self) -> None:
        os.close(self._fd)


def register_from_env() -> None:
    """Register ``type = "hostlog"`` when ``$TL_HOSTS_LOG`` and ``$TL_HOST`` are set."""
    path, host = os.environ.get("TL_HOSTS_LOG"), os.environ.get("TL_HOST")
    if not path or not host:
        return

    def factory(settings: Any, secrets: Any) -> LoggingExecutor:
        return LoggingExecutor(path, host, float(settings.get("latency", 0.05)))

    register_executor_type("hostlog", factory)


async def main(args: argparse.Namespace) -> None:
    registry = ExecutorRegistry()
    registry.register(EXECUTOR_ID, LoggingExecutor(args.log, args.holder, args.latency))
    storage = PostgresStorage(
        args.dsn, schema=args.schema, max_size=6, connect_timeout_s=3, pool_timeout_s=5
    )
    engine = Engine(
        storage=storage, registry=registry, lease_ttl_s=args.lease_ttl, holder=args.holder
    )
    async with engine:
        worker = Worker(engine, concurrency=args.concurrency, poll_s=0.5, grace_s=2.0)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        async with worker:
            print(json.dumps({"ready": args.holder}), flush=True)
            await worker.wait_stopped()
        print(json.dumps({"stats": attrs.asdict(worker.stats)}), flush=True)
    await storage.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--holder", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=6)
    asyncio.run(main(parser.parse_args()))
