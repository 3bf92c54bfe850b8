"""A worker process for the crash tests: run (or resume) one durable pipeline, then exit.

``test_durable_crash.py`` starts this as a real subprocess and kills it with
SIGKILL at random moments. Each call of the counting executor appends one line
``step=<id> item=<index or ->`` to a calls file and fsyncs it *before* the reply
is returned, so the file is an exact record of every executor call that
completed, even across kills. Replies are a digest of the prompt: every run of
the same pipeline gives the same output.

Usage::

    python durable_worker.py --kind sqlite --store DB --job JOB.json --calls CALLS \
        --run-id-file RUNID --result RESULT.json [--holder NAME] [--lease-ttl 0.5]

With no run id in ``--run-id-file`` it starts a run and writes its id there
(durably) at once; otherwise it resumes that run, waiting out the lease of a
holder that died. It writes ``{"run_id", "status", "output"}`` to ``--result``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from taskloom.contracts import (
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    RunHeld,
    RunNotFound,
    StorageAdapter,
    Usage,
)

EXECUTOR_ID = "counter"


def reply_for(prompt: str) -> str:
    """The executor's deterministic reply to ``prompt``."""
    return "r" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:10]


def call_tag(prompt: str) -> str:
    """The ``step=<id> item=<i>`` prefix every prompt of the crash pipelines starts with."""
    return prompt.split(" | ", 1)[0]


class CountingExecutor:
    """Replies after a small latency; logs each completed call to a file, fsync'd first."""

    def __init__(
        self,
        calls_path: str | None,
        *,
        latency_s: tuple[float, float] = (0.002, 0.012),
        seed: int | None = None,
    ) -> None:
        self._fd = (
            os.open(calls_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if calls_path
            else None
        )
        self._latency = latency_s
        self._random = random.Random(seed)
        self.calls = 0

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        prompt = request.messages[-1].content
        low, high = self._latency
        await asyncio.sleep(self._random.uniform(low, high))
        if self._fd is not None:
            # One write of one short line: a kill cannot split it. fsync before replying,
            # so every reply the engine could have checkpointed is already counted.
            os.write(self._fd, (call_tag(prompt) + "\n").encode("utf-8"))
            os.fsync(self._fd)
        self.calls += 1
        return CompletionResult(
            text=reply_for(prompt),
            usage=Usage(prompt_tokens=len(prompt) // 4 + 1, completion_tokens=3),
        )

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        result = await self.complete(request)
        yield CompletionChunk(delta=result.text, index=0, finish_reason="stop", usage=result.usage)

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def build_job(
    *, seq: int = 3, par: int = 3, items: int = 24, concurrency: int = 6, seed: str = "s"
) -> dict[str, Any]:
    """A pipeline with ``seq`` sequential steps, a parallel group, a map, and a final step."""
    steps: list[dict[str, Any]] = []
    prev = "{{inputs.seed}}"
    for i in range(seq):
        steps.append({"id": f"s{i}", "prompt": f"step=s{i} item=- | after {prev}"})
        prev = f"{{{{steps.s{i}.output}}}}"
    if par:
        steps.append(
            {
                "id": "p",
                "parallel": [
                    {"id": f"g{j}", "prompt": f"step=g{j} item=- | branch {j} of {prev}"}
                    for j in range(par)
                ],
            }
        )
    if items:
        steps.append(
            {
                "id": "m",
                "map": "{{inputs.items}}",
                "concurrency": concurrency,
                "step": {"id": "body", "prompt": "step=m item={{index}} | {{item}} with " + prev},
            }
        )
    parts = (
        [prev] + (["{{steps.p.output}}"] if par else []) + (["{{steps.m.output}}"] if items else [])
    )
    steps.append({"id": "final", "prompt": "step=final item=- | " + " ".join(parts)})
    pipeline = {
        "taskloom": "pipeline/v1",
        "name": "crash-test",
        "inputs": {"seed": {"type": "string"}, "items": {"type": "array"}},
        "defaults": {"executor": EXECUTOR_ID, "temperature": 0.0},
        "steps": steps,
        "output": {
            "final": "{{steps.final.output}}",
            **({"map": "{{steps.m.output}}"} if items else {}),
            **({"parallel": "{{steps.p.output}}"} if par else {}),
        },
    }
    inputs = {"seed": seed, "items": [f"x{k}" for k in range(items)]}
    return {"pipeline": pipeline, "inputs": inputs}


async def open_storage(kind: str, location: str) -> StorageAdapter:
    """Open the adapter the crash test asked for."""
    if kind == "sqlite":
        from taskloom.adapters.sqlite import SQLiteStorage

        return await SQLiteStorage.open(location)
    if kind == "filesystem":
        from taskloom.adapters.filesystem import FileStorage

        storage: StorageAdapter = FileStorage(location)
        return storage
    if kind == "memory":
        from taskloom.adapters.memory import MemoryStorage

        return MemoryStorage()
    if kind == "postgres":
        from test_runstore_support import postgres_storage

        pg: StorageAdapter = postgres_storage(location)
        return pg
    raise SystemExit(f"unknown storage kind {kind!r}")


def write_durably(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (temp file, fsync, rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def run_job(
    *,
    storage: StorageAdapter,
    job: dict[str, Any],
    executor: CountingExecutor,
    run_id_file: Path,
    holder: str | None,
    lease_ttl_s: float,
) -> dict[str, Any]:
    """Start or resume the job's run; return the result as JSON data."""
    from taskloom.sdk import Engine, ExecutorRegistry

    registry = ExecutorRegistry()
    registry.register(EXECUTOR_ID, executor)
    durability = job.get("durability", "async")
    async with Engine(
        storage=storage,
        registry=registry,
        lease_ttl_s=lease_ttl_s,
        durability=durability,
        holder=holder or None,
    ) as engine:
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
        while True:
            try:
                if not run_id:
                    handle = engine.start(job["pipeline"], job["inputs"])
                    run_id = handle.run_id
                    write_durably(run_id_file, run_id)
                    result = await handle.result()
                else:
                    result = await engine.resume(run_id, job["pipeline"])
                break
            except RunNotFound:
                run_id = ""  # killed before the run record was written: start afresh
            except RunHeld as held:
                # The previous worker died holding the lease (or this one stalled past its
                # TTL and lost it): wait until it expires, then resume.
                await asyncio.sleep(max(0.0, held.expires_at - time.time()) + 0.02)
    return {"run_id": result.run_id, "status": result.status, "output": result.output}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--kind", required=True, choices=["sqlite", "filesystem", "memory", "postgres"]
    )
    parser.add_argument("--store", required=True)
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--calls", required=True)
    parser.add_argument("--run-id-file", required=True, type=Path)
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--holder", default="")
    parser.add_argument("--lease-ttl", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())

    async def go() -> dict[str, Any]:
        storage = await open_storage(args.kind, args.store)
        executor = CountingExecutor(args.calls, seed=args.seed)
        try:
            return await run_job(
                storage=storage,
                job=job,
                executor=executor,
                run_id_file=args.run_id_file,
                holder=args.holder or None,
                lease_ttl_s=args.lease_ttl,
            )
        finally:
            await executor.aclose()
            await storage.aclose()

    result = asyncio.run(go())
    write_durably(args.result, json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
