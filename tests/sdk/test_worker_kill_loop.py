"""The kill loop: three worker processes on one SQLite store, many submitted map runs, a
random worker SIGKILLed every few seconds and restarted.

Every run must end succeeded with the right output, no map item may execute in two
live workers at once, and every run's event history must be gapless. 500 runs by
default (TASKLOOM_KILL_LOOP_RUNS sets another count): about 45 s on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from durable_worker import open_storage
from fork_server import Forked
from queue_worker import EXECUTOR_ID, TaggedExecutor, digest, map_pipeline
from test_worker_stall import fork_server, lines, spawn

from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk._runs.records import RunRecord
from taskloom.sdk._runs.store import RunStore

RUNS = int(os.environ.get("TASKLOOM_KILL_LOOP_RUNS", "500"))
ITEMS = 4
WORKERS = 3
DEADLINE_S = 60 + RUNS * 3


async def submit_all(store: Path) -> dict[str, list[str]]:
    """Queue RUNS map runs; return each run's items."""
    storage = await open_storage("sqlite", str(store))
    registry = ExecutorRegistry()
    registry.register(EXECUTOR_ID, TaggedExecutor(os.devnull, 0.0))
    runs: dict[str, list[str]] = {}
    try:
        async with Engine(storage=storage, registry=registry) as engine:
            await engine.define_queue("default", max_claims=1000)  # kills are not poison
            for r in range(RUNS):
                items = [f"r{r}i{i}" for i in range(ITEMS)]
                run_id = await engine.submit(map_pipeline(ITEMS, concurrency=2), {"items": items})
                runs[run_id] = items
    finally:
        await storage.aclose()
    return runs


async def read_all(store: Path, run_ids: list[str]) -> dict[str, tuple[RunRecord, list[int]]]:
    storage = await open_storage("sqlite", str(store))
    try:
        async with RunStore(storage) as runs:
            found = {}
            for run_id in run_ids:
                record = await runs.load_run(run_id)
                numbers = (
                    [n for n, _e in await runs.events(run_id)]
                    if record.status == "succeeded"
                    else []
                )
                found[run_id] = (record, numbers)
            return found
    finally:
        await storage.aclose()


def overlaps(calls: Path) -> list[str]:
    """Calls of one item that ran in two processes at once, both alive (a kill ends
    the calls of the killed process: the test logs ``K <pid>`` once it is dead)."""
    open_calls: dict[tuple[int, str], int] = {}
    intervals: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    events = lines(calls)
    for index, (kind, pid, tag) in enumerate(events):
        if kind == "S":
            open_calls[(pid, tag)] = index
        elif kind == "E":
            start = open_calls.pop((pid, tag), None)
            if start is not None:
                intervals[tag].append((start, index, pid))
        elif kind == "K":
            for key in [k for k in open_calls if k[0] == pid]:
                intervals[key[1]].append((open_calls.pop(key), index, pid))
    for (pid, tag), start in open_calls.items():
        intervals[tag].append((start, len(events), pid))
    bad = []
    for tag, spans in intervals.items():
        spans.sort()
        for i, (s1, e1, p1) in enumerate(spans):
            for s2, _e2, p2 in spans[i + 1 :]:
                if s2 >= e1:
                    break
                if p1 != p2:
                    bad.append(f"{tag}: pid {p1} [{s1},{e1}) and pid {p2} from {s2}")
    return bad


def kill(proc: Forked, calls: Path) -> None:
    proc.kill()
    proc.wait()
    with open(calls, "a") as fh:  # the killed process's calls end here
        fh.write(f"K {proc.pid} -\n")


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 300)
def test_kill_loop_every_run_succeeds_once(tmp_path: Path) -> None:
    """Random SIGKILLs of 3 workers: all runs succeed with right outputs, no item runs in two
    live workers at once, every history is gapless."""
    store, calls = tmp_path / "store.db", tmp_path / "calls"
    runs = asyncio.run(submit_all(store))
    rng = random.Random(19)
    server = fork_server()
    procs = [spawn(server, "sqlite", store, calls, ttl=1.0, latency=0.05) for _ in range(WORKERS)]
    kills = 0
    try:
        deadline = time.monotonic() + DEADLINE_S
        next_kill = time.monotonic() + rng.uniform(1.5, 4.0)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if time.monotonic() >= next_kill:
                victim = rng.randrange(WORKERS)
                kill(procs[victim], calls)
                kills += 1
                procs[victim] = spawn(server, "sqlite", store, calls, ttl=1.0, latency=0.05)
                next_kill = time.monotonic() + rng.uniform(1.5, 4.0)
            found = asyncio.run(read_all(store, list(runs)))
            if all(
                rec.status in ("succeeded", "failed", "cancelled") for rec, _n in found.values()
            ):
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.close()
    found = asyncio.run(read_all(store, list(runs)))
    unfinished = [r for r, (rec, _n) in found.items() if rec.status != "succeeded"]
    assert not unfinished, f"{len(unfinished)} runs not succeeded after {kills} kills"
    for run_id, (record, numbers) in found.items():
        assert numbers == list(range(1, len(numbers) + 1)), run_id
        outputs = [str(o).partition("@")[0] for o in record.output["items"]]
        expected = [digest(f"item={i}:{item} | reply") for i, item in enumerate(runs[run_id])]
        assert outputs == expected, run_id
    assert not overlaps(calls)
    assert kills >= 1
    print(f"kill loop: {len(runs)} runs, {kills} kills")
