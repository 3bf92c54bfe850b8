"""What every group module shares that is not taskloom: statistics, rows, timing, the CLI.

Kept free of taskloom imports so that a group can still load (and report what it
leaves out) when part of taskloom cannot be imported. Each group module keeps its
own measurements; this module only holds the arithmetic and plumbing they all
repeated: the median and spread of repeats, the result-row dict the suite reads,
timing an awaitable after a warm-up, and ``main()`` printing a table and writing
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where ``python -m benchmarks.<name>`` writes ``<name>.json``."""


def median_spread(samples: Sequence[float]) -> tuple[float, float]:
    """The median and the relative spread (max - min) / median of repeated measurements."""
    median = statistics.median(samples)
    return median, ((max(samples) - min(samples)) / median if median else 0.0)


def _rounded(number: float | None, digits: int) -> float | None:
    return None if number is None else round(number, digits)


def make_row(
    group: str,
    name: str,
    value: float | None,
    unit: str,
    baseline: float | None,
    baseline_unit: str,
    *,
    ratio: float | None = None,
    target: str = "-",
    holds: bool | None = None,
    spread: float | None = 0.0,
    digits: int = 4,
    ratio_digits: int | None = None,
) -> Row:
    """One result row in the shape every group module returns.

    ``ratio`` defaults to value / baseline (None when either is missing or the
    baseline is zero); a group passes its own when it is not that quotient (the
    median of paired ratios, say). ``digits`` rounds value and baseline, and the
    ratio too unless ``ratio_digits`` says otherwise; the spread keeps 3 digits.
    """
    if ratio is None and value is not None and baseline:
        ratio = value / baseline
    return {
        "group": group,
        "name": name,
        "value": _rounded(value, digits),
        "unit": unit,
        "baseline": _rounded(baseline, digits),
        "baseline_unit": baseline_unit,
        "ratio": _rounded(ratio, digits if ratio_digits is None else ratio_digits),
        "target": target,
        "holds": holds,
        "spread": _rounded(spread, 3),
    }


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    """Wall seconds of one awaited ``call()``."""
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def samples(
    measure: Callable[[], Awaitable[float]], repeats: int, *, warmup: int = 1
) -> list[float]:
    """``repeats`` results of ``measure()`` after ``warmup`` discarded ones."""
    for _ in range(warmup):
        await measure()
    return [await measure() for _ in range(repeats)]


# --- the command line of a group module --------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


_COLUMNS = ("name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "holds")
_NUMERIC = {"value", "baseline", "ratio"}


def print_table(rows: Sequence[Row]) -> None:
    """The rows as a plain aligned table, one line each (the suite draws the rich one)."""
    cells = [[_cell(row.get(key)) for key in _COLUMNS] + [_cell(row.get("spread"))] for row in rows]
    header = [*_COLUMNS, "spread"]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        print(
            "  ".join(
                cell.rjust(width) if key in _NUMERIC else cell.ljust(width)
                for key, cell, width in zip(header, line, widths, strict=True)
            ).rstrip()
        )


def parser(
    doc: str | None, quick_help: str = "fewer repeats, under a minute"
) -> argparse.ArgumentParser:
    """The ``--quick`` parser every group module starts from (some add hidden options)."""
    found = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    found.add_argument("--quick", action="store_true", help=quick_help)
    return found


def report(name: str, run: Callable[[bool], list[Row]], quick: bool) -> int:
    """Run the group, print its table, write ``results/<name>.json``; the exit status."""
    start = time.perf_counter()
    rows = run(quick)
    print_table(rows)
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"quick": quick, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


def main(
    name: str,
    doc: str | None,
    run: Callable[[bool], list[Row]],
    argv: list[str] | None = None,
    *,
    quick_help: str = "fewer repeats, under a minute",
) -> int:
    """``python -m benchmarks.<name> [--quick]`` for a group with no options of its own."""
    args = parser(doc, quick_help).parse_args(argv)
    return report(name, run, args.quick)
