"""The run queue and its workers, each figure beside its baseline from the same run.

Rows (``run(quick)`` returns them; ``python -m benchmarks.bench_queue [--quick]``
prints them and writes ``benchmarks/results/bench_queue.json``). Every store is a
fresh SQLite file: queued runs are durable, and the store's data stays on disk, so
a worker's own memory is what is measured.

- ``worker RSS`` / ``worker heap blocks``: a worker (concurrency 8) runs queued
  1-step runs; resident memory and Python's allocated blocks after the last of N
  runs, beside the same after the first 1,000 (target: within 5%). N is 50,000
  (``--quick``: 5,000).
- ``submit -> start p50 / p99``: a run submitted through the engine a worker uses,
  until its ``RunStarted`` event; beside ``engine.start`` -> ``RunStarted``.
- ``throughput, W workers``: 2,000 queued 1-step runs whose call takes 50 ms,
  workers (each its own engine and SQLite connection, concurrency 16) drain the
  queue; beside the ideal 2,000 x 50 ms / (16 W) (``--quick``: 400 runs). Each worker
  has its own SQLite connection, as separate processes would, and their commits take
  turns at the file's one write lock; a claim is one write transaction (SQLite claims
  natively), so workers never race for a run. All workers share this process's one
  event loop, so beyond 2 workers the CPU per run, not the waits, bounds the rate.
- ``queued run fixed cost``: submit + claim + run of a 1-step zero-latency run,
  per run, beside a direct ``engine.run`` of the same pipeline on the same store,
  in alternating batches; the ratio is the median of the paired batches' ratios
  (target <= 1.5x). A queued batch ends with its last ``RunSucceeded`` on the bus.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks import _timing
from benchmarks._memory import current_rss_mib
from benchmarks._timing import make_row
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import Event, Pipeline, RunStarted, RunSucceeded
from taskloom.sdk import Engine, ExecutorRegistry, Worker, load_pipeline

GROUP = "queue"


def _pipeline() -> Pipeline:
    return load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": "one_step",
            "inputs": {"n": {"type": "integer"}},
            "steps": [{"id": "s", "prompt": "item {{inputs.n}}"}],
        }
    )


def _engine(storage: SQLiteStorage, latency_s: float = 0.0) -> Engine:
    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor(["ok"], latency_s=latency_s))
    return Engine(storage=storage, registry=registry)


async def _drain(engines: list[Engine], total: int, concurrency: int) -> float:
    """Seconds until ``total`` queued runs succeeded with one worker per engine."""
    workers = [Worker(e, concurrency=concurrency, poll_s=0.02) for e in engines]
    start = time.perf_counter()
    for worker in workers:
        await worker.__aenter__()
    try:
        while sum(w.stats.succeeded for w in workers) < total:
            if sum(w.stats.failed for w in workers):
                raise RuntimeError(f"queued runs failed: {[w.stats for w in workers]}")
            await asyncio.sleep(0.01)
        return time.perf_counter() - start
    finally:
        for worker in workers:
            await worker.shutdown(grace_s=5)


async def bench_memory(quick: bool, directory: str) -> list[dict[str, Any]]:
    total = 5_000 if quick else 50_000
    first = 1_000
    pipeline = _pipeline()
    async with SQLiteStorage(os.path.join(directory, "memory.db")) as storage:
        engine = _engine(storage)
        async with engine:
            worker = Worker(engine, concurrency=8, poll_s=0.01)
            await worker.__aenter__()
            marks: dict[int, tuple[float, int]] = {}
            submitted = 0
            try:
                while worker.stats.succeeded < total:
                    done = worker.stats.succeeded
                    if submitted - done < 200 and submitted < total:
                        batch = min(200, total - submitted)
                        for k in range(batch):
                            await engine.submit(pipeline, {"n": submitted + k})
                        submitted += batch
                    if first not in marks and done >= first:
                        marks[first] = _memory_now()
                    await asyncio.sleep(0.005)
                marks[total] = _memory_now()
            finally:
                await worker.shutdown(grace_s=5)
    rss_first, blocks_first = marks[first]
    rss_last, blocks_last = marks[total]
    rss_ratio = rss_last / rss_first
    blocks_ratio = blocks_last / blocks_first
    return [
        make_row(
            GROUP,
            f"worker RSS after {total:,} runs",
            rss_last,
            "MiB",
            rss_first,
            f"MiB after {first:,}",
            target="<= 1.05x",
            holds=rss_ratio <= 1.05,
            spread=None,
        ),
        make_row(
            GROUP,
            f"worker Python heap blocks after {total:,} runs",
            blocks_last,
            "blocks",
            blocks_first,
            f"blocks after {first:,}",
            target="<= 1.05x",
            holds=blocks_ratio <= 1.05,
            spread=None,
            digits=0,
            ratio_digits=4,
        ),
    ]


def _memory_now() -> tuple[float, int]:
    import gc

    gc.collect()
    return current_rss_mib() or 0.0, sys.getallocatedblocks()


async def bench_latency(quick: bool, directory: str) -> list[dict[str, Any]]:
    samples = 60 if quick else 300
    pipeline = _pipeline()
    async with SQLiteStorage(os.path.join(directory, "latency.db")) as storage:
        engine = _engine(storage)
        async with engine:
            started: dict[str, float] = {}

            def seen(event: Event) -> None:
                if isinstance(event, RunStarted):
                    started[event.run_id] = time.perf_counter()

            engine.bus.subscribe(seen)
            queued: list[float] = []
            worker = Worker(engine, concurrency=4, poll_s=0.2)
            await worker.__aenter__()
            try:
                for n in range(samples):
                    at = time.perf_counter()
                    run_id = await engine.submit(pipeline, {"n": n})
                    while run_id not in started:
                        await asyncio.sleep(0.0005)
                    queued.append(started.pop(run_id) - at)
            finally:
                await worker.shutdown(grace_s=5)
            direct: list[float] = []
            for n in range(samples):
                at = time.perf_counter()
                handle = engine.start(pipeline, {"n": n})
                while handle.run_id not in started:
                    await asyncio.sleep(0.0005)
                direct.append(started.pop(handle.run_id) - at)
                await handle.result()
    rows = []
    for label, q in (("p50", 50), ("p99", 99)):
        value = _percentile(queued, q) * 1000
        base = _percentile(direct, q) * 1000
        rows.append(
            make_row(
                GROUP,
                f"submit -> start {label} (worker in the same engine)",
                value,
                "ms",
                base,
                f"ms engine.start -> start {label}",
                spread=None,
            )
        )
    return rows


def _percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def bench_throughput(quick: bool, directory: str) -> list[dict[str, Any]]:
    total = 400 if quick else 2_000
    latency, concurrency = 0.05, 16
    pipeline = _pipeline()
    rows = []
    for count in (1, 2, 4):
        path = os.path.join(directory, f"throughput{count}.db")
        storages = [SQLiteStorage(path) for _ in range(count)]
        engines = [_engine(s, latency) for s in storages]
        try:
            for engine in engines:
                await engine.open()
            for n in range(total):
                await engines[0].submit(pipeline, {"n": n})
            wall = await _drain(engines, total, concurrency)
        finally:
            for engine in engines:
                await engine.aclose()
            for storage in storages:
                await storage.aclose()
        ideal = total * latency / (concurrency * count)
        rows.append(
            make_row(
                GROUP,
                f"throughput: {total:,} queued runs x 50 ms, {count} worker(s) x {concurrency}",
                wall,
                "s",
                ideal,
                "s ideal",
                spread=None,
            )
        )
    return rows


async def bench_fixed_cost(quick: bool, directory: str) -> list[dict[str, Any]]:
    """Paired batches, direct then queued, on one store: the machine's load drifts, so
    each queued batch is compared with the direct batch just before it."""
    batch, pairs = (50, 4) if quick else (100, 10)
    pipeline = _pipeline()
    direct_samples, queued_samples, ratios = [], [], []
    async with SQLiteStorage(os.path.join(directory, "fixed.db")) as storage:
        engine = _engine(storage)
        async with engine:
            await engine.run(pipeline, {"n": -1})  # warm the plan cache and the store
            # The queued batch ends with its last RunSucceeded, told by the bus (a waiting
            # loop polling every 0.5 ms cost the queued side ~5% in wakeups of its own).
            succeeded = [0]
            enough = asyncio.Event()
            goal = [0]

            def count(_event: Event) -> None:
                succeeded[0] += 1
                if succeeded[0] >= goal[0]:
                    enough.set()

            engine.bus.subscribe(count, types=[RunSucceeded])
            worker = Worker(engine, concurrency=1, poll_s=0.02)
            await worker.__aenter__()
            try:
                for pair in range(pairs):
                    start = time.perf_counter()
                    for n in range(batch):
                        await engine.run(pipeline, {"n": n})
                    direct = (time.perf_counter() - start) / batch
                    goal[0] = succeeded[0] + batch
                    enough.clear()
                    start = time.perf_counter()
                    for n in range(batch):
                        await engine.submit(pipeline, {"n": pair * batch + n})
                    await enough.wait()
                    queued = (time.perf_counter() - start) / batch
                    direct_samples.append(direct)
                    queued_samples.append(queued)
                    ratios.append(queued / direct)
            finally:
                await worker.shutdown(grace_s=5)
    queued = statistics.median(queued_samples)
    direct = statistics.median(direct_samples)
    ratio = statistics.median(ratios)
    return [
        make_row(
            GROUP,
            "queued run fixed cost (submit + claim + run, 1 step, SQLite)",
            queued * 1e6,
            "us/run",
            direct * 1e6,
            "us/run direct engine.run",
            ratio=ratio,
            target="<= 1.5x",
            holds=ratio <= 1.5,
            spread=(max(ratios) - min(ratios)) / ratio,
            digits=1,
            ratio_digits=3,
        )
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure; each row carries its baseline from this same run."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as directory:
        rows += asyncio.run(bench_fixed_cost(quick, directory))
        rows += asyncio.run(bench_latency(quick, directory))
        rows += asyncio.run(bench_throughput(quick, directory))
        rows += asyncio.run(bench_memory(quick, directory))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_queue.json``."""
    return _timing.main("bench_queue", __doc__, run, argv, quick_help="fewer runs")


if __name__ == "__main__":
    sys.exit(main())
