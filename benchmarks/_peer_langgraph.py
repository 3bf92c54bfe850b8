"""LangGraph beside taskloom, on the same shapes, in the same run (group ``peer``).

Needs the ``bench`` extra (``pip install taskloom[bench]``: langgraph and
langgraph-checkpoint-sqlite); without it every row says so and nothing is measured.

Shapes, each timed as one ``ainvoke`` / ``engine.run`` of an already compiled
graph / loaded pipeline:

- a 1,000-step chain of zero-latency nodes, without checkpoints (LangGraph with no
  checkpointer; taskloom on MemoryStorage, its non-durable mode) and with them
  (LangGraph's ``AsyncSqliteSaver``; taskloom on ``SQLiteStorage``), each side in
  the same durability mode: ``durability="sync"`` on both (each checkpoint written
  before the next step) and, in full mode, ``"async"`` on both (LangGraph writes a
  checkpoint while the next step runs; taskloom queues it, commits in order, and
  reports success only once all are durable -- its default);
- a fan-out of 100 and 1,000 branches, each waiting 50 ms (LangGraph's ``Send``
  API into one node with a list reducer; taskloom's ``map`` with concurrency equal
  to the branches and a scripted executor with ``latency_s=0.05``), with SQLite
  checkpoints on both sides and without checkpoints on both sides.

The ratio is taskloom's figure over LangGraph's: below 1 means taskloom is
faster. There is no target; the rows inform.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import operator
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

from benchmarks._common import TaskloomBench, chain_pipeline, map_pipeline
from benchmarks._timing import Row, make_row, median_spread
from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import StorageAdapter

GROUP = "peer"
SKIPPED = "skipped: install taskloom[bench]"
CHAIN = 1_000
BRANCHES = (100, 1_000)
LATENCY_S = 0.05


def _available() -> bool:
    try:
        import langgraph.checkpoint.sqlite.aio
        import langgraph.graph  # noqa: F401
    except ImportError:
        return False
    return True


def _skipped_rows() -> list[Row]:
    names = [
        f"{CHAIN:,}-step chain, no checkpoints",
        f"{CHAIN:,}-step chain, SQLite checkpoints, durability=sync on both",
    ]
    for branches in BRANCHES:
        names.append(f"fan-out {branches:,} x 50 ms, SQLite checkpoints, durability=sync on both")
        names.append(f"fan-out {branches:,} x 50 ms, no checkpoints")
    return [
        make_row(GROUP, name, None, "-", None, "LangGraph", target=SKIPPED, spread=None)
        for name in names
    ]


# --- LangGraph's side ----------------------------------------------------------------------


class _ChainState(TypedDict):
    value: str


class _FanState(TypedDict, total=False):
    items: list[int]
    item: int
    results: Annotated[list[int], operator.add]


def _chain_graph(steps: int) -> Any:
    from langgraph.graph import END, START, StateGraph

    async def node(state: _ChainState) -> dict[str, str]:
        return {"value": "ok"}

    graph: Any = StateGraph(_ChainState)
    previous = START
    for i in range(steps):
        graph.add_node(f"s{i}", node)
        graph.add_edge(previous, f"s{i}")
        previous = f"s{i}"
    graph.add_edge(previous, END)
    return graph


def _fan_graph() -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    async def work(state: _FanState) -> dict[str, list[int]]:
        await asyncio.sleep(LATENCY_S)
        return {"results": [state["item"]]}

    def route(state: _FanState) -> list[Any]:  # a local name LangGraph could not resolve
        return [Send("work", {"item": i}) for i in state["items"]]

    graph: Any = StateGraph(_FanState)
    graph.add_node("work", work)
    graph.add_conditional_edges(START, route, ["work"])
    graph.add_edge("work", END)
    return graph


class _LangGraph:
    """Compiled graphs and a counter of thread ids (each checkpointed run is a new thread)."""

    def __init__(self, checkpointer: Any, durability: str = "sync") -> None:
        self.checkpointer = checkpointer
        self.durability = durability
        self.threads = 0
        self.compiled: dict[tuple[str, int], Any] = {}

    def graph(self, shape: str, size: int) -> Any:
        key = (shape, size)
        if key not in self.compiled:
            built = _chain_graph(size) if shape == "chain" else _fan_graph()
            self.compiled[key] = built.compile(checkpointer=self.checkpointer)
        return self.compiled[key]

    async def seconds(self, shape: str, size: int) -> float:
        graph = self.graph(shape, size)
        self.threads += 1
        config: dict[str, Any] = {"recursion_limit": size * 2 + 10}
        kwargs: dict[str, Any] = {}
        if self.checkpointer is not None:
            config["configurable"] = {"thread_id": f"bench-{self.threads}"}
            kwargs["durability"] = self.durability
        state: dict[str, Any] = (
            {"value": ""} if shape == "chain" else {"items": list(range(size)), "results": []}
        )
        start = time.perf_counter()
        out = await graph.ainvoke(state, config, **kwargs)
        elapsed = time.perf_counter() - start
        if shape == "fan" and len(out["results"]) != size:
            raise RuntimeError(f"LangGraph fan-out returned {len(out['results'])} of {size}")
        return elapsed


# --- side by side ----------------------------------------------------------------------------


async def _pair(
    ours: Callable[[], Awaitable[float]],
    theirs: Callable[[], Awaitable[float]],
    repeats: int,
    warmups: tuple[Callable[[], Awaitable[float]], Callable[[], Awaitable[float]]],
) -> tuple[list[float], list[float]]:
    """Interleaved samples after a warm-up of each side, alternating which side goes first,
    each after a full garbage collection.

    The warm-ups are a smaller shape (code paths, imports, connections), so that
    the quick mode does not spend a full run on them.
    """
    for warmup in warmups:
        await warmup()
    mine: list[float] = []
    peer: list[float] = []

    async def sample(side: Callable[[], Awaitable[float]], into: list[float]) -> None:
        gc.collect()  # the other side's garbage is not this sample's cost
        into.append(await side())

    for rep in range(repeats):
        if rep % 2:
            await sample(theirs, peer)
            await sample(ours, mine)
        else:
            await sample(ours, mine)
            await sample(theirs, peer)
    return mine, peer


def _peer_row(name: str, mine: list[float], peer: list[float], unit: str, peer_unit: str) -> Row:
    value, spread = median_spread(mine)
    base, peer_spread = median_spread(peer)
    return make_row(GROUP, name, value, unit, base, peer_unit, spread=max(spread, peer_spread))


async def _chain(
    label: str,
    storage: StorageAdapter,
    lang: _LangGraph,
    repeats: int,
    peer_label: str,
) -> Row:
    pipeline = chain_pipeline(CHAIN)
    small = chain_pipeline(CHAIN // 10)
    async with TaskloomBench(storage, durability=lang.durability) as bench:
        bench.engine.validate(pipeline)
        lang.graph("chain", CHAIN)
        mine, peer = await _pair(
            lambda: bench.seconds(pipeline),
            lambda: lang.seconds("chain", CHAIN),
            repeats,
            (lambda: bench.seconds(small), lambda: lang.seconds("chain", CHAIN // 10)),
        )
    per_step = 1e6 / CHAIN
    return _peer_row(
        f"{CHAIN:,}-step chain, {label}",
        [s * per_step for s in mine],
        [s * per_step for s in peer],
        f"us/step on {type(storage).__name__}",
        f"us/step LangGraph {peer_label}",
    )


async def _fan(
    label: str,
    storage: StorageAdapter,
    lang: _LangGraph,
    branches: int,
    repeats: int,
    peer_label: str,
) -> Row:
    pipeline = map_pipeline(branches)
    inputs = {"items": list(range(branches))}
    small = map_pipeline(10)
    async with TaskloomBench(storage, latency_s=LATENCY_S, durability=lang.durability) as bench:
        bench.engine.validate(pipeline, inputs)
        mine, peer = await _pair(
            lambda: bench.seconds(pipeline, inputs),
            lambda: lang.seconds("fan", branches),
            repeats,
            (
                lambda: bench.seconds(small, {"items": list(range(10))}),
                lambda: lang.seconds("fan", 10),
            ),
        )
    return _peer_row(
        f"fan-out {branches:,} x 50 ms, {label}",
        mine,
        peer,
        f"s wall on {type(storage).__name__}",
        f"s wall LangGraph {peer_label}",
    )


async def _bench(quick: bool, directory: Path) -> list[Row]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    repeats = 3 if quick else 5
    version = importlib.metadata.version("langgraph")
    bare = _LangGraph(None, durability="async")  # LangGraph: no checkpointer; taskloom: default
    rows = [await _chain("no checkpoints", MemoryStorage(), bare, repeats, f"{version}")]

    async def sqlite(name: str) -> StorageAdapter:
        return await SQLiteStorage.open(directory / f"{name}.db", purge_interval_s=None)

    async with AsyncSqliteSaver.from_conn_string(str(directory / "langgraph.db")) as saver:
        durable = _LangGraph(saver, durability="sync")
        saver_label = f"{version} AsyncSqliteSaver, durability=sync"
        rows.append(
            await _chain(
                "SQLite checkpoints, durability=sync on both",
                await sqlite("chain"),
                durable,
                repeats,
                saver_label,
            )
        )
        if not quick:
            default = _LangGraph(saver, durability="async")
            rows.append(
                await _chain(
                    "SQLite checkpoints, durability=async on both (both defaults)",
                    await sqlite("chain-async"),
                    default,
                    repeats,
                    f"{version} AsyncSqliteSaver, durability=async",
                )
            )
        for branches in BRANCHES:
            rows.append(
                await _fan(
                    "SQLite checkpoints, durability=sync on both",
                    await sqlite(f"fan{branches}"),
                    durable,
                    branches,
                    repeats,
                    saver_label,
                )
            )
            rows.append(
                await _fan("no checkpoints", MemoryStorage(), bare, branches, repeats, version)
            )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure taskloom beside LangGraph; rows say 'skipped' when LangGraph is missing."""
    if not _available():
        return _skipped_rows()
    with tempfile.TemporaryDirectory(prefix="taskloom-bench-peer-") as directory:
        return asyncio.run(_bench(quick, Path(directory)))
