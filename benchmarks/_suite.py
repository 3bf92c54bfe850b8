"""Runs the benchmark groups, each in a child process, and collects their rows.

A group is a module with ``run(quick: bool) -> list[dict]``. Each runs in its own
interpreter so that one group's allocations, threads or event-loop state cannot
bend the next group's figures, and so that its peak memory is its own (``VmHWM``,
see ``_memory``). A group that is missing, raises, dies or hangs past its time
limit is *crashed*: its error is reported and the suite exits non-zero. A figure that
misses its target is a result, never a failure.

The child side is ``python -m benchmarks._suite --child MODULE --group NAME
--out FILE [--quick]``; it always writes FILE (rows or the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks._memory import peak_rss_mib

GROUPS: dict[str, str] = {
    "storage": "benchmarks.bench_storage",
    "engine": "benchmarks.bench_engine",
    "durable": "benchmarks.bench_durable",
    "security": "benchmarks.bench_security",
    "executors": "benchmarks.bench_executors",
    "scaling": "benchmarks.bench_scaling",
    "queue": "benchmarks.bench_queue",
    "peer": "benchmarks._peer_langgraph",
    "postgres": "benchmarks.bench_postgres",
    "api": "benchmarks.bench_api",
}
"""Group name to module, in the order the suite runs them."""

ROW_KEYS = (
    "group",
    "name",
    "value",
    "unit",
    "baseline",
    "baseline_unit",
    "ratio",
    "target",
    "holds",
    "spread",
)
ROOT = Path(__file__).resolve().parents[1]
"""The checkout: children run from here so that ``benchmarks`` is importable."""

Row = dict[str, Any]


@attrs.frozen(kw_only=True)
class GroupResult:
    """What one group produced: its rows, or why it has none."""

    group: str
    module: str
    status: str  # "ok" or "crashed"
    rows: list[Row] = attrs.field(factory=list)
    seconds: float = 0.0
    peak_rss_mib: float | None = None
    error: str | None = None
    output: str = ""

    @property
    def crashed(self) -> bool:
        return self.status != "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "module": self.module,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
            "error": self.error,
            "output": self.output,
            "rows": len(self.rows),
        }


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN and infinities become None (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def normalize_rows(group: str, returned: Any) -> list[Row]:
    """Rows with exactly ``ROW_KEYS`` (missing ones None); anything but a list of dicts raises.

    A module may name its own group (``"storage scaling"``); one that names none
    gets the suite's name for it.
    """
    if not isinstance(returned, list) or not all(isinstance(r, dict) for r in returned):
        raise TypeError(
            f"run() of group {group!r} returned {type(returned).__name__}, "
            "not a list of dicts: return one dict per figure"
        )
    rows: list[Row] = []
    for found in returned:
        row = {key: _clean(found.get(key)) for key in ROW_KEYS}
        if not row["group"]:
            row["group"] = group
        if row["name"] is None:
            raise TypeError(f"a row of group {group!r} has no name: {found!r}")
        if row["ratio"] is None and row["value"] is not None and row["baseline"]:
            with contextlib.suppress(TypeError):
                row["ratio"] = row["value"] / row["baseline"]
        rows.append(row)
    return rows


def run_in_process(group: str, module: str, quick: bool) -> GroupResult:
    """Import ``module`` and call its ``run``; any exception makes the group crashed."""
    start = time.perf_counter()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            loaded = importlib.import_module(module)
            run: Callable[[bool], Any] = loaded.run
            rows = normalize_rows(group, run(quick))
    except Exception:
        return GroupResult(
            group=group,
            module=module,
            status="crashed",
            seconds=time.perf_counter() - start,
            error=traceback.format_exc(),
            output=printed.getvalue(),
        )
    return GroupResult(
        group=group,
        module=module,
        status="ok",
        rows=rows,
        seconds=time.perf_counter() - start,
        output=printed.getvalue(),
    )


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def run_in_subprocess(group: str, module: str, quick: bool, timeout_s: float) -> GroupResult:
    """Run one group in a fresh interpreter; a death or a hang makes it crashed."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskloom-bench-") as directory:
        out = Path(directory) / "group.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks._suite",
            "--child",
            module,
            "--group",
            group,
            "--out",
            str(out),
        ]
        if quick:
            command.append("--quick")
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            printed = exc.stdout if isinstance(exc.stdout, str) else ""
            return GroupResult(
                group=group,
                module=module,
                status="crashed",
                seconds=time.perf_counter() - start,
                error=f"timed out after {timeout_s:.0f} s (killed): a benchmark hangs or is "
                "far slower than designed",
                output=_tail(printed),
            )
        elapsed = time.perf_counter() - start
        printed = _tail((done.stdout or "") + (done.stderr or ""))
        if not out.exists():
            return GroupResult(
                group=group,
                module=module,
                status="crashed",
                seconds=elapsed,
                error=f"the group's process exited with status {done.returncode} "
                f"and wrote no result:\n{_tail(done.stderr or '')}",
                output=printed,
            )
        found = json.loads(out.read_text())
    return GroupResult(
        group=group,
        module=module,
        status=found["status"],
        rows=found["rows"],
        seconds=elapsed,
        peak_rss_mib=found["peak_rss_mib"],
        error=found["error"],
        output=_tail(found["output"] + (done.stderr or "")),
    )


def run_groups(
    groups: Sequence[str],
    *,
    quick: bool,
    isolate: bool = True,
    modules: dict[str, str] | None = None,
    timeout_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[GroupResult]:
    """Run ``groups`` in order; ``modules`` overrides the group-to-module map (tests)."""
    table = {**GROUPS, **(modules or {})}
    limit = timeout_s if timeout_s is not None else (300.0 if quick else 900.0)
    results: list[GroupResult] = []
    for group in groups:
        module = table[group]
        if progress is not None:
            progress(f"running {group} ({module}) ...")
        if isolate:
            result = run_in_subprocess(group, module, quick, limit)
        else:
            result = run_in_process(group, module, quick)
        if progress is not None:
            state = "CRASHED" if result.crashed else f"{len(result.rows)} rows"
            progress(f"  {group}: {state} in {result.seconds:.1f} s")
        results.append(result)
    return results


def _child(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._suite")
    parser.add_argument("--child", required=True, metavar="MODULE")
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    result = run_in_process(args.group, args.child, args.quick)
    payload = {
        "status": result.status,
        "rows": result.rows,
        "peak_rss_mib": peak_rss_mib(),
        "error": result.error,
        "output": result.output,
    }
    args.out.write_text(json.dumps(payload, allow_nan=False))
    return 1 if result.crashed else 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
