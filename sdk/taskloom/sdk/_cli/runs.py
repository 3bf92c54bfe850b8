"""CLI commands about runs: run, resume, runs, show, events, cancel, validate.

This module registers them; the commands that drive a pipeline live in
``taskloom.sdk._cli.drive`` and those that read stored runs in ``taskloom.sdk._cli.history``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from taskloom.sdk._cli.context import positive_int
from taskloom.sdk._cli.drive import provide, resume, run, validate
from taskloom.sdk._cli.history import TERMINAL, cancel, events, runs, show

__all__ = ["register"]


def register(add: Callable[..., Any]) -> None:
    cmd = add("run", "run a pipeline, with live progress, and print its output", run)
    cmd.add_argument("pipeline", help="a pipeline/v1 JSON file")
    cmd.add_argument(
        "-i",
        "--input",
        action="append",
        metavar="KEY=VALUE",
        help="an input (KEY=@FILE reads a file)",
    )
    _executor_option(cmd)
    cmd = add("resume", "continue a run that crashed or was cancelled", resume)
    cmd.add_argument("run_id")
    cmd.add_argument("--pipeline", help="the pipeline file (default: the one stored with the run)")
    cmd = add(
        "input",
        "give a waiting input or approval step its value and continue the run",
        provide,
    )
    cmd.add_argument("run_id", help="the run (a unique prefix of its id will do)")
    cmd.add_argument("step_id", help="the input or approval step that waits")
    cmd.add_argument(
        "--value",
        required=True,
        metavar="JSON",
        help='the value as JSON (@FILE reads it from a file); approval: \'{"decision": '
        '"approve"|"reject", "comment": "..."}\'',
    )
    cmd.add_argument("--by", help="who provides it, for the run's history (default: OS user)")
    cmd = add("runs", "list runs, newest first", runs)
    cmd.add_argument("--status", choices=["pending", "queued", "running", "waiting", *TERMINAL])
    cmd.add_argument("--pipeline", help="only runs of this pipeline name")
    cmd.add_argument("--limit", type=positive_int, default=20, help="at most this many runs")
    cmd = add("show", "show one run: steps, outputs, usage, timings", show)
    cmd.add_argument("run_id")
    cmd = add(
        "events",
        "print a run's events (--follow waits for more; with --json: one array, "
        "or with --follow one JSON document per line)",
        events,
    )
    cmd.add_argument("run_id")
    cmd.add_argument(
        "--follow", "-f", action="store_true", help="wait for new events until the run ends"
    )
    cmd.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    cmd = add("cancel", "cancel a run", cancel)
    cmd.add_argument("run_id")
    cmd = add("validate", "check a pipeline (and inputs) without running it", validate)
    cmd.add_argument("pipeline")
    cmd.add_argument("-i", "--input", action="append", metavar="KEY=VALUE")
    _executor_option(cmd)


def _executor_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "-e",
        "--executor",
        metavar="ID",
        help="the executor for steps that name none (overrides the pipeline's defaults)",
    )
