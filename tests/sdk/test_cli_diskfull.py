"""A full disk under `taskloom run`: one error line, no traceback, and the run's id to resume."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import taskloom.sdk._cli.context as cli_context
from taskloom.contracts import Op, StorageAdapter, StorageFull
from taskloom.sdk._cli.main import main

ROOT = Path(__file__).resolve().parents[2]


class FillingStorage:
    """Wraps an adapter; every commit after the first ``room`` raises StorageFull."""

    def __init__(self, inner: StorageAdapter, room: int) -> None:
        self._inner = inner
        self._room = room

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(self, ops: Sequence[Op]) -> Any:
        self._room -= 1
        if self._room < 0:
            raise StorageFull(f"the disk holding {self._inner!r} is full; free space and retry")
        return await self._inner.commit(ops)

    async def put(self, *args: Any, **kwargs: Any) -> Any:
        self._room -= 1
        if self._room < 0:
            raise StorageFull("the disk is full; free space and retry")
        return await self._inner.put(*args, **kwargs)


@pytest.mark.parametrize("room", [1, 2, 3, 4, 5, 6, 7])
def test_a_full_disk_mid_run_names_the_run_in_one_line(
    room: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whenever the store fills during a run, stderr holds one line naming the run to resume."""
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "examples" / "map_documents.json", tmp_path / "map.json")
    real_open = cli_context.open_storage

    async def filling_open(*args: Any, **kwargs: Any) -> Any:
        return FillingStorage(await real_open(*args, **kwargs), room)

    monkeypatch.setattr(cli_context, "open_storage", filling_open)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["run", "map.json"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("taskloom: error:")]
    assert code == 1
    assert len(errors) == 1, err
    assert "Traceback" not in err and "never retrieved" not in err
    assert "full" in errors[0]
    monkeypatch.setattr(cli_context, "open_storage", real_open)
    capsys.readouterr()
    assert main(["runs", "--json"]) == 0
    for run in json.loads(capsys.readouterr().out):
        if run["status"] != "succeeded":
            assert f"taskloom resume {run['run_id']}" in errors[0], err
        else:  # the run finished; its last audit entry found the disk full
            assert f"run {run['run_id']}: succeeded" in err


def test_a_run_that_ends_before_its_start_audit_fails_is_reported_as_ended(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The start's audit entry fails (a full disk) only after the run succeeded: the run is
    reported as succeeded, with one error line for the audit, never "resume it"."""
    import asyncio
    import contextlib

    import taskloom.sdk._cli.drive as drive
    from taskloom.contracts import RunNotFound
    from taskloom.sdk._runs.store import RunStore

    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    real_audit = drive._audit

    async def late_failing_audit(ctx: Any, action: str, subject: str, **details: Any) -> None:
        if action != "run.start":
            return await real_audit(ctx, action, subject, **details)
        store = RunStore(await ctx.storage())
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(RunNotFound):  # not stored yet
                    if (await store.load_run(subject)).status == "succeeded":
                        break
                await asyncio.sleep(0.01)
        raise StorageFull("the disk is full; free space and retry")

    monkeypatch.setattr(drive, "_audit", late_failing_audit)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["run", str(ROOT / "examples" / "hello.json")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("taskloom: error:")]
    assert code == 1, err
    assert len(errors) == 1 and "full" in errors[0], err
    assert "resume" not in err and ": succeeded" in err, err
    monkeypatch.setattr(drive, "_audit", real_audit)
    assert main(["runs", "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["status"] == "succeeded" and f"run {run['run_id']}: succeeded" in err


def _can_mount() -> bool:
    return (
        sys.platform == "linux"
        and os.geteuid() == 0
        and shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode
        == 0
    )


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_a_real_full_disk_at_many_fill_levels(tmp_path: Path, kind: str) -> None:
    """On a small tmpfs filled to leave a few KiB, every failing run prints one clean line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
    env["PYTHONPATH"] = os.pathsep.join(
        str(ROOT / part) for part in ("contracts", "adapters", "security", "sdk")
    )
    mount = tmp_path / "small"
    mount.mkdir()
    store = mount / ("store.db" if kind == "sqlite" else "store")
    config = tmp_path / "taskloom.toml"
    config.write_text(f'[storage]\nkind = "{kind}"\npath = "{store}"\n')
    taskloom = f"{sys.executable} -m taskloom.sdk._cli.main --config {config}"
    pipeline = ROOT / "examples" / "map_documents.json"
    levels = [8, 40, 72, 104, 136, 168, 200] if kind == "sqlite" else [8, 20, 32, 44, 56, 68]
    script = "\n".join(
        [f"mount -t tmpfs -o size=768k tmpfs {mount}", "set +e"]
        + [
            f"rm -rf {mount}/*; mkdir -p {mount}/home; "
            f"avail=$(df --output=avail -k {mount} | tail -1); "
            f"head -c $(( (avail - {free}) * 1024 )) /dev/zero > {mount}/filler 2>/dev/null; "
            f"TASKLOOM_HOME={mount}/home {taskloom} run {pipeline} >/dev/null 2>{tmp_path}/err; "
            f'echo "CASE {free} rc=$?"; cat {tmp_path}/err; rm -f {mount}/filler; '
            f"TASKLOOM_HOME={mount}/home {taskloom} runs --json | tr -d '\\n'; echo"
            for free in levels
        ]
    )
    done = subprocess.run(
        ["unshare", "-m", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    cases = done.stdout.split("CASE ")[1:]
    assert len(cases) == len(levels), done.stdout[-2000:] + done.stderr[-2000:]
    failed = 0
    for case in cases:
        head, *rest = case.splitlines()
        listing = json.loads(rest[-1]) if rest and rest[-1].startswith("[") else []
        errors = [line for line in rest if line.startswith("taskloom: error:")]
        assert "Traceback" not in case
        if head.endswith("rc=0"):
            continue
        failed += 1
        assert len(errors) == 1, case
        for run in listing:
            if run["status"] != "succeeded":
                assert f"taskloom resume {run['run_id']}" in errors[0], case
    assert failed >= 3, done.stdout[-3000:]
