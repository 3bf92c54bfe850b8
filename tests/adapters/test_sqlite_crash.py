"""SQLiteStorage survives SIGKILL: acknowledged writes stay, commits stay whole, streams gapless.

A zygote process (``sqlite_crash_worker.py``) forks writers that run eight
concurrent tasks of puts, CAS puts, appends and three-operation commits against
one database, printing every acknowledged operation. The test kills each writer
with SIGKILL at a random moment, reopens the database and checks everything
acknowledged, across all the kills so far.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from crash_zygote import Zygote

from taskloom.adapters.sqlite import SQLiteStorage

WORKER = Path(__file__).with_name("sqlite_crash_worker.py")


class _Expected:
    """What the acknowledgements promise, accumulated over every kill so far."""

    def __init__(self) -> None:
        self.puts: dict[str, tuple[int, str]] = {}
        self.entries: dict[str, dict[int, str]] = {}
        self.stream_len: dict[str, int] = {}
        self.commits = 0
        self.acks = 0

    def absorb(self, text: str) -> None:
        # Only whole lines count: a line cut by the kill was never fully printed.
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n") or line == "started\n":
                continue
            kind, name, number, tag = line.split()
            self.acks += 1
            if kind == "P":
                if int(number) >= self.puts.get(name, (0, ""))[0]:
                    self.puts[name] = (int(number), tag)
            elif kind == "A":
                self.entries.setdefault(name, {})[int(number)] = tag
            else:
                self.entries.setdefault("cs", {})[int(number)] = tag
                self.commits = max(self.commits, int(name))


async def _verify(db: str, expected: _Expected, *, full: bool = False) -> None:
    async with SQLiteStorage(db, purge_interval_s=None) as storage:
        for key, (version, tag) in expected.puts.items():
            record = await storage.get("p", key)
            assert record is not None, f"acknowledged put of {key} v{version} is lost"
            assert record.version >= version, (key, record.version, version)
            if record.version == version:
                assert record.value == tag.encode(), (key, record.value, tag)
        for stream in ("s0", "s1", "s2", "cs"):
            # Entries below the length seen last time were checked then: start at the
            # last of them (it must still be there) unless a full check is asked for.
            known = 0 if full else expected.stream_len.get(stream, 0)
            entries = await storage.read(stream, after=max(known - 1, 0))
            first = max(known, 1)
            assert [e.seq for e in entries] == list(range(first, first + len(entries))), stream
            length = first + len(entries) - 1
            assert length >= expected.stream_len.get(stream, 0), "entries vanished"
            expected.stream_len[stream] = length
            for seq, tag in expected.entries.get(stream, {}).items():
                assert seq <= length, f"acknowledged {stream}#{seq} is lost"
                if seq >= first:
                    assert entries[seq - first].payload == tag.encode(), (stream, seq)
        a = await storage.get("c", "a")
        b = await storage.get("c", "b")
        commits = expected.stream_len["cs"]
        last = await storage.read("cs", after=max(commits - 1, 0))
        if a is None or b is None:
            assert a is None and b is None and not commits, "a commit was applied in part"
        else:
            assert a.value == b.value == last[-1].payload, "a commit was applied in part"
            assert a.version == b.version == commits, "a commit was applied in part"
            assert a.version >= expected.commits


async def _crash_cycles(tmp_path: Path, kills: int, seed: int) -> _Expected:
    rng = random.Random(seed)
    db = str(tmp_path / "crash.db")
    expected = _Expected()
    zygote = Zygote(WORKER)
    try:
        for cycle in range(kills):
            ackfile = tmp_path / f"acks-{cycle}.txt"
            pid = int(zygote.command(f"run {rng.randrange(1 << 30)} {db} {ackfile}"))
            deadline = time.monotonic() + 30
            while not (ackfile.exists() and ackfile.read_bytes().startswith(b"started\n")):
                assert time.monotonic() < deadline, "the writer never started"
                time.sleep(0.002)
            time.sleep(rng.choice([0.0, 0.001, 0.005, 0.02, 0.05, rng.uniform(0, 0.1)]))
            os.kill(pid, signal.SIGKILL)
            status = zygote.command(f"reap {pid}")
            assert status == f"reaped {signal.SIGKILL}", status
            expected.absorb(ackfile.read_text())
            await _verify(db, expected)
    finally:
        zygote.close()
    await _verify(db, expected, full=True)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return expected


async def test_st11_sigkill_keeps_acknowledged_writes(tmp_path: Path) -> None:
    """After 60 SIGKILLs at random moments every acknowledged write is there, commits whole."""
    expected = await _crash_cycles(tmp_path, kills=60, seed=1)
    assert expected.acks > 500, "the writers were killed before they did anything"
    assert expected.commits > 0 and expected.entries


@pytest.mark.slow
async def test_st11_sigkill_stress(tmp_path: Path) -> None:
    """A longer run of 300 SIGKILLs keeps every acknowledged write and every commit whole."""
    expected = await _crash_cycles(tmp_path, kills=300, seed=2)
    assert expected.acks > 2000
