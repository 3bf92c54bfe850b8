"""Engine overhead and fan-out efficiency, each figure beside a baseline from the same run.

Rows (``run(quick)`` returns them; ``python -m benchmarks.bench_engine [--quick]``
prints a table and writes ``benchmarks/results/bench_engine.json``):

- ``chain 1000``: a chain of 1,000 zero-latency scripted LLM steps through
  ``engine.run``, beside a raw asyncio loop making the same 1,000 executor calls
  (same requests, no engine). Value: engine time minus raw time, per step
  (target <= 25 us); once with no storage, once with the default MemoryStorage
  (every step checkpointed and every event stored through the RunStore).
- ``chain, MemoryStorage, telemetry on``: the same chain's overhead per step with
  OpenTelemetry on (SimpleSpanProcessor + in-memory span exporter, in-memory metric
  reader) against off, interleaved in the same run, in CPU time (target <= 1.3x);
  beside it the
  OpenTelemetry SDK's own cost for the same two spans and three histogram points per
  step with no taskloom code, and the least ratio that floor allows; and the same
  comparison where each step is a real HTTP call (the OpenAI-compatible executor
  against a local server answering at once), as taskloom's whole CPU per step.
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


def _in_memory_telemetry() -> tuple[Any, Any]:
    """A Telemetry, and its tracer provider, whose spans go to the SDK's in-memory
    exporter through a SimpleSpanProcessor (each span exported as it ends, in the
    caller's thread, so the clock sees all of its cost), and metrics to an in-memory
    reader."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from taskloom.sdk._telemetry.tracing import Telemetry

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return Telemetry(tracer_provider=provider, meter_provider=meters), provider


async def _cpu_timed(run: Callable[[], Awaitable[Any]]) -> float:
    """CPU seconds of this process (all its threads) during one awaited ``run()``: on a
    machine shared with other work this moves far less than wall time, and nothing
    here waits (zero-latency executor), so on a quiet machine the two agree."""
    gc.collect()
    start = time.process_time()
    await run()
    return time.process_time() - start


async def engine_chain_traced(steps: int, telemetry: bool) -> float:
    """CPU seconds of a chain on MemoryStorage with telemetry on or off (flushed)."""
    executor = ScriptedExecutor()
    pipeline = chain(steps)
    traced, provider = _in_memory_telemetry() if telemetry else (False, None)
    async with _engine(executor, "memory", Path("."), telemetry=traced) as engine:
        engine.validate(pipeline)

        async def go() -> None:
            await engine.run(pipeline)
            if provider is not None:  # spans still queued in a processor count too
                provider.force_flush()

        return await _cpu_timed(go)


async def raw_chain_cpu(executor: ScriptedExecutor, steps: int) -> float:
    async def go() -> None:
        for _ in range(steps):
            await executor.complete(_request("next"))

    return await _cpu_timed(go)


def sdk_floor(steps: int) -> float:
    """CPU seconds the OpenTelemetry SDK alone takes for the telemetry of ``steps`` chain
    steps, on the same providers as the telemetry row and with no taskloom code: per
    step a step span made current, a CLIENT chat span started with the request's GenAI
    attributes and given the reply's, and the three histogram points of one call."""
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind

    telemetry, _ = _in_memory_telemetry()
    tracer = telemetry.tracer
    common = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "scripted"}
    reply = {
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 1,
        "gen_ai.usage.output_tokens": 1,
    }
    inputs = {**common, "gen_ai.token.type": "input"}
    outputs = {**common, "gen_ai.token.type": "output"}
    with tracer.start_as_current_span("taskloom.run floor"):
        gc.collect()
        start = time.process_time()
        for index in range(steps):
            step_id = f"s{index}"
            step = tracer.start_span(f"taskloom.step {step_id}", attributes={"step": step_id})
            token = context.attach(trace.set_span_in_context(step))
            chat = tracer.start_span("chat", kind=SpanKind.CLIENT, attributes=common)
            chat.set_attributes(reply)
            telemetry.duration.record(0.0001, common)
            telemetry.token_usage.record(1, inputs)
            telemetry.token_usage.record(1, outputs)
            chat.end()
            context.detach(token)
            step.end()
        return time.process_time() - start


async def bench_telemetry(quick: bool) -> list[Row]:
    """Engine overhead per step with telemetry on (in-memory exporter) against off, and
    what the OpenTelemetry SDK alone costs per step, all in the same run, in CPU time."""
    steps = 300 if quick else 1000
    repeats = 5 if quick else 9
    raw_executor = ScriptedExecutor()
    on: list[float] = []
    off: list[float] = []
    raw: list[float] = []
    floor: list[float] = []
    await engine_chain_traced(steps, True)  # warm-up: the SDK's first spans and points
    sdk_floor(steps)
    for _ in range(repeats):  # interleaved, so a busy moment hits all four alike
        off.append(await engine_chain_traced(steps, False))
        on.append(await engine_chain_traced(steps, True))
        raw.append(await raw_chain_cpu(raw_executor, steps))
        floor.append(sdk_floor(steps))
    on_s, spread = median_spread(on)
    off_s, _ = median_spread(off)
    raw_s, _ = median_spread(raw)
    floor_s, floor_spread = median_spread(floor)
    on_us = (on_s - raw_s) / steps * 1e6
    off_us = (off_s - raw_s) / steps * 1e6
    floor_us = floor_s / steps * 1e6
    ratio = on_us / off_us if off_us > 0 else float("inf")
    return [
        _row(
            "chain, MemoryStorage, telemetry on (SimpleSpanProcessor + in-memory exporter, "
            "in-memory metric reader): overhead per step",
            on_us,
            "us CPU/step above raw",
            off_us,
            "us CPU/step above raw, telemetry off",
            ratio=ratio,
            spread=spread,
            target="<= 1.3x telemetry off",
            holds=ratio <= 1.3,
        ),
        _row(
            "OpenTelemetry SDK alone per step: 2 spans + 3 histogram points, same "
            "providers, no taskloom (ratio: the least telemetry on/off it allows)",
            floor_us,
            "us CPU/step",
            off_us,
            "us CPU/step engine overhead, telemetry off",
            ratio=(off_us + floor_us) / off_us if off_us > 0 else float("inf"),
            spread=floor_spread,
        ),
    ]


async def http_chain_traced(url: str, steps: int, telemetry: bool) -> float:
    """CPU seconds of this process for a chain of ``steps`` steps on the OpenAI-compatible
    executor against the executors benchmark's server (a child process answering at
    once), with telemetry on or off: taskloom's whole cost per LLM step."""
    from taskloom.adapters.openai import OpenAIExecutor
    from taskloom.contracts import Secret

    registry = ExecutorRegistry()
    executor = OpenAIExecutor(
        base_url=f"{url}/v1",
        api_key=Secret("sk-bench"),
        max_tokens_field="max_tokens",
        model="bench-model",
    )
    registry.register("scripted", executor)  # the chain's steps name no executor
    traced, provider = _in_memory_telemetry() if telemetry else (False, None)
    engine = Engine(registry=registry, storage="memory", telemetry=traced)
    pipeline = chain(steps)
    try:
        await engine.open()
        engine.validate(pipeline)
        await engine.run(chain(5))  # warm: the connection is open before the clock

        async def go() -> None:
            await engine.run(pipeline)
            if provider is not None:
                provider.force_flush()

        return await _cpu_timed(go)
    finally:
        await engine.aclose()
        await executor.aclose()


async def bench_telemetry_http(quick: bool) -> Row:
    """Telemetry on against off where a step is a real HTTP call (local server, instant
    replies): the same two spans and three points, beside all of taskloom's CPU per step."""
    from benchmarks.bench_executors import Server

    steps = 100 if quick else 300
    repeats = 5 if quick else 9
    server = Server(0.0)
    try:
        await http_chain_traced(server.url, steps, True)  # warm-up
        on: list[float] = []
        off: list[float] = []
        for _ in range(repeats):
            off.append(await http_chain_traced(server.url, steps, False))
            on.append(await http_chain_traced(server.url, steps, True))
    finally:
        server.close()
    on_s, spread = median_spread(on)
    off_s, _ = median_spread(off)
    return _row(
        "chain on the OpenAI-compatible executor (local server, instant replies), telemetry "
        "on (as above) against off: taskloom's whole CPU per step, engine and HTTP call",
        on_s / steps * 1e6,
        "us CPU/step, telemetry on",
        off_s / steps * 1e6,
        "us CPU/step, telemetry off",
        spread=spread,
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
            rows += await bench_telemetry(quick)
            rows.append(await bench_telemetry_http(quick))
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
