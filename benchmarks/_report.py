"""The suite's outputs: a rich table on the terminal, results.json and results.md.

Every figure is shown as measured, beside the baseline from the same run; the
ratio is always taskloom's figure over the baseline's (whether higher is better
depends on the unit: a rate wants a high ratio, a time a low one; the target says
which). Crashed groups appear in all three outputs, so that a missing group can
never pass for a fast one.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._suite import GroupResult, Row


def machine_info() -> dict[str, Any]:
    """Where and when the figures were measured: they mean nothing without it."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count()
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        load = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_1m": load,
        "usable_cpus": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "taskloom": _taskloom_version(),
        "commit": _git_commit(),
    }


def _taskloom_version() -> str | None:
    try:
        from taskloom.sdk import __version__
    except ImportError:
        return None
    return __version__


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


# --- formatting ------------------------------------------------------------------------------


def number(value: Any) -> str:
    """Three significant digits or so, thousands separated; '-' for no figure."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size == 0:
        return "0"
    return f"{value:.3g}"


def figure(value: Any, unit: Any) -> str:
    if value is None:
        return "-"
    return f"{number(value)} {unit or ''}".strip()


def ratio(value: Any) -> str:
    return "-" if value is None else f"{number(value)}x"


def holds(value: Any) -> str:
    if value is None:
        return "-"
    return "yes" if value else "NO"


def spread(value: Any) -> str:
    """(max - min) / median of the repeats, as the group modules give it, in percent."""
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:.0f}%"
    return str(value)


SPREAD_NOTE = (
    "spread: (max - min) / median of taskloom's repeats, in percent "
    "(- for a single measurement); ratio: taskloom / baseline"
)


# --- terminal ----------------------------------------------------------------------------------


def print_table(console: Console, results: Sequence[GroupResult], title: str) -> None:
    """One table for every group; crashed groups show their error's last line."""
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("group", style="cyan", no_wrap=True)
    table.add_column("measured")
    table.add_column("taskloom", justify="right")
    table.add_column("baseline (same run)", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("holds", justify="center")
    table.add_column("spread", justify="right")
    for result in results:
        if result.crashed:
            table.add_row(
                result.group, f"[bold red]CRASHED[/]: {_last_line(result.error)}", *[""] * 6
            )
            continue
        for row in result.rows:
            verdict = holds(row["holds"])
            style = {"yes": "green", "NO": "bold red"}.get(verdict, "")
            table.add_row(
                str(row["group"]),
                str(row["name"]),
                figure(row["value"], row["unit"]),
                figure(row["baseline"], row["baseline_unit"]),
                ratio(row["ratio"]),
                str(row["target"] or "-"),
                f"[{style}]{verdict}[/]" if style else verdict,
                spread(row["spread"]),
            )
    console.print(table)
    console.print(f"[dim]{SPREAD_NOTE}[/]")


def _last_line(error: str | None) -> str:
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error text"


# --- files -------------------------------------------------------------------------------------


def all_rows(results: Sequence[GroupResult]) -> list[Row]:
    return [row for result in results for row in result.rows]


def write_json(
    path: Path,
    results: Sequence[GroupResult],
    *,
    quick: bool,
    command: str,
    machine: dict[str, Any],
) -> None:
    """results.json: the machine, every group's status and every row."""
    data = {
        "command": command,
        "quick": quick,
        "machine": machine,
        "groups": [result.to_json() for result in results],
        "crashed": [result.group for result in results if result.crashed],
        "rows": all_rows(results),
    }
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: Sequence[GroupResult], *, command: str, machine: dict[str, Any]) -> str:
    """results.md: the table for the README, with the command and the machine that made it."""
    lines = [
        f"Measured with `{command}` on {machine['date']}: {machine['cpu_count']} CPUs "
        f"({machine['usable_cpus']} usable), {machine['implementation']} {machine['python']}, "
        f"{machine['platform']}"
        + (
            f", load average {machine['load_average_1m']} at the start"
            if machine.get("load_average_1m") is not None
            else ""
        )
        + (f", taskloom {machine['taskloom']}" if machine.get("taskloom") else "")
        + (f" at {machine['commit']}" if machine.get("commit") else "")
        + ".",
        "",
        "| group | measured | taskloom | baseline (same run) | ratio | target | holds | spread |",
        "|---|---|---:|---:|---:|---|:---:|---:|",
    ]
    for result in results:
        if result.crashed:
            lines.append(
                f"| {result.group} | **CRASHED**: {_cell(_last_line(result.error))} | | | | | | |"
            )
            continue
        for row in result.rows:
            cells = [
                row["group"],
                row["name"],
                figure(row["value"], row["unit"]),
                figure(row["baseline"], row["baseline_unit"]),
                ratio(row["ratio"]),
                row["target"] or "-",
                holds(row["holds"]),
                spread(row["spread"]),
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", f"_{SPREAD_NOTE[0].upper()}{SPREAD_NOTE[1:]}._", ""]
    lines.append("| group | status | time | peak RSS |")
    lines.append("|---|---|---:|---:|")
    for result in results:
        rss = "-" if result.peak_rss_mib is None else f"{result.peak_rss_mib:,.0f} MiB"
        lines.append(f"| {result.group} | {result.status} | {result.seconds:.1f} s | {rss} |")
    return "\n".join(lines) + "\n"


def command_line(argv: Sequence[str]) -> str:
    shown = " ".join(argv)
    return f"python -m benchmarks{' ' + shown if shown else ''}"


def console() -> Console:
    """A console wide enough for the table even when the output is a pipe or a CI log."""
    width = None if sys.stdout.isatty() else 200
    return Console(width=width)
