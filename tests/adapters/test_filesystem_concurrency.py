"""Several processes, each with many tasks, share one FileStorage root safely."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from taskloom.adapters.filesystem import FileStorage

WORKER = Path(__file__).with_name("fs_counter_worker.py")
COMMIT_WORKER = Path(__file__).with_name("fs_commit_worker.py")


def _run_workers(root: Path, processes: int, tasks: int, increments: int, counters: int) -> int:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(root),
                str(tasks),
                str(increments),
                str(counters),
                str(seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(processes)
    ]
    conflicts = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"worker failed with {proc.returncode}"
        conflicts += int(out)
    return conflicts


async def _total(root: Path, counters: int) -> int:
    async with FileStorage(root) as storage:
        records = await storage.scan("counters")
        assert len(records) <= counters
        return sum(int(r.value) for r in records)


def test_cas_counters_are_exact_across_processes(tmp_path: Path) -> None:
    """3 processes (racing to create the root) x 8 tasks x 25 CAS increments: exactly 600."""
    root = tmp_path / "store"
    conflicts = _run_workers(root, processes=3, tasks=8, increments=25, counters=3)
    assert asyncio.run(_total(root, 3)) == 3 * 8 * 25
    assert conflicts > 0, "no contention: the test did not exercise CAS"


@pytest.mark.slow
def test_cas_counters_are_exact_under_heavy_contention(tmp_path: Path) -> None:
    """4 processes x 16 tasks x 60 increments on one counter: the total is exactly 3840."""
    root = tmp_path / "store"
    _run_workers(root, processes=4, tasks=16, increments=60, counters=1)
    assert asyncio.run(_total(root, 1)) == 4 * 16 * 60


async def test_readers_in_another_process_never_see_half_a_commit(tmp_path: Path) -> None:
    """While a process commits 20 keys at a time, scans here see all or none of each commit."""
    root = tmp_path / "store"
    async with FileStorage(root, fsync=False) as storage:
        proc = subprocess.Popen(
            [sys.executable, str(COMMIT_WORKER), str(root), "100", "20"],
            stdout=subprocess.PIPE,
            text=True,
        )
        scans = 0
        try:
            while proc.poll() is None:
                records = await storage.scan("iso")
                values = {r.value for r in records}
                assert len(values) <= 1, f"a scan saw several commits at once: {sorted(values)}"
                assert len(records) in (0, 20), f"a scan saw {len(records)} of 20 keys"
                entries = await storage.read("iso")
                assert len(entries) % 2 == 0, "a read saw one of a commit's two entries"
                scans += 1
        finally:
            out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "done"
        assert scans > 5, "the writer finished before the reader could look"
        assert len(await storage.read("iso")) == 200
