"""The CLI with waiting steps: `taskloom run` pauses with the command to go on,
`taskloom input` provides the value, `taskloom runs --status waiting` lists them."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taskloom.sdk._cli.main import main

PIPELINE = {
    "taskloom": "pipeline/v1",
    "name": "ask",
    "steps": [
        {
            "id": "topic",
            "input": {
                "prompt": "what about?",
                "schema": {
                    "type": "object",
                    "properties": {"topic": {"type": "string"}},
                    "required": ["topic"],
                },
            },
        },
        {"id": "ok", "approval": {"prompt": "go on with {{steps.topic.output.topic}}?"}},
        {"id": "write", "prompt": "write about {{steps.topic.output.topic}}"},
    ],
}


class Done:
    """What one in-process invocation left behind."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def document(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli(*args)`` runs ``taskloom`` in a fresh home with the waiting pipeline at hand."""
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    work = tmp_path / "work"
    work.mkdir()
    (work / "ask.json").write_text(json.dumps(PIPELINE))
    monkeypatch.chdir(work)

    def run(*args: str) -> Done:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        code = main(list(args))
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    return run


def test_run_waits_and_prints_the_command(cli: Any) -> None:
    """`taskloom run` exits 0 with status waiting and the exact `taskloom input` command."""
    done = cli("run", "ask.json", "--json")
    assert done.code == 0, done.err
    data = done.document()
    assert data["status"] == "waiting"
    run_id = data["run_id"]
    assert data["waiting"] == [
        {"step_id": "topic", "command": f"taskloom input {run_id} topic --value JSON"}
    ]
    shown = cli("show", run_id[:10])
    assert shown.code == 0 and "status: waiting" in shown.out
    assert f"taskloom input {run_id} topic --value JSON" in shown.out
    human = cli("runs", "--status", "waiting")
    assert human.code == 0 and run_id[:8] in human.out
    listed = cli("runs", "--status", "waiting", "--json").document()
    assert [r["run_id"] for r in listed] == [run_id]


def test_input_continues_to_the_approval_then_to_the_end(cli: Any) -> None:
    """`taskloom input` (by a prefix of the run id) provides each value in turn; the
    approval's command shows an approve decision; the run then succeeds."""
    run_id = cli("run", "ask.json", "--json").document()["run_id"]
    human = cli("input", run_id[:10], "topic", "--value", '{"topic": "owls"}')
    assert human.code == 0, human.err
    command = f"taskloom input {run_id} ok --value " + shlex.quote(
        '{"decision": "approve", "comment": ""}'
    )
    assert command in human.out
    done = cli("input", run_id, "ok", "--value", '{"decision": "approve"}', "--json")
    assert done.code == 0, done.err
    assert done.document()["status"] == "succeeded"
    events = cli("events", run_id, "--json").document()
    provided = [e for e in events if e["type"] == "step.input_provided"]
    assert [e["step_id"] for e in provided] == ["topic", "ok"]
    assert all(e["by"] for e in provided)
    assert [e["step_id"] for e in events if e["type"] == "step.waiting"] == ["topic", "ok"]


def test_input_errors_are_one_line_usage_errors(cli: Any) -> None:
    """A value that is not JSON, of the wrong shape, for a step that does not wait, or
    given twice: exit 2 with one error line; an unknown run too."""
    run_id = cli("run", "ask.json", "--json").document()["run_id"]
    cases = [
        (("topic", "--value", "not json"), "must be JSON"),
        (("topic", "--value", '{"topic": 3}'), "refused at $.topic"),
        (("ok", "--value", '{"decision": "approve"}'), "not waiting"),
        (("write", "--value", "1"), "waits for a value"),
    ]
    for args, expected in cases:
        done = cli("input", run_id, *args)
        assert done.code == 2, (args, done.err)
        lines = [line for line in done.err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.err, done.err
        assert expected in lines[0] or expected in done.err, (args, lines[0])
    assert cli("input", run_id, "topic", "--value", '{"topic": "x"}').code == 0
    again = cli("input", run_id, "topic", "--value", '{"topic": "y"}', "--json")
    assert again.code == 2 and again.document()["error"]["type"] == "AlreadyProvided"
    assert cli("input", "nosuchrun", "topic", "--value", "1").code == 2


def test_reject_fails_the_run_with_exit_1(cli: Any) -> None:
    """Rejecting the approval fails the run: exit 1, status failed, the comment shown."""
    run_id = cli("run", "ask.json", "--json").document()["run_id"]
    cli("input", run_id, "topic", "--value", '{"topic": "x"}')
    done = cli(
        "input", run_id, "ok", "--value", '{"decision": "reject", "comment": "no way"}', "--json"
    )
    assert done.code == 1
    data = done.document()
    assert data["status"] == "failed" and "no way" in data["error"]["message"]


def test_waiting_run_is_provided_from_another_process(tmp_path: Path) -> None:
    """Two real processes: one runs to the waiting step, the next provides the value."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    (work / "ask.json").write_text(json.dumps(PIPELINE))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLOOM_", "HYPOTHESIS"))}
    env["TASKLOOM_HOME"] = str(home)

    def taskloom(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskloom.sdk._cli.main", *args, "--json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ran = taskloom("run", "ask.json")
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    first = taskloom("input", run_id, "topic", "--value", '{"topic": "bees"}')
    assert first.returncode == 0 and json.loads(first.stdout)["status"] == "waiting"
    second = taskloom("input", run_id, "ok", "--value", '{"decision": "approve"}')
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["status"] == "succeeded"
