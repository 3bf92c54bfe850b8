"""The CLI as a new user meets it: a subprocess in a fresh home directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import Cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "project"
    work.mkdir()
    shutil.copytree(EXAMPLES / "plugins" / "textkit", work / "plugins" / "textkit")
    (work / "plugins" / "textkit" / "taskloom-plugin.json").unlink()  # sign it ourselves
    shutil.copy(EXAMPLES / "plugin_pipeline.json", work / "pipeline.json")
    (work / "taskloom.toml").write_text('[plugins]\ndirs = ["plugins"]\ntrust = "trust.json"\n')
    return Cli(tmp_path / "home", work)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, "expected an error message on stderr"
    assert "Traceback" not in done.stderr
    return lines[-1]


def test_the_whole_story(cli: Cli) -> None:
    """Generate a key, sign, trust, run a plugin pipeline, list and show it, verify the audit."""
    key = cli.json("keys", "generate", "me")
    assert len(key["key_id"]) == 64
    assert cli.json("sign", "plugins/textkit", "--key", "me")["plugin"] == "textkit"
    assert cli.json("trust", "add", "me", "--plugins", "textkit")["key_id"] == key["key_id"]
    assert cli.json("verify", "plugins/textkit")["ok"] is True

    result = cli.json("run", "pipeline.json", "-i", "text=alpha beta beta gamma")
    assert result["status"] == "succeeded"
    assert result["output"]["counts"]["words"] == 4
    assert result["output"]["keywords"][0] == "beta"

    runs = cli.json("runs")
    assert [r["run_id"] for r in runs] == [result["run_id"]]
    shown = cli.json("show", result["run_id"])
    assert shown["run"]["status"] == "succeeded"
    assert {s["step"] for s in shown["steps"]} == {"count", "keywords", "summary"}

    human = cli("show", result["run_id"])
    assert human.returncode == 0 and result["run_id"] in human.stdout

    kinds = [event["type"] for event in cli.json("events", result["run_id"])]
    assert kinds[0] == "run.started" and kinds[-1] == "run.succeeded"

    audit = cli.json("audit", "verify")
    assert audit["ok"] is True and audit["entries"] >= 5
    actions = [e["action"] for e in cli.json("audit", "show")]
    assert actions[:3] == ["keys.generate", "plugin.sign", "trust.add"]


def test_tampered_plugin_is_refused_in_one_line(cli: Cli) -> None:
    """A plugin file changed after signing: verify fails with one line, exit 1."""
    cli.json("keys", "generate", "me")
    cli.json("sign", "plugins/textkit", "--key", "me")
    cli.json("trust", "add", "me", "--plugins", "textkit")
    source = cli.workdir / "plugins" / "textkit" / "src" / "_words.py"
    source.write_text(source.read_text() + "\nimport os  # planted\n")
    done = cli("verify", "plugins/textkit")
    assert done.returncode == 1
    assert "_words.py" in _one_line_error(done)
    ran = cli("run", "pipeline.json")
    assert ran.returncode == 2  # the pipeline names a step no loaded plugin provides
    assert "plugin textkit not loaded" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_untrusted_key_is_refused_in_one_line(cli: Cli) -> None:
    """A plugin signed by a key nobody trusted: one line, exit 1."""
    cli.json("keys", "generate", "me")
    cli.json("keys", "generate", "stranger")
    cli.json("sign", "plugins/textkit", "--key", "stranger")
    cli.json("trust", "add", "me", "--plugins", "textkit")
    done = cli("verify", "plugins/textkit")
    assert done.returncode == 1
    assert "signature" in _one_line_error(done).lower()


def test_plugin_asking_for_undeclared_secret_is_refused(cli: Cli) -> None:
    """A plugin whose setup asks for a secret it did not declare does not load."""
    code = cli.workdir / "plugins" / "textkit" / "src" / "textkit.py"
    code.write_text(
        code.read_text().replace(
            "    async def setup(self, context: Any) -> None:\n",
            "    async def setup(self, context: Any) -> None:\n"
            '        await context.secret("openai_api_key")\n',
        )
    )
    cli.json("keys", "generate", "me")
    cli.json("sign", "plugins/textkit", "--key", "me")
    cli.json("trust", "add", "me", "--plugins", "textkit")
    assert cli.json("verify", "plugins/textkit")["ok"] is True  # signed fine...
    listed = cli("plugins", "list", "--json")
    assert listed.returncode == 1
    (report,) = json.loads(listed.stdout)
    assert report["loaded"] is False
    assert "openai_api_key" in report["error"] and "declare" in report["error"]


def test_usage_errors_exit_2_with_one_line(cli: Cli) -> None:
    """Bad arguments and bad files are usage errors: exit 2, one line, no traceback."""
    for args in (
        ("run",),
        ("run", "missing.json"),
        ("bogus-command",),
        ("run", "pipeline.json", "-i", "novalue"),
    ):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        _one_line_error(done)
    (cli.workdir / "bad.json").write_text('{"taskloom": "pipeline/v1", "name": "x", "steps": [')
    done = cli("validate", "bad.json")
    assert done.returncode == 2 and "not valid JSON" in done.stderr


def test_debug_shows_the_traceback(cli: Cli) -> None:
    """--debug adds the full traceback to an error."""
    done = cli("run", "missing.json", "--debug")
    assert done.returncode == 2 and "Traceback" in done.stderr


def test_secret_values_never_come_from_argv_and_are_masked(cli: Cli) -> None:
    """secrets set reads stdin; get masks unless --reveal; list shows names only."""
    cli.env["TASKLOOM_SECRETS_PASSPHRASE"] = "another long passphrase"
    done = cli("secrets", "set", "api_token", stdin="tok-1234567890\n")
    assert done.returncode == 0, done.stderr
    assert cli.json("secrets", "list") == ["api_token"]
    masked = cli.json("secrets", "get", "api_token")
    assert masked["value"] != "tok-1234567890" and "tok-" not in masked["value"]
    assert cli.json("secrets", "get", "api_token", "--reveal")["value"] == "tok-1234567890"
    assert cli.json("secrets", "delete", "api_token")["deleted"] is True


def test_no_secret_store_fails_closed_in_one_line(cli: Cli) -> None:
    """Without keyring or passphrase, secrets commands refuse with a how-to, never plaintext."""
    done = cli("secrets", "set", "api_token", stdin="value\n")
    assert done.returncode == 1
    assert "TASKLOOM_SECRETS_PASSPHRASE" in _one_line_error(done)


def test_cancel_stops_a_run_in_another_process_and_resume_finishes_it(cli: Cli) -> None:
    """`taskloom cancel` stops a run another process is executing; `resume` completes it."""
    import time as _time

    (cli.workdir / "taskloom.toml").write_text(
        '[engine]\nlease_ttl_s = 1.5\n\n[executors.slow]\ntype = "scripted"\nlatency_s = 0.2\n'
    )
    steps = [{"id": f"s{i}", "prompt": f"step {i}"} for i in range(40)]
    pipeline = {"taskloom": "pipeline/v1", "name": "long", "steps": steps}
    (cli.workdir / "long.json").write_text(json.dumps(pipeline))
    running = subprocess.Popen(
        [sys.executable, "-m", "taskloom.sdk._cli.main", "run", "long.json", "--json"],
        cwd=cli.workdir,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = None
        deadline = _time.monotonic() + 60
        while run_id is None and _time.monotonic() < deadline:
            listed = cli.json("runs")
            if listed and listed[0]["status"] == "running":
                run_id = listed[0]["run_id"]
            else:
                _time.sleep(0.2)
        assert run_id is not None, "the run never showed up as running"
        assert cli.json("cancel", run_id)["status"] == "cancelled"
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled"
    shown = cli.json("show", run_id)
    assert shown["run"]["status"] == "cancelled"
    assert len(shown["steps"]) < 40
    kinds = [e["type"] for e in cli.json("events", run_id)]
    outcomes = [k for k in kinds if k in ("run.succeeded", "run.failed", "run.cancelled")]
    assert outcomes == ["run.cancelled"] and kinds[-1] == "run.cancelled"  # one, and last
    resumed = cli.json("resume", run_id)
    assert resumed["status"] == "succeeded"
    assert len(cli.json("show", run_id)["steps"]) == 40


def test_cancel_of_a_killed_run_then_resume_works_at_once(cli: Cli) -> None:
    """A `taskloom run` killed with SIGKILL leaves a live lease; `taskloom cancel` takes the
    run over once a renewal is missed, records it cancelled with one outcome event, and
    `taskloom resume` then finishes it without waiting for any lease."""
    import signal
    import time as _time

    (cli.workdir / "taskloom.toml").write_text(
        '[engine]\nlease_ttl_s = 3\n\n[executors.slow]\ntype = "scripted"\nlatency_s = 0.2\n'
    )
    steps = [{"id": f"s{i}", "prompt": f"step {i}"} for i in range(30)]
    (cli.workdir / "long.json").write_text(
        json.dumps({"taskloom": "pipeline/v1", "name": "long", "steps": steps})
    )
    running = subprocess.Popen(
        [sys.executable, "-m", "taskloom.sdk._cli.main", "run", "long.json", "--json"],
        cwd=cli.workdir,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_id = None
        deadline = _time.monotonic() + 60
        while run_id is None and _time.monotonic() < deadline:
            listed = cli.json("runs")
            if listed and listed[0]["status"] == "running":
                run_id = listed[0]["run_id"]
            else:
                _time.sleep(0.2)
        assert run_id is not None, "the run never showed up as running"
        running.send_signal(signal.SIGKILL)
        running.wait(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
    cancelled = cli.json("cancel", run_id[:8])
    assert cancelled["status"] == "cancelled" and cancelled["was_running_in"] is None
    kinds = [e["type"] for e in cli.json("events", run_id)]
    assert [k for k in kinds if k in ("run.succeeded", "run.failed", "run.cancelled")] == [
        "run.cancelled"
    ]
    resumed = cli.json("resume", run_id)
    assert resumed["status"] == "succeeded"
