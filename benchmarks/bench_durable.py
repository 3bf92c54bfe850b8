"""Durable runs: what checkpointing costs, each figure beside its baseline from the same run.

Rows (``run(quick)`` returns them; ``python -m benchmarks.bench_durable [--quick]``
prints them and writes ``benchmarks/results/bench_durable.json``):

- ``record_step sequential``: one awaited checkpoint at a time through RunStore on
  SQLiteStorage, beside raw ``sqlite3`` doing one INSERT + COMMIT per row in the
  same WAL / synchronous=NORMAL setting: the price of the adapter and the store.
- ``record_step 500 concurrent``: 500 writers at once (map items finishing
  together), beside the sequential rate: the gain of group commit.
- ``chain durable overhead``: a 1,000-step chain through the engine on
  SQLiteStorage minus the same chain on MemoryStorage, per step (target <= 150 us),
  beside the raw sqlite3 cost of one insert per step.
- ``map 10k durable``: a durable map of 10,000 items at 50 ms latency and
  concurrency 500, beside the ideal 1 s (target <= 1.25x).

The engine rows need ``taskloom.sdk.Engine``; without it they are left out and
the table says so.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks import _timing
from benchmarks._timing import make_row, median_spread, timed
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import (
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    Pipeline,
    Usage,
    serde,
)
from taskloom.sdk._runs.records import StepRecord
from taskloom.sdk._runs.store import RunStore


def _step(run_id: str, step_id: str, item: int | None) -> StepRecord:
    return StepRecord(
        run_id=run_id,
        step_id=step_id,
        item=item,
        status="succeeded",
        output={"text": f"reply to {step_id} {item}: " + "lorem ipsum " * 8},
        error=None,
        usage=Usage(prompt_tokens=20, completion_tokens=30),
        executor="scripted",
        attempts=1,
        started_at=1.0,
        finished_at=2.0,
    )


_row = functools.partial(make_row, "durable", digits=3)


# --- raw sqlite3 baseline -------------------------------------------------------------


def raw_sqlite_insert_us(rows: int, directory: str) -> float:
    """Microseconds per row for one INSERT + COMMIT each, WAL, synchronous=NORMAL."""
    path = os.path.join(directory, f"raw-{time.perf_counter_ns()}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE kv (ns TEXT, k TEXT, v BLOB, PRIMARY KEY (ns, k))")
        value = b"x" * 300
        start = time.perf_counter()
        for i in range(rows):
            conn.execute("BEGIN")
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", ("steps", f"r/{i}/-", value))
            conn.execute("COMMIT")
        return (time.perf_counter() - start) / rows * 1e6
    finally:
        conn.close()


# --- RunStore only --------------------------------------------------------------------


async def _record_sequential(store: RunStore, run_id: str, n: int) -> float:
    steps = [_step(run_id, f"s{i}", None) for i in range(n)]
    start = time.perf_counter()
    for step in steps:
        await store.record_step(step)
    return time.perf_counter() - start


async def _record_concurrent(store: RunStore, run_id: str, n: int, writers: int) -> float:
    queue = [_step(run_id, "m", i) for i in range(n)]
    it = iter(queue)

    async def writer() -> None:
        for step in it:
            await store.record_step(step)

    return await timed(lambda: asyncio.gather(*(writer() for _ in range(writers))))


async def bench_record_step(quick: bool, directory: str) -> list[dict[str, Any]]:
    """record_step: sequential vs raw sqlite3, and 500 concurrent writers vs sequential."""
    repeats = 3 if quick else 7
    n_seq = 500 if quick else 2000
    n_conc = 5000 if quick else 20000
    seq_us: list[float] = []
    raw_us: list[float] = []
    conc_rate: list[float] = []
    seq_rate: list[float] = []
    commits_per_1000: list[float] = []
    async with SQLiteStorage(os.path.join(directory, "record.db")) as storage:
        store = RunStore(storage)
        await _record_sequential(store, "warm", 200)  # warm-up
        await _record_concurrent(store, "warm", 1000, 500)
        for rep in range(repeats):
            elapsed = await _record_sequential(store, f"seq{rep}", n_seq)
            seq_us.append(elapsed / n_seq * 1e6)
            seq_rate.append(n_seq / elapsed)
            raw_us.append(raw_sqlite_insert_us(n_seq, directory))
            before = store.commits
            elapsed = await _record_concurrent(store, f"conc{rep}", n_conc, 500)
            conc_rate.append(n_conc / elapsed)
            commits_per_1000.append((store.commits - before) / n_conc * 1000)
        await store.aclose()
    seq, seq_spread = median_spread(seq_us)
    raw, _ = median_spread(raw_us)
    conc, conc_spread = median_spread(conc_rate)
    seq_r, _ = median_spread(seq_rate)
    per_k, _ = median_spread(commits_per_1000)
    print(f"  (500 concurrent writers: {per_k:.1f} commits per 1000 checkpoints)")
    return [
        _row(
            "record_step sequential (SQLite)",
            seq,
            "us/record",
            raw,
            "us/insert raw sqlite3",
            ratio=seq / raw,
            target="report",
            spread=seq_spread,
        ),
        _row(
            "record_step 500 concurrent (SQLite)",
            conc,
            "records/s",
            seq_r,
            "records/s sequential",
            ratio=conc / seq_r,
            target="report",
            spread=conc_spread,
        ),
    ]


# --- engine rows ------------------------------------------------------------------------


def _engine_rows_available() -> bool:
    try:
        from taskloom.sdk import Engine  # noqa: F401
    except ImportError:
        return False
    return True


class _Executor:
    """Replies at once (or after ``latency_s``): the engine and storage are all that is timed."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return CompletionResult(text="ok", usage=Usage(prompt_tokens=5, completion_tokens=1))

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        result = await self.complete(request)
        yield CompletionChunk(delta=result.text, finish_reason="stop", usage=result.usage)

    async def aclose(self) -> None:
        return None


def _chain(steps: int) -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "chain",
        "defaults": {"executor": "bench", "temperature": 0.0},
        "steps": [{"id": f"s{i}", "prompt": f"step {i}"} for i in range(steps)],
    }


def _map(items: int, concurrency: int) -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "fanout",
        "inputs": {"items": {"type": "array"}},
        "defaults": {"executor": "bench", "temperature": 0.0},
        "steps": [
            {
                "id": "m",
                "map": "{{inputs.items}}",
                "concurrency": concurrency,
                "step": {"id": "body", "prompt": "item {{item}}"},
            }
        ],
    }


async def _run_engine(
    storage: Any,
    pipeline: dict[str, Any],
    inputs: dict[str, Any],
    latency_s: float,
    durability: str = "async",
) -> float:
    from taskloom.sdk import Engine, ExecutorRegistry

    registry = ExecutorRegistry()
    registry.register("bench", _Executor(latency_s))
    structured = serde.structure(pipeline, Pipeline)
    async with Engine(storage=storage, registry=registry, durability=durability) as engine:
        engine.validate(structured, inputs)  # validate and compile outside the timed part
        start = time.perf_counter()
        result = await engine.run(structured, inputs)
        elapsed = time.perf_counter() - start
    if result.status != "succeeded":
        raise RuntimeError(f"benchmark run ended {result.status}")
    return elapsed


async def bench_engine(quick: bool, directory: str) -> list[dict[str, Any]]:
    """The 1,000-step chain and the 10,000-item map through the engine."""
    from taskloom.adapters.memory import MemoryStorage

    repeats = 3 if quick else 5
    steps = 1000
    chain = _chain(steps)
    samples: dict[str, list[float]] = {"none": [], "memory": [], "sqlite": [], "sync": []}
    raw_us: list[float] = []
    for rep in range(repeats + 1):  # the first round is the warm-up
        none_t = await _run_engine(None, chain, {}, 0.0)
        mem_t = await _run_engine(MemoryStorage(), chain, {}, 0.0)
        async with SQLiteStorage(os.path.join(directory, f"chain{rep}.db")) as storage:
            sql_t = await _run_engine(storage, chain, {}, 0.0)
        async with SQLiteStorage(os.path.join(directory, f"sync{rep}.db")) as storage:
            sync_t = await _run_engine(storage, chain, {}, 0.0, durability="sync")
        raw = raw_sqlite_insert_us(steps, directory)
        if rep == 0:
            continue
        samples["none"].append(none_t / steps * 1e6)
        samples["memory"].append(mem_t / steps * 1e6)
        samples["sqlite"].append(sql_t / steps * 1e6)
        samples["sync"].append(sync_t / steps * 1e6)
        raw_us.append(raw)
    overhead = [s - n for s, n in zip(samples["sqlite"], samples["none"], strict=True)]
    over, over_spread = median_spread(overhead)
    sync_over, sync_spread = median_spread(
        [s - n for s, n in zip(samples["sync"], samples["none"], strict=True)]
    )
    none_us, _ = median_spread(samples["none"])
    mem_us, _ = median_spread(samples["memory"])
    sql_us, sql_spread = median_spread(samples["sqlite"])
    raw, _ = median_spread(raw_us)
    print(
        f"  (chain per step: no storage {none_us:.1f} us, MemoryStorage {mem_us:.1f} us, "
        f"SQLiteStorage {sql_us:.1f} us)"
    )
    rows = [
        _row(
            "chain 1000 durable overhead (SQLite)",
            over,
            "us/step",
            raw,
            "us/insert raw sqlite3",
            ratio=over / raw,
            target="<= 150 us/step",
            holds=over <= 150.0,
            spread=over_spread,
        ),
        _row(
            'chain 1000 durable overhead (SQLite), durability="sync"',
            sync_over,
            "us/step",
            raw,
            "us/insert raw sqlite3",
            ratio=sync_over / raw,
            target="report",
            spread=sync_spread,
        ),
        _row(
            "chain 1000 per step durable (SQLite)",
            sql_us,
            "us/step",
            none_us,
            "us/step no durability",
            ratio=sql_us / none_us,
            target="report",
            spread=sql_spread,
        ),
    ]
    items, concurrency, latency = 10_000, 500, 0.05
    ideal = -(-items // concurrency) * latency
    fan = _map(items, concurrency)
    inputs = {"items": list(range(items))}
    map_repeats = 1 if quick else 3
    durable: list[float] = []
    plain: list[float] = []
    for rep in range(map_repeats):
        async with SQLiteStorage(os.path.join(directory, f"map{rep}.db")) as storage:
            durable.append(await _run_engine(storage, fan, inputs, latency))
        plain.append(await _run_engine(None, fan, inputs, latency))
    wall, wall_spread = median_spread(durable)
    plain_wall, _ = median_spread(plain)
    print(f"  (map 10k without durability: {plain_wall:.3f} s)")
    rows.append(
        _row(
            "map 10k x 50ms, concurrency 500, durable (SQLite)",
            wall,
            "s",
            ideal,
            "s ideal",
            ratio=wall / ideal,
            target="<= 1.25x ideal",
            holds=wall / ideal <= 1.25,
            spread=wall_spread,
        )
    )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure; each row carries its baseline from this same run."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as directory:
        rows += asyncio.run(bench_record_step(quick, directory))
        if _engine_rows_available():
            rows += asyncio.run(bench_engine(quick, directory))
        else:
            print("  (taskloom.sdk.Engine is not available: engine rows left out)")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_durable.json``."""
    return _timing.main("bench_durable", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
