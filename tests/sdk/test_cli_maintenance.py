"""The store-care commands: runs lists damaged runs, delete, prune, doctor."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from taskloom.sdk._cli.main import main
from taskloom.sdk._cli.maintenance import parse_age

ROOT = Path(__file__).resolve().parents[2]


class Done:
    """What one in-process invocation left behind."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def document(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(params=["sqlite", "filesystem"])
def cli(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """``cli(*args)`` runs ``taskloom`` in a fresh home, on a SQLite or a file store."""
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "hello.json", work / "hello.json")
    store = tmp_path / ("store.db" if request.param == "sqlite" else "store")
    (work / "taskloom.toml").write_text(f'[storage]\nkind = "{request.param}"\npath = "{store}"\n')
    monkeypatch.chdir(work)

    def run(*args: str) -> Done:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        code = main(list(args))
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    run.kind = request.param  # type: ignore[attr-defined]
    run.store = store  # type: ignore[attr-defined]
    return run


def _run_hello(cli: Any) -> str:
    done = cli("run", "hello.json", "--json")
    assert done.code == 0, done.err
    run_id: str = done.document()["run_id"]
    return run_id


def _damage_run_record(cli: Any, run_id: str) -> None:
    """Overwrite the run's stored record with bytes that do not decode."""
    import asyncio

    from taskloom.adapters.filesystem import FileStorage
    from taskloom.adapters.sqlite import SQLiteStorage

    async def damage() -> None:
        opened = SQLiteStorage(cli.store) if cli.kind == "sqlite" else FileStorage(cli.store)
        async with opened as storage:
            await storage.put("runs", run_id, b"{not json")

    asyncio.run(damage())


def test_one_damaged_run_record_does_not_break_runs(cli: Any) -> None:
    """runs lists the damaged run with its id and the intact ones; delete removes it."""
    good, bad = _run_hello(cli), _run_hello(cli)
    _damage_run_record(cli, bad)
    listed = cli("runs", "--json")
    assert listed.code == 0, listed.err
    rows = {row["run_id"]: row for row in listed.document()}
    assert rows[good]["status"] == "succeeded"
    assert rows[bad]["status"] == "damaged" and "runs/" in rows[bad]["error"]
    human = cli("runs")
    assert human.code == 0 and bad in human.err and f"taskloom delete {bad}" in human.err
    deleted = cli("delete", bad, "--json")
    assert deleted.code == 0, deleted.err
    assert [row["run_id"] for row in cli("runs", "--json").document()] == [good]
    assert cli("show", good).code == 0


def test_delete_removes_a_run_and_refuses_an_unknown_one(cli: Any) -> None:
    """delete removes the run named by a unique prefix (show then fails); deleting an
    unknown id exits 2 in one line."""
    run_id = _run_hello(cli)
    deleted = cli("delete", run_id[:8], "--json")
    assert deleted.code == 0 and deleted.document()["run_id"] == run_id
    assert cli("show", run_id).code != 0
    again = cli("delete", run_id)
    assert again.code == 2
    assert "no run" in again.err and "Traceback" not in again.err


def test_prune_keep_last_and_older_than(cli: Any) -> None:
    """prune --keep-last keeps the newest; --older-than 30d keeps today's; nothing given: exit 2."""
    ids = [_run_hello(cli) for _ in range(3)]
    assert cli("prune", "--older-than", "30d", "--json").document()["deleted"] == 0
    pruned = cli("prune", "--keep-last", "1", "--json")
    assert pruned.code == 0 and pruned.document()["deleted"] == 2
    assert [row["run_id"] for row in cli("runs", "--json").document()] == [ids[-1]]
    assert cli("prune", "--older-than", "0s", "--json").document()["deleted"] == 1
    assert cli("runs", "--json").document() == []
    nothing = cli("prune")
    assert nothing.code == 2 and "--older-than" in nothing.err
    assert cli("prune", "--older-than", "soon").code == 2


def test_parse_age_units() -> None:
    """Ages take s, m, h, d and w units, or plain seconds."""
    assert parse_age("30d") == 30 * 86400
    assert parse_age("1.5h") == 5400
    assert parse_age("90") == 90
    assert parse_age("2w") == 14 * 86400


def test_doctor_on_a_healthy_store(cli: Any) -> None:
    """doctor finds nothing wrong with a store the CLI just used, and exits 0."""
    _run_hello(cli)
    done = cli("doctor", "--json")
    assert done.code == 0, done.err
    assert done.document()["ok"] is True and done.document()["findings"] == []


def test_doctor_reports_then_repairs_orphans_and_a_missing_index_entry(cli: Any) -> None:
    """Index entries of missing runs and runs missing from the index are repaired, not lost."""
    import asyncio

    from taskloom.adapters.filesystem import FileStorage
    from taskloom.adapters.sqlite import SQLiteStorage

    kept, unindexed = _run_hello(cli), _run_hello(cli)

    async def break_it() -> None:
        opened = SQLiteStorage(cli.store) if cli.kind == "sqlite" else FileStorage(cli.store)
        async with opened as storage:
            await storage.put("runs_by_time", "00000000000000001/ghost", b"{}")
            for entry in await storage.scan("runs_by_time"):
                if entry.key.endswith(unindexed):
                    await storage.delete("runs_by_time", entry.key)
            await storage.put("damaged-but-unknown-namespace", "k", b"v")

    asyncio.run(break_it())
    checked = cli("doctor", "--json")
    assert checked.code == 1
    problems = {f["where"] for f in checked.document()["findings"] if not f["repaired"]}
    assert any("ghost" in where for where in problems)
    assert any(where.endswith(unindexed) for where in problems)
    repaired = cli("doctor", "--repair", "--json")
    assert repaired.code == 0, repaired.out
    assert all(f["repaired"] for f in repaired.document()["findings"])
    assert cli("doctor", "--json").document()["findings"] == []
    assert {row["run_id"] for row in cli("runs", "--json").document()} == {kept, unindexed}


def test_doctor_names_a_damaged_run_record_and_leaves_it(cli: Any) -> None:
    """A run record that does not decode is reported (not repaired) with the delete hint."""
    run_id = _run_hello(cli)
    _damage_run_record(cli, run_id)
    done = cli("doctor", "--repair", "--json")
    assert done.code == 1
    (finding,) = done.document()["findings"]
    assert finding["repaired"] is False and f"taskloom delete {run_id}" in finding["problem"]


def test_doctor_checks_files_and_checksums(cli: Any) -> None:
    """SQLite: a damaged page fails integrity_check; file store: a flipped record byte is named."""
    run_id = _run_hello(cli)
    if cli.kind == "sqlite":
        with sqlite3.connect(cli.store) as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            root = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = 'records'"
            ).fetchone()[0]
        data = bytearray(cli.store.read_bytes())
        start = (root - 1) * page_size
        data[start : start + page_size] = bytes(page_size)  # the table's root page zeroed
        cli.store.write_bytes(bytes(data))
        done = cli("doctor", "--json")
        assert done.code == 1, done.err
        assert "findings" in done.document(), (done.out, done.err)
        problems = [f["problem"] for f in done.document()["findings"]]
        assert any(p.startswith("integrity_check: ") for p in problems), problems
    else:
        record = next(p for p in (cli.store / "records").rglob("*") if p.is_file())
        data = bytearray(record.read_bytes())
        data[-1] ^= 0xFF
        record.write_bytes(bytes(data))
        done = cli("doctor", "--repair", "--json")
        assert done.code == 1
        findings = done.document()["findings"]
        assert any(f["where"] == str(record) and not f["repaired"] for f in findings)
        assert record.read_bytes() == bytes(data)
    assert run_id


def test_doctor_removes_an_empty_sqlite_file_only_with_repair(cli: Any) -> None:
    """A 0-byte database is refused by every command; doctor --repair removes it."""
    if cli.kind != "sqlite":
        (cli.store / "records").rename(
            cli.store.parent / "records-moved"
        ) if cli.store.exists() else None
        _run_hello(cli)
        shutil.rmtree(cli.store / "records")
        done = cli("doctor", "--repair", "--json")
        assert done.code == 1 and "missing" in done.document()["findings"][0]["problem"]
        return
    cli.store.parent.mkdir(parents=True, exist_ok=True)
    cli.store.touch()
    refused = cli("runs")
    assert refused.code == 1 and "empty" in refused.err and "Traceback" not in refused.err
    assert cli("doctor", "--json").code == 1
    assert cli.store.exists()
    repaired = cli("doctor", "--repair", "--json")
    assert repaired.code == 0 and repaired.document()["findings"][0]["repaired"] is True
    assert not cli.store.exists()
    _run_hello(cli)


def test_doctor_finds_the_events_of_a_run_that_is_gone(cli: Any) -> None:
    """A run whose record vanished but whose events stayed is named; delete removes them."""
    import asyncio

    from taskloom.adapters.filesystem import FileStorage
    from taskloom.adapters.sqlite import SQLiteStorage

    run_id = _run_hello(cli)

    async def remove_record() -> None:
        opened = SQLiteStorage(cli.store) if cli.kind == "sqlite" else FileStorage(cli.store)
        async with opened as storage:
            await storage.delete("runs", run_id)
            for entry in await storage.scan("runs_by_time"):
                await storage.delete("runs_by_time", entry.key)
            for step in await storage.scan("steps", prefix=f"{run_id}/"):
                await storage.delete("steps", step.key)

    asyncio.run(remove_record())
    done = cli("doctor", "--repair", "--json")
    assert done.code == 1
    left = [f for f in done.document()["findings"] if not f["repaired"]]
    assert [f["where"] for f in left] == [f"stream run:{run_id}:events"], done.out
    assert cli("delete", run_id).code == 0
    assert cli("doctor", "--json").document()["findings"] == []


def test_events_of_a_damaged_segment_fail_naming_the_file(cli: Any) -> None:
    """File store: a flipped bit mid-stream makes events exit 1 naming the segment, and a
    later write destroys nothing of what follows the damage."""
    if cli.kind != "filesystem":
        pytest.skip("stream segments are the file store's")
    run_id = _run_hello(cli)
    from taskloom.adapters.filesystem import _core as _fs_core

    store = _fs_core.Store(
        cli.store, clock=lambda: 0.0, fsync=False, segment_bytes=1 << 20, lock_timeout=1.0
    )
    (segment,) = store.stream_dir(f"run:{run_id}:events").glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0x10
    segment.write_bytes(bytes(data))
    done = cli("events", run_id)
    assert done.code == 1
    assert str(segment) in done.err and "Traceback" not in done.err
    cli("run", "hello.json")  # another run writes to the store meanwhile
    assert segment.read_bytes() == bytes(data)


def test_store_files_the_cli_creates_are_private(cli: Any) -> None:
    """After a run, every file of the store is 0600 and every directory 0700."""
    import stat

    _run_hello(cli)
    paths = [cli.store, *cli.store.rglob("*")] if cli.store.is_dir() else [cli.store]
    paths += [p for p in cli.store.parent.glob(f"{cli.store.name}-*")]
    for path in paths:
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_the_shell_offers_the_store_commands_and_run_ids_for_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev shell completes delete, prune and doctor, and run ids after delete."""
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from taskloom.sdk._cli.context import CliContext, Output
    from taskloom.sdk._cli.main import build_parser
    from taskloom.sdk._cli.shell import ShellCompleter
    from taskloom.sdk._config.toml import load_config

    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    completer = ShellCompleter(build_parser(), CliContext(load_config(), Output(json_mode=False)))
    completer.run_ids = ["0123abcd", "4567ef01"]

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]

    assert {"delete", "prune", "doctor"} <= set(complete(""))
    assert complete("delete 45") == ["4567ef01"]
