"""CLI commands that look after a store: delete, prune, doctor.

Like the history commands they open the run store directly and build no engine.
``delete`` and ``prune`` remove everything of a run (record, checkpoints, events,
cache entries; see ``RunStore.delete_run``) and then give the space back
(``vacuum`` on SQLite); ``doctor`` checks a store and repairs only what it can
repair without losing anything (``taskloom.sdk._runs.doctor``).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskloom.contracts import (
    RunNotFound,
    SelfChecking,
    StorageAdapter,
    StorageCorrupted,
    StorageFinding,
    UsageError,
)
from taskloom.sdk._cli.context import CliContext

__all__ = ["parse_age", "register"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_age(text: str) -> float:
    """An argparse type: ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds."""
    match = _AGE.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no age: give a number with a unit, e.g. 30d, 12h, 90m, 45s or 2w"
        )
    return float(match[1]) * _UNITS[match[2] or "s"]


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(add: Callable[..., Any]) -> None:
    cmd = add(
        "delete",
        "delete a run and everything it stored (record, steps, events, cache entries)",
        delete,
    )
    cmd.add_argument("run_id")
    cmd = add(
        "prune",
        "delete old runs (everything they stored) and give the space back",
        prune,
    )
    cmd.add_argument(
        "--older-than",
        type=parse_age,
        metavar="AGE",
        help="delete runs created longer ago than AGE (30d, 12h, 90m, 45s, 2w)",
    )
    cmd.add_argument(
        "--keep-last",
        type=_non_negative,
        metavar="N",
        help="keep only the N newest finished runs (running ones are never touched)",
    )
    cmd = add(
        "doctor",
        "check the store (integrity, checksums, orphans); --repair fixes what loses nothing",
        doctor,
    )
    cmd.add_argument(
        "--repair",
        action="store_true",
        help="repair what can be repaired without losing data, and report the rest",
    )


async def _open_runstore(ctx: CliContext) -> Any:
    from taskloom.sdk._runs.store import RunStore

    return RunStore(await ctx.storage())


async def _reclaim(storage: StorageAdapter) -> int:
    """Give freed pages back to the file system where the adapter can (SQLite)."""
    vacuum = getattr(storage, "vacuum", None)
    if vacuum is None:
        return 0
    pages: int = await vacuum()
    return pages


async def delete(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._cli.security import audit

    store = await _open_runstore(ctx)
    try:
        try:
            run_id: str = await store.resolve_run_id(args.run_id)  # a unique prefix will do
        except RunNotFound:
            run_id = args.run_id  # what a run whose record is gone left behind goes too
        existed = await store.delete_run(run_id)
    finally:
        await store.aclose()
    if not existed:
        raise RunNotFound(
            f"no run {args.run_id!r} in this store: `taskloom runs` lists the stored runs"
        )
    await _reclaim(await ctx.storage())
    ctx.out.data(
        {"run_id": run_id, "deleted": True},
        lambda: ctx.out.note(f"run {run_id} deleted"),
    )
    await audit(ctx, "run.delete", run_id)
    return 0


async def prune(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._cli.security import audit

    if args.older_than is None and args.keep_last is None:
        raise UsageError(
            "taskloom prune: give --older-than AGE, --keep-last N or both "
            "(e.g. taskloom prune --older-than 30d --keep-last 100)"
        )
    store = await _open_runstore(ctx)
    try:
        deleted: int = await store.prune(older_than_s=args.older_than, keep_last=args.keep_last)
    finally:
        await store.aclose()
    pages = await _reclaim(await ctx.storage())
    ctx.out.data(
        {"deleted": deleted, "pages_freed": pages},
        lambda: ctx.out.note(f"deleted {deleted} run{'' if deleted == 1 else 's'}"),
    )
    await audit(ctx, "runs.prune", "*", older_than_s=args.older_than, keep_last=args.keep_last)
    return 0


async def doctor(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._runs.doctor import check_runs
    from taskloom.sdk._runs.store import RunStore

    config = ctx.config
    location, kind = str(config.storage_path), config.storage_kind
    findings: list[StorageFinding] = []
    try:
        storage = await ctx.storage()
    except StorageCorrupted as exc:
        findings.append(_unopenable(kind, config.storage_path, exc, repair=args.repair))
        findings += await _file_check(kind, config.storage_path, findings[-1])
    else:
        try:
            if isinstance(storage, SelfChecking):
                findings += await storage.verify(repair=args.repair)
            store = RunStore(storage)
            try:
                findings += await check_runs(
                    storage, repair=args.repair, clock=time.time, finish_delete=store.finish_delete
                )
            finally:
                await store.aclose()
        except StorageCorrupted as exc:  # too damaged to walk further: say where it stopped
            findings.append(StorageFinding(where=exc.path or location, problem=str(exc)))
            findings += await _file_check(kind, config.storage_path, findings[-1])
    left = sum(1 for f in findings if not f.repaired)
    rows = [{"where": f.where, "problem": f.problem, "repaired": f.repaired} for f in findings]

    def human() -> None:
        ctx.out.note(f"checked the {kind} store at {location}")
        for f in findings:
            ctx.out.note(f"  {'repaired' if f.repaired else 'PROBLEM'}: {f.where}: {f.problem}")
        if not findings:
            ctx.out.note("no problems found")
        elif left:
            hint = "" if args.repair else "; `taskloom doctor --repair` fixes what loses nothing"
            ctx.out.note(f"{left} problem{'' if left == 1 else 's'} left{hint}")
        else:
            ctx.out.note("every problem found was repaired")

    ctx.out.data({"location": location, "kind": kind, "findings": rows, "ok": left == 0}, human)
    return 0 if left == 0 else 1


async def _file_check(kind: str, path: Path, first: StorageFinding) -> list[StorageFinding]:
    """SQLite's own account of a database too damaged to use (read only)."""
    if kind != "sqlite" or first.repaired or not path.is_file() or path.stat().st_size == 0:
        return []
    from taskloom.adapters.sqlite import SQLiteStorage

    return await SQLiteStorage.verify_file(path)


def _unopenable(kind: str, path: Path, exc: StorageCorrupted, *, repair: bool) -> StorageFinding:
    """The finding for a store that cannot be opened; an empty SQLite file is removed."""
    where = exc.path or str(path)
    if kind == "sqlite" and path.is_file() and path.stat().st_size == 0:
        wal = Path(f"{path}-wal")
        if not (wal.exists() and wal.stat().st_size > 0):
            if repair:
                for leftover in (path, wal, Path(f"{path}-shm")):
                    leftover.unlink(missing_ok=True)
            return StorageFinding(
                where=where,
                problem="an empty (0-byte) database file, holding no data"
                + (": removed; the next command creates a new store" if repair else ""),
                repaired=repair,
            )
    return StorageFinding(where=where, problem=str(exc))
