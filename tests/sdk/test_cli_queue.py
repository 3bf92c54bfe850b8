"""The queue on the command line: submit, queue, and a worker stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """Runs ``taskloom`` in its own home and working directory."""

    def __init__(self, home: Path, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TASKLOOM_", "HYPOTHESIS"))
        }
        self.env.update(
            HOME=str(home),
            TASKLOOM_HOME=str(home / ".taskloom"),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local/share"),
            COLUMNS="200",
        )

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "taskloom.sdk._cli.main", *args]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


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
    worker = subprocess.Popen(
        cli.argv("worker", "--json"),
        cwd=cli.workdir,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            runs = cli.json("runs")
            status = next(r["status"] for r in runs if r["run_id"] == submitted["run_id"])
            if status == "succeeded":
                break
            time.sleep(0.3)
        assert status == "succeeded"
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    summary = json.loads(out)
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
