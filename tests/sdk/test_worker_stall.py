"""The stall test: a worker frozen past its lease (SIGSTOP) is taken over; woken (SIGCONT),
it starts no new call and none of its writes land.

Each trial: a worker process A claims a queued map run; once A has started a few
calls it is stopped with SIGSTOP. Worker B starts, finds the run's lease expired and
takes it over. Once B is calling, A gets SIGCONT. Calls are counted across both
processes through one shared calls file (see ``queue_worker.py``); stored outputs
name the process that produced them. Then:

- A starts 0 calls after waking (its count of started calls is what it was when
  stopped);
- every stored step output made by A comes from a call A finished *before* it was
  stopped (an in-flight call that finished after waking never lands);
- the run succeeds with every item's right output, and its event numbers are unique
  and gapless.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from durable_worker import open_storage
from fork_server import Forked, ForkServer
from queue_worker import EXECUTOR_ID, TaggedExecutor, digest, map_pipeline

from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk._runs.records import RunRecord
from taskloom.sdk._runs.store import RunStore

HERE = Path(__file__).resolve().parent
ITEMS = 40
STOP_ATTEMPTS = 20
TTL_S = 1.0
TRIALS = int(os.environ.get("TASKLOOM_STALL_TRIALS", "20"))


PRELOAD = ["taskloom.sdk", "taskloom.adapters.sqlite", "taskloom.adapters.filesystem"]
"""What the worker processes' fork server imports before it forks them."""


def fork_server() -> ForkServer:
    """A fork server for ``queue_worker.py`` processes: each worker a fork of one
    interpreter that imported everything once, not an interpreter start of its own."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return ForkServer(HERE / "queue_worker.py", PRELOAD, env)


def spawn(
    server: ForkServer,
    kind: str,
    store: Path,
    calls: Path,
    *,
    ttl: float = TTL_S,
    latency: float = 0.15,
) -> Forked:
    """Start one worker process (``queue_worker.py``) on ``store``."""
    return server.run(
        [
            "--kind",
            kind,
            "--store",
            str(store),
            "--calls",
            str(calls),
            "--ttl",
            str(ttl),
            "--latency",
            str(latency),
            "--concurrency",
            "1",
        ]
    )


def lines(calls: Path) -> list[tuple[str, int, str]]:
    """Every logged call event: (S or E, pid, tag)."""
    if not calls.exists():
        return []
    found = []
    for line in calls.read_text().splitlines():
        kind, pid, tag = line.split(" ", 2)
        found.append((kind, int(pid), tag))
    return found


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP took effect): state T in /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def _store_files(store: Path) -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file of the store: the SQLite database and its
    -wal/-shm/-journal files, or every file under a file store's directory."""
    if store.is_dir():
        paths = [p for p in store.rglob("*") if p.is_file()]
    else:
        paths = [
            store.with_name(store.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")
        ]
    found = set()
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        found.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    return found


def holds_store_lock(pid: int, store: Path) -> bool:
    """Whether process ``pid`` holds a lock that keeps other processes from writing the store
    (/proc/locks): any ``flock`` on a file store's lock files (its reader/writer lock is
    held only inside a storage call), or a POSIX write lock on a SQLite file (the writer's
    lock; the read locks SQLite keeps open block no writer). A process frozen holding one
    stalls every other process's writes, so no takeover can happen while it stays frozen."""
    files = _store_files(store)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":  # a waiter, not a holder
            continue
        kind, mode, holder, where = fields[1], fields[3], fields[4], fields[5]
        if holder != str(pid):
            continue
        major, minor, inode = where.split(":")
        if (int(major, 16), int(minor, 16), int(inode)) in files and (
            kind == "FLOCK" or mode == "WRITE"
        ):
            return True
    return False


def calling(calls: Path, pid: int) -> bool:
    """Whether process ``pid`` has started a call."""
    return starts(calls, pid) >= 1


def starts(calls: Path, pid: int) -> int:
    return sum(1 for kind, p, _t in lines(calls) if kind == "S" and p == pid)


async def submit(kind: str, store: Path, items: int) -> str:
    """Queue one map run of ``items`` items from this (the test's) process."""
    storage = await open_storage(kind, str(store))
    registry = ExecutorRegistry()
    registry.register(EXECUTOR_ID, TaggedExecutor(os.devnull, 0.0))
    try:
        async with Engine(storage=storage, registry=registry) as engine:
            inputs = {"items": [f"x{k}" for k in range(items)]}
            return await engine.submit(map_pipeline(items), inputs)
    finally:
        await storage.aclose()


async def read_run(
    kind: str, store: Path, run_id: str
) -> tuple[RunRecord, dict[str, Any], list[int]]:
    """The run's record, its map items' stored outputs by tag, and its event numbers."""
    storage = await open_storage(kind, str(store))
    try:
        async with RunStore(storage) as runs:
            record = await runs.load_run(run_id)
            steps = await runs.finished_steps(run_id)
            outputs = {
                f"item={item}": r.output for (sid, item), r in steps.items() if item is not None
            }
            numbers = [n for n, _e in await runs.events(run_id)]
            return record, outputs, numbers
    finally:
        await storage.aclose()


def wait_for(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def stop_all(*procs: Forked) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def one_trial(server: ForkServer, kind: str, root: Path) -> bool:
    """Run one stall trial; assert its invariants; return whether B took over."""
    root.mkdir(parents=True)
    store, calls = root / "store", root / "calls"
    run_id = asyncio.run(submit(kind, store, ITEMS))
    a = spawn(server, kind, store, calls)
    b: Forked | None = None
    try:
        assert wait_for(lambda: starts(calls, a.pid) >= 3, 60), "worker A never started calls"
        took_over = False
        for attempt in range(STOP_ATTEMPTS):
            os.kill(a.pid, signal.SIGSTOP)
            # the signal is delivered asynchronously: A may write a little more first
            assert wait_for(partial(stopped, a.pid), 10), "worker A did not stop"
            if attempt < STOP_ATTEMPTS - 1 and holds_store_lock(a.pid, store):
                # A was frozen inside a storage write, holding the store's write lock: no
                # takeover can happen while it stays frozen. Let it out and freeze it again
                # (without first waiting for a takeover that cannot come).
                os.kill(a.pid, signal.SIGCONT)
                time.sleep(0.05)
                continue
            frozen = lines(calls)
            a_started = sum(1 for k, p, _t in frozen if k == "S" and p == a.pid)
            a_done_before = {t for k, p, t in frozen if k == "E" and p == a.pid}
            started_b = b is None
            if b is None:
                # B's own lease is long: a stall of B on the store's lock must not hand the
                # run back to A (a legitimate re-claim, but not what this test is about)
                b = spawn(server, kind, store, calls, ttl=10.0)
            took_over = wait_for(partial(calling, calls, b.pid), 30 if started_b else 4)
            if took_over or attempt == STOP_ATTEMPTS - 1:
                break
            # A was frozen inside a storage write (holding the store's write lock, so B
            # could not take over): let it out of that, then freeze it again
            os.kill(a.pid, signal.SIGCONT)
            time.sleep(0.05)
        os.kill(a.pid, signal.SIGCONT)
        record: RunRecord | None = None

        def finished() -> bool:
            nonlocal record
            record = asyncio.run(read_run(kind, store, run_id))[0]
            return record.status in ("succeeded", "failed", "cancelled")

        assert wait_for(finished, 90, step=0.2), "the run never finished"
        time.sleep(0.3)  # let A wake fully: any call it were to start would show by now
        record, outputs, numbers = asyncio.run(read_run(kind, store, run_id))
        after = lines(calls)
        if took_over:
            assert starts(calls, a.pid) == a_started, "the stale worker started calls after waking"
        assert record.status == "succeeded", record.error
        assert numbers == list(range(1, len(numbers) + 1)), "event numbers not unique and gapless"
        for key, output in outputs.items():
            made, _, pid = str(output).partition("@")
            tag = f"{key}:x{key.split('=')[1]}"
            assert made == digest(f"{tag} | reply"), (tag, output)
            if int(pid) == a.pid and took_over:
                assert tag in a_done_before, f"{tag}: A's reply finished after its wake landed"
        assert len(record.output["items"]) == ITEMS
        duplicates = Counter(t for k, p, t in after if k == "S" and p == a.pid)
        assert all(n == 1 for n in duplicates.values())
        return took_over
    finally:
        stop_all(a, *([b] if b is not None else []))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_one_stall_trial(kind: str, tmp_path: Path) -> None:
    """One stall trial per storage kind (the slow test below runs many)."""
    with fork_server() as server:
        one_trial(server, kind, tmp_path / "t0")


@pytest.mark.slow
@pytest.mark.timeout(90 * TRIALS)
@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_stall_trials(kind: str, tmp_path: Path) -> None:
    """TASKLOOM_STALL_TRIALS (default 20) stall trials per storage kind, all clean; a
    takeover happened in every one."""
    with fork_server() as server:
        took = [one_trial(server, kind, tmp_path / f"t{i}") for i in range(TRIALS)]
    assert all(took), f"B took over in {sum(took)} of {TRIALS} trials"
