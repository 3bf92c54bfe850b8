"""SQLiteStorage shared by real processes: CAS counters, busy locks, full and read-only disks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import StorageUnavailable

HERE = Path(__file__).parent
COUNTER = HERE / "sqlite_counter_worker.py"
FAULT = HERE / "sqlite_fault_worker.py"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


async def test_cas_counters_exact_across_processes(tmp_path: Path) -> None:
    """Four processes of twelve tasks each increment shared counters by CAS: no update is lost."""
    db = str(tmp_path / "counters.db")
    procs, tasks, increments, counters = 4, 12, 15, 3
    # All four start on a database that does not exist yet: creating it races too.
    running = [
        subprocess.Popen(
            [sys.executable, str(COUNTER), db, str(tasks), str(increments), str(counters)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    conflicts = 0
    for proc in running:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        conflicts += int(out.split()[1])
    per_counter = {f"c{n}": 0 for n in range(counters)}
    for n in range(tasks):
        per_counter[f"c{n % counters}"] += increments * procs
    async with SQLiteStorage(db) as storage:
        for key, total in per_counter.items():
            record = await storage.get("counters", key)
            assert record is not None
            assert int(record.value) == total
            assert record.version == total
    assert conflicts > 0, "the tasks never collided, so CAS was not exercised"


async def test_plain_puts_from_processes_count_every_version(tmp_path: Path) -> None:
    """Group-committed plain puts from three processes: each key's version counts every put."""
    db = str(tmp_path / "plain.db")
    procs, tasks, puts, keys = 3, 20, 30, 4
    running = [
        subprocess.Popen(
            [sys.executable, str(COUNTER), db, str(tasks), str(puts), str(keys), "plain"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    for proc in running:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    async with SQLiteStorage(db) as storage:
        for k in range(keys):
            record = await storage.get("plain", f"p{k}")
            assert record is not None
            assert record.version == procs * puts * len(range(k, tasks, keys))


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    """A taskloom database plus a way to start lock-holding processes; kills them after."""
    db = str(tmp_path / "busy.db")
    started: list[subprocess.Popen[str]] = []
    yield db, started
    for proc in started:
        proc.kill()
        proc.wait()


def _hold(db: str, seconds: float, started: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(FAULT), "hold", db, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"


async def test_busy_longer_than_deadline_is_unavailable(
    holder: tuple[str, list[subprocess.Popen[str]]],
) -> None:
    """A write lock held past busy_timeout_s gives StorageUnavailable, not 'database is locked'."""
    db, started = holder
    async with SQLiteStorage(db) as storage:
        await storage.put("ns", "before", b"1")
    _hold(db, 60, started)
    async with SQLiteStorage(db, busy_timeout_s=0.3) as storage:
        assert (await storage.get("ns", "before")) is not None, "reads must not wait for writers"
        with pytest.raises(StorageUnavailable) as caught:
            await storage.put("ns", "k", b"v")
        assert "database is locked" not in str(caught.value)
        assert "busy_timeout_s" in str(caught.value)
        with pytest.raises(StorageUnavailable):
            await storage.append("s", b"x")
    started[0].kill()
    started[0].wait()
    async with SQLiteStorage(db) as storage:
        assert (await storage.put("ns", "k", b"v")).version == 1, "the failed put wrote"
        assert (await storage.append("s", b"y")).seq == 1, "the failed append wrote"


async def test_busy_shorter_than_deadline_waits(
    holder: tuple[str, list[subprocess.Popen[str]]],
) -> None:
    """A write lock released within busy_timeout_s is waited for and the write succeeds."""
    db, started = holder
    async with SQLiteStorage(db) as storage:
        await storage.put("ns", "before", b"1")
    _hold(db, 0.3, started)
    async with SQLiteStorage(db, busy_timeout_s=60) as storage:
        record = await storage.put("ns", "before", b"2")
        assert record.version == 2
    assert started[0].stdout is not None
    assert started[0].stdout.readline().strip() == "released"


def _check_fill(out: str) -> tuple[int, str]:
    lines = out.splitlines()
    acked = [line for line in lines if line.startswith("P ")]
    full = [line for line in lines if line.startswith("FULL ")]
    verified = [line for line in lines if line.startswith("VERIFIED ")]
    assert full and verified, out[-2000:]
    assert int(verified[0].split()[1]) == len(acked)
    return len(acked), full[0]


async def test_full_disk_is_unavailable_and_keeps_data(tmp_path: Path) -> None:
    """When writes hit the file size limit: StorageUnavailable; every acknowledged put survives."""
    db = str(tmp_path / "full.db")
    result = _run(str(FAULT), "fill", db, str(600 * 1024))
    assert result.returncode == 0, result.stderr[-3000:]
    acked, full = _check_fill(result.stdout)
    assert acked > 0
    # RLIMIT_FSIZE makes write() fail with EFBIG: SQLite reports a write cut short at the
    # limit as SQLITE_FULL, but one that starts exactly at it as SQLITE_IOERR_WRITE
    # (os_unix.c: only ENOSPC or a short write is "full"). Both are typed and one line;
    # the real ENOSPC of the tmpfs test below must be StorageFull.
    assert full.startswith(("FULL StorageFull", "FULL StorageUnavailable I/O failed")), full
    async with SQLiteStorage(db) as storage:
        for i in range(acked):
            assert (await storage.get("fill", f"k{i}")) is not None
        assert (await storage.put("fill", "after", b"x")).version == 1


def _can_mount() -> bool:
    return (
        sys.platform == "linux"
        and os.geteuid() == 0
        and shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode
        == 0
    )


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
def test_full_tmpfs_is_unavailable_and_keeps_data(tmp_path: Path) -> None:
    """On a real full file system (a 1 MiB tmpfs, ENOSPC): StorageUnavailable, data intact."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {mount} && "
        f"{sys.executable} {FAULT} fill {mount}/full.db 1000000000"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    acked, full = _check_fill(result.stdout)
    assert acked > 0
    assert full.startswith("FULL StorageFull"), full


async def test_read_only_location_is_unavailable_and_keeps_data(tmp_path: Path) -> None:
    """On a read-only location opening gives StorageUnavailable; the data stays as it was."""
    folder = tmp_path / "ro"
    folder.mkdir()
    db = str(folder / "ro.db")
    async with SQLiteStorage(db) as storage:
        await storage.put("ns", "k", b"kept")
    before = Path(db).read_bytes()
    if os.geteuid() != 0:
        os.chmod(db, 0o444)
        os.chmod(folder, 0o555)
        try:
            result = _run(str(FAULT), "open", db)
        finally:
            os.chmod(folder, 0o755)
            os.chmod(db, 0o644)
    elif _can_mount():
        script = (
            f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
            f"{sys.executable} {FAULT} open {db}"
        )
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
        )
    else:
        pytest.skip("running as root without mount namespaces: cannot make a read-only location")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ERROR StorageUnavailable"), result.stdout
    assert Path(db).read_bytes() == before
    async with SQLiteStorage(db) as storage:
        record = await storage.get("ns", "k")
        assert record is not None and record.value == b"kept"


def test_unclosed_adapter_does_not_hang_exit(tmp_path: Path) -> None:
    """A process that forgets aclose() still exits (no non-daemon thread keeps it alive)."""
    script = (
        "import asyncio\n"
        "from taskloom.adapters.sqlite import SQLiteStorage\n"
        "async def main():\n"
        f"    s = await SQLiteStorage.open({str(tmp_path / 'x.db')!r})\n"
        "    await s.put('ns', 'k', b'v')\n"
        "    raise SystemExit(3)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 3, result.stderr[-2000:]
