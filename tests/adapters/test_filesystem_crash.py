"""FileStorage survives SIGKILL: acknowledged writes stay, commits stay whole, streams gapless.

``fs_crash_worker.py`` runs as a zygote that forks writer processes; each writer
runs concurrent tasks of puts, appends and four-operation commits against one
root, printing every acknowledged operation. Two writers share the root at a
time; the test kills both with SIGKILL at random moments, reaps them, reopens
the root and checks everything acknowledged by all writers so far.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from crash_zygote import Zygote

from taskloom.adapters.filesystem import FileStorage

WORKER = Path(__file__).with_name("fs_crash_worker.py")
TASKS_PER_WRITER = 4
TASKS = 2 * TASKS_PER_WRITER
TOKEN = re.compile(r"\d{4}-\d{8}")
COMMIT_PAYLOAD = re.compile(r"\d:\d{4}-\d{8}")


class _Expected:
    """What the acknowledgements promise, accumulated over every kill so far."""

    def __init__(self) -> None:
        self.puts: dict[str, str] = {}
        self.entries: dict[str, dict[int, str]] = {}
        self.commits: dict[int, str] = {}
        self.acks = 0

    def absorb(self, text: str) -> None:
        for line in text.splitlines(keepends=True):
            # A line cut short by the kill was never fully acknowledged.
            if not line.endswith("\n") or line == "started\n":
                continue
            words = line.split()
            self.acks += 1
            if words[0] == "P":
                self.puts[words[1]] = max(self.puts.get(words[1], ""), words[2])
            elif words[0] == "A":
                self.entries.setdefault(words[1], {})[int(words[2])] = words[3]
            else:
                task, token = words[1].split(":")
                self.entries.setdefault("cs", {})[int(words[2])] = words[1]
                self.commits[int(task)] = max(self.commits.get(int(task), ""), token)


async def _check(root: Path, expected: _Expected) -> None:
    async with FileStorage(root) as storage:
        for key, value in expected.puts.items():
            record = await storage.get("kv", key)
            assert record is not None, f"acknowledged put of {key} is lost"
            assert record.value.decode() >= value, f"{key} went back from {value}"
        streams = {f"s-{t}" for t in range(TASKS)} | {"cs"}
        contents: dict[str, list[str]] = {}
        for stream in sorted(streams):
            entries = await storage.read(stream)
            assert [e.seq for e in entries] == list(range(1, len(entries) + 1)), (
                f"stream {stream} has gaps: {[e.seq for e in entries]}"
            )
            contents[stream] = [e.payload.decode() for e in entries]
            shape = COMMIT_PAYLOAD if stream == "cs" else TOKEN
            torn = [p for p in contents[stream] if not shape.fullmatch(p)]
            assert not torn, f"stream {stream} returned entries no writer wrote: {torn[:3]}"
            for seq, payload in expected.entries.get(stream, {}).items():
                assert seq <= len(entries), f"acknowledged entry {stream}#{seq} is lost"
                assert contents[stream][seq - 1] == payload, f"{stream}#{seq} changed"
            if stream != "cs":
                assert contents[stream] == sorted(set(contents[stream])), (
                    f"stream {stream} repeats or reorders entries"
                )
        for task in range(TASKS):
            a = await storage.get("kv", f"ca-{task}")
            b = await storage.get("kv", f"cb-{task}")
            d = await storage.get("kv", f"cd-{task}")
            mine = [p.split(":")[1] for p in contents["cs"] if p.startswith(f"{task}:")]
            if a is None:
                assert b is None and d is None and not mine, f"task {task}: half a commit"
                assert task not in expected.commits, f"task {task}: acknowledged commit lost"
                continue
            token = a.value.decode()
            assert b is not None and b.value.decode() == token, f"task {task}: ca/cb differ"
            assert mine and mine[-1] == token, f"task {task}: commit {token} lacks its entry"
            if int(token.split("-")[1]) % 2:
                assert d is not None and d.value.decode() == token, f"task {task}: cd missing"
            else:
                assert d is None, f"task {task}: cd not deleted by {token}"
            assert token >= expected.commits.get(task, ""), f"task {task}: commit lost"


def _crash_many(tmp_path: Path, rounds: int, *, fsync: bool, seed: int) -> _Expected:
    """Each round runs two writers on disjoint tasks at once and kills both, one after the other.

    While the first lies dead (perhaps holding a half-applied commit's journal)
    the second keeps writing, so it must roll that journal forward itself.
    """
    rng = random.Random(seed)
    root = tmp_path / "store"
    expected = _Expected()
    zygote = Zygote(WORKER)
    try:
        for round_ in range(1, rounds + 1):
            pids: list[tuple[int, Path]] = []
            for writer in range(2):
                run = 2 * round_ - 1 + writer
                ackfile = tmp_path / f"acks-{run}.txt"
                command = (
                    f"run {root} {ackfile} {run} {rng.randrange(2**32)} {int(fsync)} "
                    f"{writer * TASKS_PER_WRITER}"
                )
                pids.append((int(zygote.command(command)), ackfile))
            time.sleep(rng.uniform(0.005, 0.25))
            for index, (pid, ackfile) in enumerate(pids):
                if index:
                    time.sleep(rng.uniform(0.0, 0.1))
                os.kill(pid, signal.SIGKILL)
                status = zygote.command(f"wait {pid}")
                assert status == f"dead {signal.SIGKILL}", f"writer ended on its own: {status}"
                expected.absorb(ackfile.read_text())
            asyncio.run(_check(root, expected))
    finally:
        zygote.close()
    return expected


def test_killed_writers_lose_no_acknowledged_write(tmp_path: Path) -> None:
    """60 SIGKILLs (30 rounds of two concurrent writers): every acknowledged write survives."""
    expected = _crash_many(tmp_path, 30, fsync=False, seed=1)
    assert expected.acks > 200, "the writers acknowledged too little to test anything"
    assert len(expected.commits) == TASKS, "some task never had a commit acknowledged"


@pytest.mark.slow
def test_killed_writers_lose_nothing_stress(tmp_path: Path) -> None:
    """300 SIGKILLs with fsync on: the same guarantees on the default, durable path."""
    expected = _crash_many(tmp_path, 150, fsync=True, seed=2)
    assert expected.acks > 1000
