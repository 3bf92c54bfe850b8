"""Running the ``taskloom`` command in a test: its own home, config and working directory.

``Cli`` is the one harness the CLI story, queue and PostgreSQL tests share; ``run_one_
queued_run`` starts a ``taskloom worker``, waits until a submitted run succeeds, stops the
worker with SIGTERM and returns its JSON summary and output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Cli:
    """Runs ``taskloom`` in its own home, config and working directory."""

    def __init__(self, home: Path, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TASKLOOM_", "HYPOTHESIS"))
        }
        self.env.update(
            HOME=str(home),
            TASKLOOM_HOME=str(home / ".taskloom"),
            TASKLOOM_KEY_PASSPHRASE="correct horse battery staple",
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local/share"),
            COLUMNS="200",
        )

    def argv(self, *args: str) -> list[str]:
        """The command line that runs ``taskloom ARGS`` with this interpreter."""
        return [sys.executable, "-m", "taskloom.sdk._cli.main", *args]

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def json(self, *args: str) -> Any:
        """The command's result: stdout must hold exactly one JSON document."""
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def run_one_queued_run(cli: Cli, run_id: str, *, timeout_s: float = 60) -> tuple[Any, str]:
    """Start ``taskloom worker``, wait for ``run_id`` to succeed, stop the worker with
    SIGTERM (it must exit 0); return its JSON summary and everything it printed."""
    worker = subprocess.Popen(
        cli.argv("worker", "--json"),
        cwd=cli.workdir,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout_s
        status = ""
        while time.monotonic() < deadline:
            runs = cli.json("runs")
            status = next(r["status"] for r in runs if r["run_id"] == run_id)
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
    return json.loads(out), out + err
