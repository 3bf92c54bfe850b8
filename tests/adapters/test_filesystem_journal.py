"""A process that dies at each step of a journaled commit leaves it whole or absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from taskloom.adapters.filesystem import FileStorage

WORKER = Path(__file__).with_name("fs_journal_worker.py")


@pytest.mark.parametrize(
    ("point", "applied"),
    [
        ("before-journal", False),
        ("after-journal", True),
        ("mid-records", True),
        ("mid-streams", True),
        ("before-unlink", True),
    ],
)
async def test_a_commit_killed_at_each_step_is_all_or_nothing(
    tmp_path: Path, point: str, applied: bool
) -> None:
    """Dying before the journal is durable loses the commit; after it, reopening finishes it."""
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), point], capture_output=True, text=True
    )
    assert proc.returncode == 9, f"the worker did not die at {point}: {proc.stderr[-500:]}"
    journal_left = (tmp_path / "journal").exists()
    assert journal_left == applied
    async with FileStorage(tmp_path) as storage:
        a, b, gone = [await storage.get("ns", k) for k in ("a", "b", "gone")]
        payloads = [e.payload for e in await storage.read("s")]
        if applied:
            assert (a and a.value, b and b.value, gone) == (b"A", b"B", None)
            assert payloads == [b"one", b"two", b"three"]
        else:
            assert (a, b) == (None, None) and gone is not None and gone.value == b"old"
            assert payloads == [b"one"]
        assert (await storage.append("s", b"next")).seq == len(payloads) + 1
    assert not (tmp_path / "journal").exists()
