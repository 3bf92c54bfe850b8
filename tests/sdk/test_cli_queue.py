"""The queue on the command line: submit, queue, and a worker stopped by SIGTERM."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_support import Cli, run_one_queued_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "hello.json", work / "hello.json")
    return Cli(tmp_path / "home", work)


def test_submit_then_queue_shows_it_and_a_worker_runs_it(cli: Cli) -> None:
    """submit queues a run (nothing runs), queue shows depth 1, a worker runs it and stops
    on SIGTERM with a summary."""
    submitted = cli.json("submit", "hello.json", "-i", "name=Ada", "--idempotency-key", "k1")
    again = cli.json("submit", "hello.json", "-i", "name=Ada", "--idempotency-key", "k1")
    assert submitted["run_id"] == again["run_id"]
    shown = cli.json("queue")["queues"]
    assert shown[0]["queue"] == "default" and shown[0]["depth"] == 1
    summary, _printed = run_one_queued_run(cli, submitted["run_id"])
    assert summary["claimed"] == 1 and summary["succeeded"] == 1
    assert cli.json("queue")["queues"][0]["depth"] == 0


def test_submit_to_unknown_queue_is_a_usage_error(cli: Cli) -> None:
    """An unknown queue exits 2 naming the queue and how to define it; nothing is queued."""
    done = cli("submit", "hello.json", "-i", "name=Ada", "--queue", "nope")
    assert done.returncode == 2, done.stderr
    assert "nope" in done.stderr and "--define" in done.stderr
    assert cli.json("queue")["queues"][0]["depth"] == 0


def test_submit_prints_the_run_id_alone_on_stdout(cli: Cli) -> None:
    """Without --json, stdout holds just the run id (for RUN=$(taskloom submit ...))."""
    done = cli("submit", "hello.json", "-i", "name=Ada", "--run-id", "r-cli-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "r-cli-1"
    assert "taskloom worker" in done.stderr


def test_queue_define_sets_limits(cli: Cli) -> None:
    """queue --define stores a queue with its concurrency; submit then accepts it."""
    shown = cli.json("queue", "--define", "batch", "--concurrency", "2")["queues"]
    batch = next(q for q in shown if q["queue"] == "batch")
    assert batch["concurrency"] == 2
    assert cli.json("submit", "hello.json", "-i", "name=x", "--queue", "batch")["queue"] == "batch"
