"""Engine overhead and fan-out efficiency, each figure beside a baseline from the same run.

Rows (``run(quick)`` returns them; ``python -m benchmarks.bench_engine [--quick]``
prints a table and writes ``benchmarks/results/bench_engine.json``):

- ``chain 1000``: a chain of 1,000 zero-latency scripted LLM steps through
  ``engine.run``, beside a raw asyncio loop making the same 1,000 executor calls
  (same requests, no engine). Value: engine time minus raw time, per step
  (target <= 25 us); once with no storage, once with the default MemoryStorage
  (every step checkpointed and every event stored through the RunStore).
- ``RunStore alone``: the checkpoint and two stored events a chain step costs,
  through the RunStore on MemoryStorage without the engine: the share of the
  MemoryStorage chain's overhead that is storage, not scheduling.
- ``map 1000 x 50 ms @1000`` and ``map 10000 x 50 ms @500``: a map whose body
  sleeps 50 ms, beside the ideal (items / concurrency waves x 50 ms); the raw
  asyncio fan-out of the same calls (a TaskGroup and a semaphore) is its own row,
  so the machine's own floor is visible. Targets 1.15x and 1.2x the ideal.
- ``peak memory``: tracemalloc's peak during the 10,000-item run, beside the raw
  fan-out's peak.
- ``scaling``: per-step cost of chains and per-item cost of zero-latency maps at
  100 / 1,000 / 10,000, beside the raw per-call cost.
- ``durable`` (when ``taskloom.adapters.sqlite`` imports): the 1,000-step chain on
  SQLiteStorage (target <= 150 us per step above raw) and a durable map of 10,000
  items x 50 ms at concurrency 500 (target <= 1.25x ideal).

Medians over repeats after one warm-up; each measured run gets a fresh engine and
a fresh store (opening them, and validating the pipeline, is outside the clock, as
a LangGraph graph is compiled before its clock starts), so runs do not slow each
other by filling one store. Validation has its own row (``validate + compile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import _timing
from benchmarks._timing import Row, make_row, median_spread, samples, timed
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import CompletionRequest, Message, Pipeline, serde
from taskloom.sdk import Engine, ExecutorRegistry, load_pipeline

GROUP = "engine"
LATENCY = 0.05


_row = functools.partial(make_row, GROUP, target="report", digits=3)


# --- shapes ---------------------------------------------------------------------------


def chain(steps: int) -> Pipeline:
    return load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": f"chain_{steps}",
            "steps": [{"id": f"s{i}", "prompt": "next"} for i in range(steps)],
        }
    )


def fan_out(concurrency: int) -> Pipeline:
    return load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": f"map_{concurrency}",
            "inputs": {"items": {"type": "array"}},
            "steps": [
                {
                    "id": "m",
                    "map": "{{inputs.items}}",
                    "concurrency": concurrency,
                    "step": {"id": "body", "prompt": "{{item}}"},
                }
            ],
        }
    )


def _request(text: str) -> CompletionRequest:
    messages: Any = (Message(role="user", content=text),)
    return CompletionRequest(messages=messages)


@contextlib.asynccontextmanager
async def _engine(
    executor: ScriptedExecutor,
    storage: str,
    folder: Path,
    durability: str = "async",
    telemetry: Any = False,
) -> AsyncIterator[Engine]:
    registry = ExecutorRegistry()
    registry.register("scripted", executor)
    store: Any = None if storage == "none" else "memory"
    if storage == "sqlite":
        from taskloom.adapters.sqlite import SQLiteStorage

        store = SQLiteStorage(folder / f"bench-{time.perf_counter_ns()}.db")
    engine = Engine(registry=registry, storage=store, durability=durability, telemetry=telemetry)
    await engine.open()
    if storage == "sqlite":
        await engine.storage.scan("runs", limit=1)  # type: ignore[union-attr]  # open the file
    try:
        yield engine
    finally:
        await engine.aclose()
        if storage == "sqlite":
            await store.aclose()


async def _timed(run: Callable[[], Awaitable[Any]]) -> float:
    gc.collect()  # a collection left over from the last run is not this run's cost
    return await timed(run)


# --- raw baselines ----------------------------------------------------------------------


async def raw_chain(executor: ScriptedExecutor, steps: int) -> float:
    async def go() -> None:
        for _ in range(steps):
            await executor.complete(_request("next"))

    return await _timed(go)


async def raw_fan_out(executor: ScriptedExecutor, items: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            await executor.complete(_request(str(index)))

    async def go() -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(items):
                group.create_task(one(index))

    return await _timed(go)


# --- engine measurements ---------------------------------------------------------------


async def engine_chain(steps: int, storage: str, folder: Path, durability: str = "async") -> float:
    executor = ScriptedExecutor()
    pipeline = chain(steps)
    async with _engine(executor, storage, folder, durability) as engine:
        engine.validate(pipeline)  # outside the clock, as a graph is compiled before a run
        return await _timed(lambda: engine.run(pipeline))


def _in_memory_telemetry() -> Any:
    """A Telemetry whose spans go to the SDK's in-memory exporter (kept small)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from taskloom.sdk._telemetry.tracing import Telemetry

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return Telemetry(tracer_provider=provider, meter_provider=meters)


async def engine_chain_traced(steps: int, telemetry: bool) -> float:
    executor = ScriptedExecutor()
    pipeline = chain(steps)
    traced = _in_memory_telemetry() if telemetry else False
    async with _engine(executor, "memory", Path("."), telemetry=traced) as engine:
        engine.validate(pipeline)
        return await _timed(lambda: engine.run(pipeline))


async def bench_telemetry(quick: bool) -> Row:
    """Engine overhead per step with telemetry on (in-memory exporter) against off."""
    steps = 300 if quick else 1000
    repeats = 3 if quick else 7
    raw_executor = ScriptedExecutor()
    on: list[float] = []
    off: list[float] = []
    raw: list[float] = []
    for _ in range(repeats):  # interleaved, so a busy moment hits all three alike
        off.append(await engine_chain_traced(steps, False))
        on.append(await engine_chain_traced(steps, True))
        raw.append(await raw_chain(raw_executor, steps))
    on_s, spread = median_spread(on)
    off_s, _ = median_spread(off)
    raw_s, _ = median_spread(raw)
    on_us = (on_s - raw_s) / steps * 1e6
    off_us = (off_s - raw_s) / steps * 1e6
    ratio = on_us / off_us if off_us > 0 else float("inf")
    return _row(
        "chain, MemoryStorage, telemetry on (in-memory exporter): overhead per step",
        on_us,
        "us/step above raw",
        off_us,
        "us/step above raw, telemetry off",
        ratio=ratio,
        spread=spread,
        target="<= 1.3x telemetry off",
        holds=ratio <= 1.3,
    )


async def engine_map(
    items: int, concurrency: int, latency: float, storage: str, folder: Path
) -> float:
    executor = ScriptedExecutor(latency_s=latency)
    pipeline = fan_out(concurrency)
    inputs = {"items": list(range(items))}
    async with _engine(executor, storage, folder) as engine:
        engine.validate(pipeline, inputs)
        return await _timed(lambda: engine.run(pipeline, inputs))


async def runstore_per_step(steps: int) -> float:
    """What the RunStore alone costs per chain step: one checkpoint and two stored events,
    queued as the engine queues them by default (durability="async"), all durable at the end."""
    from taskloom.adapters.memory import MemoryStorage
    from taskloom.contracts import StepStarted, StepSucceeded, Usage
    from taskloom.sdk._runs.records import StepRecord
    from taskloom.sdk._runs.store import RunStore

    store = RunStore(MemoryStorage())

    async def go() -> None:
        pending: list[asyncio.Future[None]] = []
        for i in range(steps):
            sid = f"s{i}"
            store.record_event(StepStarted(run_id="r", at=1.0, step_id=sid))
            store.record_event(StepSucceeded(run_id="r", at=1.0, step_id=sid))
            pending.append(
                store.queue_step(
                    StepRecord(
                        run_id="r",
                        step_id=sid,
                        output="next",
                        usage=Usage(prompt_tokens=1, completion_tokens=1),
                        executor="scripted",
                        started_at=1.0,
                        finished_at=2.0,
                    )
                )
            )
        for future in pending:
            await future

    try:
        return await _timed(go)
    finally:
        await store.aclose()


async def bench_runstore_share(quick: bool, chain_row: Row) -> Row:
    """The RunStore's part of the durable chain's overhead, measured alone in the same run."""
    steps = 1000
    value, spread = median_spread(
        await samples(functools.partial(runstore_per_step, steps), 3 if quick else 7)
    )
    return _row(
        "RunStore alone per chain step (queue_step + 2 events), MemoryStorage",
        value / steps * 1e6,
        "us/step",
        chain_row["value"],
        "us/step engine overhead with MemoryStorage (row above)",
        spread=spread,
    )


async def bench_validate(quick: bool) -> Row:
    """Validating and compiling a 1,000-step chain on a fresh engine (once per pipeline)."""
    steps = 1000
    data = {
        "taskloom": "pipeline/v1",
        "name": "chain",
        "steps": [{"id": f"s{i}", "prompt": "next"} for i in range(steps)],
    }
    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor())
    validate: list[float] = []
    structure: list[float] = []
    for _ in range(3 if quick else 7):
        start = time.perf_counter()
        Engine(registry=registry, storage=None).validate(data)
        validate.append(time.perf_counter() - start)
        start = time.perf_counter()
        serde.structure(data, Pipeline)
        structure.append(time.perf_counter() - start)
    value, spread = median_spread(validate)
    base, _ = median_spread(structure)
    return _row(
        "validate + compile a 1000-step pipeline (once per pipeline)",
        value / steps * 1e6,
        "us/step",
        base / steps * 1e6,
        "us/step converter structure() alone",
        spread=spread,
    )


async def bench_chain(
    quick: bool, folder: Path, storage: str, target_us: float | None, durability: str = "async"
) -> Row:
    steps = 1000
    repeats = 3 if quick else 7
    raw_executor = ScriptedExecutor()
    engine_times = await samples(lambda: engine_chain(steps, storage, folder, durability), repeats)
    raw_times = await samples(lambda: raw_chain(raw_executor, steps), repeats)
    engine_s, spread = median_spread(engine_times)
    raw_s, _ = median_spread(raw_times)
    overhead_us = (engine_s - raw_s) / steps * 1e6
    label = {"none": "no storage", "memory": "MemoryStorage", "sqlite": "SQLiteStorage"}[storage]
    if durability != "async":
        label += f', durability="{durability}"'
    judged: dict[str, Any] = {}
    if target_us is not None:
        judged = {
            "target": f"<= {target_us:g} us/step above raw",
            "holds": overhead_us <= target_us,
        }
    return _row(
        f"chain 1000 steps, {label}: overhead per step",
        overhead_us,
        "us/step above raw",
        raw_s / steps * 1e6,
        "us/step raw asyncio chain",
        ratio=engine_s / raw_s,
        spread=spread,
        **judged,
    )


async def bench_map(
    quick: bool, folder: Path, items: int, concurrency: int, target: float, storage: str
) -> list[Row]:
    repeats = 1 if quick else 5
    ideal = -(-items // concurrency) * LATENCY
    raw_executor = ScriptedExecutor(latency_s=LATENCY)
    engine_times = await samples(
        lambda: engine_map(items, concurrency, LATENCY, storage, folder), repeats
    )
    raw_times = await samples(lambda: raw_fan_out(raw_executor, items, concurrency), repeats)
    engine_s, spread = median_spread(engine_times)
    raw_s, raw_spread = median_spread(raw_times)
    label = "durable SQLiteStorage" if storage == "sqlite" else "MemoryStorage"
    name = f"map {items} x 50 ms @{concurrency}"
    rows = [
        _row(
            f"{name}, {label}",
            engine_s,
            "s",
            ideal,
            "s ideal",
            target=f"<= {target:g}x ideal",
            holds=engine_s <= target * ideal,
            spread=spread,
        )
    ]
    if storage != "sqlite":
        rows.append(
            _row(
                f"{name}, raw asyncio fan-out (the machine's floor)",
                raw_s,
                "s",
                ideal,
                "s ideal",
                spread=raw_spread,
            )
        )
    return rows


async def bench_memory(folder: Path) -> Row:
    items, concurrency = 10_000, 500
    executor = ScriptedExecutor(latency_s=LATENCY)
    pipeline = fan_out(concurrency)
    inputs = {"items": list(range(items))}
    async with _engine(executor, "memory", folder) as engine:
        gc.collect()
        tracemalloc.start()
        await engine.run(pipeline, inputs)
        _, engine_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    await raw_fan_out(ScriptedExecutor(latency_s=LATENCY), items, concurrency)
    _, raw_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return _row(
        "peak memory, map 10000 x 50 ms @500, MemoryStorage",
        engine_peak / 2**20,
        "MiB (tracemalloc peak)",
        raw_peak / 2**20,
        "MiB raw asyncio fan-out",
    )


async def bench_scaling(quick: bool, folder: Path) -> list[Row]:
    rows: list[Row] = []
    repeats = 1 if quick else 3
    raw_executor = ScriptedExecutor()
    for size in (100, 1000, 10_000):
        engine_s, spread = median_spread(
            await samples(functools.partial(engine_chain, size, "memory", folder), repeats)
        )
        raw_s, _ = median_spread(
            await samples(functools.partial(raw_chain, raw_executor, size), repeats)
        )
        rows.append(
            _row(
                f"scaling: chain of {size} steps, MemoryStorage",
                engine_s / size * 1e6,
                "us/step",
                raw_s / size * 1e6,
                "us/step raw asyncio chain",
                spread=spread,
            )
        )
    for size in (100, 1000, 10_000):
        engine_s, spread = median_spread(
            await samples(functools.partial(engine_map, size, 100, 0.0, "memory", folder), repeats)
        )
        raw_s, _ = median_spread(
            await samples(functools.partial(raw_fan_out, raw_executor, size, 100), repeats)
        )
        rows.append(
            _row(
                f"scaling: map of {size} zero-latency items @100, MemoryStorage",
                engine_s / size * 1e6,
                "us/item",
                raw_s / size * 1e6,
                "us/item raw asyncio fan-out",
                spread=spread,
            )
        )
    return rows


def _otel_available() -> bool:
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True


def _sqlite_available() -> bool:
    try:
        import taskloom.adapters.sqlite  # noqa: F401
    except ImportError:
        return False
    return True


async def _all(quick: bool) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="taskloom-bench-") as tmp:
        folder = Path(tmp)
        rows.append(await bench_validate(quick))
        rows.append(await bench_chain(quick, folder, "none", 25))
        rows.append(await bench_chain(quick, folder, "memory", 25))
        rows.append(await bench_runstore_share(quick, rows[-1]))
        rows.append(await bench_chain(quick, folder, "memory", None, durability="sync"))
        if _otel_available():
            rows.append(await bench_telemetry(quick))
        rows += await bench_map(quick, folder, 1000, 1000, 1.15, "memory")
        rows += await bench_map(quick, folder, 10_000, 500, 1.2, "memory")
        rows.append(await bench_memory(folder))
        rows += await bench_scaling(quick, folder)
        if _sqlite_available():
            rows.append(await bench_chain(quick, folder, "sqlite", 150))
            rows += await bench_map(quick, folder, 10_000, 500, 1.25, "sqlite")
    return rows


def run(quick: bool) -> list[Row]:
    """Measure every row (``quick``: fewer repeats, for a run under a minute)."""
    return asyncio.run(_all(quick))


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_engine.json``."""
    return _timing.main(
        "bench_engine", __doc__, run, argv, quick_help="fewer repeats (under a minute)"
    )


if __name__ == "__main__":
    sys.exit(main())
