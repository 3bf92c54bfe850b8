"""``python -m benchmarks``: every benchmark group, one table, results.json, results.md, chart.png.

    python -m benchmarks [--quick] [--group NAME ...] [--output DIR]

Groups: storage, engine, durable, security, executors, scaling, peer, postgres
(all by default; postgres needs a server, see ``bench_postgres``). Each group
runs in its own process. The exit status is 1 only when a group crashed
(missing, raised, died or hung): a figure that misses its target is reported,
never a failure, so CI can run ``--quick`` on noisy machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import _chart, _report
from benchmarks._suite import GROUPS, run_groups

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen groups, print the table, write the three files; 1 if a group crashed."""
    given = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (CI)")
    parser.add_argument(
        "--group",
        action="extend",
        nargs="+",
        choices=list(GROUPS),
        metavar="NAME",
        help=f"run only these groups ({', '.join(GROUPS)}); repeatable",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help="where results.json, results.md and chart.png go (default: benchmarks/results)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the groups in this process (for debugging; peak memory is then not per group)",
    )
    args = parser.parse_args(given)
    groups = list(dict.fromkeys(args.group or GROUPS))
    console = _report.console()
    command = _report.command_line(given)
    machine = _report.machine_info()
    start = time.perf_counter()
    results = run_groups(
        groups,
        quick=args.quick,
        isolate=not args.in_process,
        progress=lambda text: console.print(f"[dim]{text}[/]"),
    )
    elapsed = time.perf_counter() - start
    mode = "quick" if args.quick else "full"
    title = (
        f"taskloom benchmarks ({mode}) — {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['date']}"
    )
    _report.print_table(console, results, title)
    for result in results:
        if result.crashed:
            console.print(f"\n[bold red]{result.group} crashed[/] ({result.module}):")
            console.print(result.error or "", markup=False, highlight=False)
    args.output.mkdir(parents=True, exist_ok=True)
    _report.write_json(
        args.output / "results.json", results, quick=args.quick, command=command, machine=machine
    )
    (args.output / "results.md").write_text(
        _report.markdown(results, command=command, machine=machine)
    )
    skipped = _chart.draw(_report.all_rows(results), args.output / "chart.png", title=title)
    if skipped is not None:
        console.print(f"[yellow]chart skipped:[/] {skipped}")
    crashed = [result.group for result in results if result.crashed]
    console.print(
        f"{len(results)} group(s) in {elapsed:.1f} s; wrote {args.output}/results.json, "
        f"results.md{'' if skipped else ', chart.png'}"
        + (f"; CRASHED: {', '.join(crashed)}" if crashed else "")
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
