"""How cost grows with the work, for what the engine and storage groups do not scale.

``python -m benchmarks.bench_scaling [--quick]`` prints the rows and writes
``benchmarks/results/bench_scaling.json``; ``run(quick)`` returns them (the suite,
``python -m benchmarks``, draws them in its chart beside the engine group's
zero-latency chain and map curves and the storage group's record counts).

- ``map fan-out @ N items``: one ``map`` over N = 100, 1,000, 10,000 items with
  concurrency N, each call sleeping 50 ms, on MemoryStorage, beside
  ``asyncio.gather`` of the same N calls (whose ideal is 50 ms at any N): the
  cost of fan-out width when every branch waits, as LLM calls do.
- ``peak RSS growth``: how much the process's peak resident memory grows during
  one run of a 10,000-step chain and of the 10,000-item fan-out, each in a fresh
  interpreter, beside the raw asyncio version of the same work.
- full mode only, ``chain per step @ N steps (SQLiteStorage)``: the durable chain
  at 100, 1,000, 10,000 steps beside a raw asyncio chain of the same calls (the
  engine group scales the chain on MemoryStorage only).

There are no targets here: these rows report the trend. Figures are medians over
repeats after a warm-up; the spread is (max - min) / median.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _timing
from benchmarks._common import (
    TaskloomBench,
    chain_pipeline,
    map_pipeline,
    raw_chain_seconds,
    raw_gather_seconds,
)
from benchmarks._memory import current_rss_mib, peak_rss_mib
from benchmarks._timing import Row, make_row, median_spread
from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import StorageAdapter

SCALES = (100, 1_000, 10_000)
LATENCY_S = 0.05
GROUP = "scaling"


async def _chain_rows(
    label: str, storage: StorageAdapter, repeats: int, scales: tuple[int, ...]
) -> list[Row]:
    rows: list[Row] = []
    async with TaskloomBench(storage) as bench:
        await bench.seconds(chain_pipeline(100))  # warm-up: code paths, imports
        await raw_chain_seconds(bench.executor, 100)
        for steps in scales:
            pipeline = chain_pipeline(steps)
            ours: list[float] = []
            raw: list[float] = []
            bench.engine.validate(pipeline)  # compile and cache the plan at this size
            for _ in range(repeats):
                # Interleave so that machine noise hits both alike.
                ours.append(await bench.seconds(pipeline) / steps * 1e6)
                raw.append(await raw_chain_seconds(bench.executor, steps) / steps * 1e6)
            value, spread = median_spread(ours)
            rows.append(
                make_row(
                    GROUP,
                    f"chain per step @ {steps:,} steps ({label})",
                    value,
                    "us/step",
                    median_spread(raw)[0],
                    "us/step raw asyncio chain",
                    spread=spread,
                )
            )
    return rows


async def _map_rows(repeats: int, scales: tuple[int, ...]) -> list[Row]:
    rows: list[Row] = []
    async with TaskloomBench(MemoryStorage(), latency_s=LATENCY_S) as bench:
        await bench.seconds(map_pipeline(100), {"items": list(range(100))})  # warm-up
        for items in scales:
            pipeline = map_pipeline(items)
            inputs = {"items": list(range(items))}
            bench.engine.validate(pipeline, inputs)
            ours: list[float] = []
            raw: list[float] = []
            for _ in range(repeats):
                ours.append(await bench.seconds(pipeline, inputs))
                raw.append(await raw_gather_seconds(bench.executor, items))
            value, spread = median_spread(ours)
            rows.append(
                make_row(
                    GROUP,
                    f"map fan-out @ {items:,} items (50 ms calls, concurrency = items)",
                    value,
                    "s wall",
                    median_spread(raw)[0],
                    "s raw asyncio.gather",
                    spread=spread,
                )
            )
    return rows


def _peak_child(kind: str, size: int) -> float:
    """Peak RSS growth (MiB) of one run of ``kind`` at ``size``, in a fresh interpreter.

    A fresh process, so that nothing measured before inflates the peak; RSS, not
    tracemalloc, because tracemalloc slows a 10,000-step run tenfold.
    """
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scaling", "--peak", kind, str(size)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"peak memory run {kind} {size} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _rss(measure: Callable[[], float | None]) -> float:
    found = measure()
    if found is None:
        raise RuntimeError("this platform reports no resident memory: no peak memory rows")
    return found


async def _peak_run(kind: str, size: int) -> float:
    """Run one measurement after a small warm-up; return its peak RSS above the RSS before."""
    latency = LATENCY_S if kind.endswith("map") else 0.0
    async with TaskloomBench(MemoryStorage(), latency_s=latency) as bench:
        if kind == "chain":
            pipeline = chain_pipeline(size)
            await bench.seconds(chain_pipeline(10))
            before = _rss(current_rss_mib)
            await bench.seconds(pipeline)
        elif kind == "map":
            pipeline = map_pipeline(size)
            inputs = {"items": list(range(size))}
            await bench.seconds(map_pipeline(10), {"items": list(range(10))})
            before = _rss(current_rss_mib)
            await bench.seconds(pipeline, inputs)
        elif kind == "raw-chain":
            await raw_chain_seconds(bench.executor, 10)
            before = _rss(current_rss_mib)
            await raw_chain_seconds(bench.executor, size)
        else:
            await raw_gather_seconds(bench.executor, 10)
            before = _rss(current_rss_mib)
            await raw_gather_seconds(bench.executor, size)
    return _rss(peak_rss_mib) - before


def _memory_rows(steps: int, items: int) -> list[Row]:
    """Peak memory of the largest chain and fan-out, beside raw asyncio doing the same."""
    return [
        make_row(
            GROUP,
            f"chain peak RSS growth @ {steps:,} steps (MemoryStorage)",
            _peak_child("chain", steps),
            "MiB",
            _peak_child("raw-chain", steps),
            "MiB raw asyncio chain",
            spread=None,
        ),
        make_row(
            GROUP,
            f"map peak RSS growth @ {items:,} items (MemoryStorage)",
            _peak_child("map", items),
            "MiB",
            _peak_child("raw-map", items),
            "MiB raw asyncio.gather",
            spread=None,
        ),
    ]


async def _bench(quick: bool, directory: Path) -> list[Row]:
    repeats = 3 if quick else 5
    rows = await _map_rows(repeats, SCALES)
    if not quick:
        sqlite = await SQLiteStorage.open(directory / "scaling.db", purge_interval_s=None)
        rows += await _chain_rows("SQLiteStorage", sqlite, repeats, SCALES)
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every scale; each row carries its raw asyncio baseline from this same run."""
    with tempfile.TemporaryDirectory(prefix="taskloom-bench-scaling-") as directory:
        rows = asyncio.run(_bench(quick, Path(directory)))
    return rows + _memory_rows(SCALES[-1], SCALES[-1])


def main(argv: list[str] | None = None) -> int:
    parser = _timing.parser(__doc__, "fewer repeats, no SQLite chain")
    parser.add_argument("--peak", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak:
        kind, size = args.peak
        if kind not in ("chain", "map", "raw-chain", "raw-map"):
            parser.error(f"unknown --peak kind {kind!r}")
        print(f"{asyncio.run(_peak_run(kind, int(size))):.3f}")
        return 0
    return _timing.report("bench_scaling", run, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
