"""Crash tests: a real worker process is SIGKILLed at random moments and resumed until done.

The worker (``durable_worker.py``) runs a pipeline with sequential, parallel and
map steps on SQLiteStorage or FileStorage; its executor appends one fsync'd line
per completed call to a calls file. After every kill the test reads the run's
checkpoints from storage. It then checks, for every attempt, that no call was
made for a step or map item that had been checkpointed before that attempt
began (a re-executed call is one that was in flight, unrecorded, at a kill),
and that the final output equals the output of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
from durable_worker import EXECUTOR_ID, CountingExecutor, build_job
from fork_server import ForkServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runstore_support import storage_class

from taskloom.contracts import RunSucceeded, StorageAdapter, Usage
from taskloom.sdk._engine.window import DEFAULT_LIMIT
from taskloom.sdk._runs.records import total_usage
from taskloom.sdk._runs.store import RunStore

WORKER = Path(__file__).resolve().parent / "durable_worker.py"
PRELOAD = ["taskloom.sdk", "taskloom.adapters.sqlite", "taskloom.adapters.filesystem"]
"""What the worker processes' fork server imports before it forks them."""
KINDS = ("sqlite", "filesystem")
Key = tuple[str, int | None]


def _parse_call(line: str) -> Key:
    step, item = line.split()
    assert step.startswith("step=") and item.startswith("item=")
    raw = item.removeprefix("item=")
    return step.removeprefix("step="), None if raw == "-" else int(raw)


def expected_calls(job: dict[str, Any]) -> set[Key]:
    """Every leaf call an uninterrupted run of ``job`` makes, once each."""
    keys: set[Key] = set()
    for step in job["pipeline"]["steps"]:
        if "parallel" in step:
            keys.update((child["id"], None) for child in step["parallel"])
        elif "map" in step:
            keys.update((step["id"], i) for i in range(len(job["inputs"]["items"])))
        else:
            keys.add((step["id"], None))
    return keys


def reference_output(job: dict[str, Any]) -> Any:
    """The output of the same job run without interruption, in this process, in memory."""
    from taskloom.sdk import Engine, ExecutorRegistry

    async def go() -> Any:
        registry = ExecutorRegistry()
        registry.register(EXECUTOR_ID, CountingExecutor(None, latency_s=(0.0, 0.0)))
        async with Engine(registry=registry) as engine:
            result = await engine.run(job["pipeline"], job["inputs"])
        return result.output

    return asyncio.run(go())


async def _open(kind: str, location: str) -> StorageAdapter:
    cls = storage_class(kind)
    storage: StorageAdapter = cls(location)
    return storage


def read_checkpoints(kind: str, location: str, run_id: str) -> set[Key]:
    """Keys of the run's durable checkpoints, read by a fresh adapter (a new process's view)."""

    async def go() -> set[Key]:
        storage = await _open(kind, location)
        try:
            async with RunStore(storage) as store:
                return set(await store.finished_steps(run_id))
        finally:
            await storage.aclose()

    return asyncio.run(go()) if run_id else set()


@attrs.define
class Attempt:
    """One worker process: what was checkpointed before it began, what it called, how it ended."""

    checkpointed_before: set[Key]
    calls: list[Key]
    killed: bool


@attrs.define
class CrashRun:
    """Everything a crash-and-resume session produced."""

    attempts: list[Attempt]
    result: dict[str, Any]
    run_id: str
    location: str


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def crash_and_resume(
    kind: str, workdir: Path, job: dict[str, Any], *, kills: int, rng: random.Random
) -> CrashRun:
    """Run the job in worker processes, SIGKILLing the first ``kills`` of them mid-run."""
    location = str(workdir / ("store.db" if kind == "sqlite" else "store"))
    job_file, calls, run_id_file, result_file = (
        workdir / "job.json",
        workdir / "calls.log",
        workdir / "run_id",
        workdir / "result.json",
    )
    job_file.write_text(json.dumps(job))
    total = len(expected_calls(job))
    attempts: list[Attempt] = []
    checkpointed: set[Key] = set()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # Every attempt is a process of its own, forked from one that imported everything
    # once: dozens of attempts per test would otherwise each start an interpreter.
    with ForkServer(WORKER, PRELOAD, env) as server:
        for n in range(kills + 1):
            before = len(_lines(calls))
            proc = server.run(
                [
                    "--kind",
                    kind,
                    "--store",
                    location,
                    "--job",
                    str(job_file),
                    "--calls",
                    str(calls),
                    "--run-id-file",
                    str(run_id_file),
                    "--result",
                    str(result_file),
                    "--holder",
                    f"worker-{n}",
                    "--lease-ttl",
                    "0.4",
                    "--seed",
                    str(rng.randrange(2**32)),
                ]
            )
            killed = False
            if n < kills:
                remaining = max(1, total - len(checkpointed))
                # Mostly kill after a random number of this attempt's calls, spread so that the
                # remaining kills fit in the remaining work (mid-run, often mid-checkpoint);
                # sometimes before any call (during startup or lease takeover).
                share = max(1, remaining // (kills - n + 1))
                target = 0 if rng.random() < 0.1 else rng.randint(1, share)
                deadline = time.monotonic() + 30
                while (
                    proc.poll() is None
                    and len(_lines(calls)) < before + target
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.004))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
            returncode = proc.wait(timeout=60)
            assert killed or returncode == 0, f"worker {n} exited with {returncode}"
            attempt_calls = [_parse_call(line) for line in _lines(calls)[before:]]
            attempts.append(Attempt(checkpointed, attempt_calls, killed))
            run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
            checkpointed = read_checkpoints(kind, location, run_id)
            if result_file.exists():
                break
        else:
            pytest.fail(f"the run did not finish after {kills} kills and a final attempt")
    result = json.loads(result_file.read_text())
    return CrashRun(attempts=attempts, result=result, run_id=result["run_id"], location=location)


def rerun_bound(job: dict[str, Any]) -> int:
    """The most calls one crash may re-run (README, "The re-run bound"): with
    durability="sync" only those in flight (the widest concurrency in the job), with
    "async" the run's checkpoint window: DEFAULT_LIMIT plus that widest concurrency."""
    widths = [1]
    for step in job["pipeline"]["steps"]:
        if "parallel" in step:
            widths.append(len(step["parallel"]))
        elif "map" in step:
            widths.append(min(step.get("concurrency", 1), len(job["inputs"]["items"])))
    if job.get("durability", "async") == "async":
        return DEFAULT_LIMIT + max(widths)
    return max(widths)


def rerun_per_kill(run: CrashRun) -> list[int]:
    """For each killed attempt: how many of the calls it completed had no durable checkpoint
    when it died (each of them runs again)."""
    lost: list[int] = []
    for attempt, after in zip(run.attempts, run.attempts[1:], strict=False):
        if attempt.killed:
            lost.append(len(set(attempt.calls) - after.checkpointed_before))
    return lost


def check_crash_run(kind: str, job: dict[str, Any], run: CrashRun) -> None:
    """The final output is the uninterrupted one, no checkpointed work ran again, and no kill
    re-ran more than the stated bound."""
    assert run.result["status"] == "succeeded"
    bound = rerun_bound(job)
    lost = rerun_per_kill(run)
    assert max(lost, default=0) <= bound, (
        f"a kill lost {max(lost)} finished calls (bound {bound}, durability "
        f"{job.get('durability', 'async')}); per kill: {lost}"
    )
    assert run.result["output"] == reference_output(job)
    leaves = expected_calls(job)
    counts: Counter[Key] = Counter()
    for number, attempt in enumerate(run.attempts):
        repeated = [key for key in attempt.calls if key in attempt.checkpointed_before]
        assert not repeated, (
            f"attempt {number} re-ran checkpointed work {repeated[:5]} "
            f"({len(attempt.checkpointed_before)} checkpoints before it)"
        )
        within = [key for key, c in Counter(attempt.calls).items() if c > 1]
        assert not within, f"attempt {number} called {within[:5]} more than once"
        assert set(attempt.calls) <= leaves
        counts.update(attempt.calls)
    assert set(counts) == leaves, "every leaf was called at least once"
    # Calls beyond the first were in flight (unrecorded) at a kill: at most one per kill.
    extra = sum(counts.values()) - len(leaves)
    assert extra <= sum(len(a.calls) for a in run.attempts if a.killed)

    async def inspect() -> None:
        storage = await _open(kind, run.location)
        try:
            async with RunStore(storage) as store:
                record = await store.load_run(run.run_id)
                assert record.status == "succeeded"
                assert record.output == run.result["output"]
                done = await store.finished_steps(run.run_id)
                assert leaves <= set(done)
                # every completed call was paid: a re-run one counts again (when its first
                # run's event reached storage), never less than one call per leaf
                paid = sum((done[key].usage for a in run.attempts for key in a.calls), Usage())
                once = total_usage(done[key] for key in leaves)
                assert once.total_tokens <= record.usage.total_tokens <= paid.total_tokens
                events = await store.events(run.run_id)
                assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
                assert isinstance(events[-1][1], RunSucceeded)
        finally:
            await storage.aclose()

    asyncio.run(inspect())


@pytest.mark.parametrize("durability", ["async", "sync"])
@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_and_resume_never_repeats_checkpointed_work(
    kind: str, durability: str, tmp_path: Path
) -> None:
    """10 SIGKILLs at random moments, in either durability mode: uninterrupted output, no
    checkpointed call repeated."""
    job = build_job(seq=3, par=3, items=64, concurrency=6, seed="crash")
    job["durability"] = durability
    rng = random.Random(f"crash-{kind}-{durability}")
    run = crash_and_resume(kind, tmp_path, job, kills=10, rng=rng)
    assert sum(a.killed for a in run.attempts) >= 8, "most attempts must really be killed"
    check_crash_run(kind, job, run)


@pytest.mark.usefixtures("postgres_dsn")
def test_sigkill_and_resume_on_postgres(tmp_path: Path) -> None:
    """The same 10 SIGKILLs with worker processes sharing one PostgreSQL store: uninterrupted
    output, no checkpointed call repeated."""
    job = build_job(seq=3, par=3, items=64, concurrency=6, seed="crash")
    run = crash_and_resume("postgres", tmp_path, job, kills=10, rng=random.Random("crash-pg"))
    assert sum(a.killed for a in run.attempts) >= 8, "most attempts must really be killed"
    check_crash_run("postgres", job, run)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
def test_fifty_sigkills_per_storage_kind_hold_the_rerun_bound(
    kind: str, durability: str, tmp_path: Path
) -> None:
    """25 SIGKILLs per durability mode, 50 per storage kind, at random moments of a run with
    a wide map: every kill re-runs at most the stated bound of real executor calls (sync:
    only those in flight; async: 256 plus the widest concurrency), counted across processes."""
    job = build_job(seq=2, par=4, items=300, concurrency=24, seed=f"bound-{durability}")
    job["durability"] = durability
    rng = random.Random(f"bound-{kind}-{durability}")
    run = crash_and_resume(kind, tmp_path, job, kills=25, rng=rng)
    assert sum(a.killed for a in run.attempts) >= 22, "most attempts must really be killed"
    check_crash_run(kind, job, run)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_many_sigkills_on_a_bigger_run(kind: str, tmp_path: Path) -> None:
    """40 SIGKILLs on a run with 200 map items: still the same output, still no repeats."""
    job = build_job(seq=4, par=4, items=200, concurrency=16, seed="slow")
    run = crash_and_resume(kind, tmp_path, job, kills=40, rng=random.Random(f"slow-{kind}"))
    check_crash_run(kind, job, run)


_jobs = st.builds(
    build_job,
    seq=st.integers(1, 3),
    par=st.integers(0, 3),
    items=st.integers(0, 20),
    concurrency=st.integers(1, 6),
    seed=st.text("abc", min_size=1, max_size=4),
)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    job=_jobs,
    kind=st.sampled_from(KINDS),
    kills=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_pipelines_and_kill_points(
    job: dict[str, Any], kind: str, kills: int, seed: int
) -> None:
    """Random pipelines killed at random points resume to the uninterrupted output, no repeats."""
    with tempfile.TemporaryDirectory(prefix="taskloom-crash-") as workdir:
        run = crash_and_resume(kind, Path(workdir), job, kills=kills, rng=random.Random(seed))
        check_crash_run(kind, job, run)
