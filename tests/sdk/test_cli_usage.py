"""The CLI against a demanding new user: every --json is one document, every error one line.

Most cases call ``main()`` in-process (fast); the ones that could hang run a
subprocess with a timeout.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from taskloom.contracts import InvalidRequest, Secret
from taskloom.sdk._cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Done:
    """What one in-process invocation left behind."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def document(self) -> Any:
        """stdout holds exactly one JSON document (json.loads refuses anything extra)."""
        return json.loads(self.out)

    def error_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, self.err
        assert "Traceback" not in self.err
        return lines[0]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli(*args, stdin=None)`` runs ``taskloom`` in a fresh home and working directory."""
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "80")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLES / "hello.json", work / "hello.json")
    shutil.copy(EXAMPLES / "map_documents.json", work / "map.json")
    (work / "binary.dat").write_bytes(b"\xd0\x00\xff binary")
    monkeypatch.chdir(work)

    def run(*args: str, stdin: str | None = None) -> Done:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main(list(args))
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    return run


def test_every_json_output_is_exactly_one_document(cli: Any) -> None:
    """Each command's --json stdout parses as one JSON document, success or not."""
    ran = cli("run", "hello.json", "--json")
    assert ran.code == 0 and ran.document()["status"] == "succeeded"
    run_id = ran.document()["run_id"]
    for args in (
        ("runs",),
        ("show", run_id),
        ("events", run_id),
        ("validate", "hello.json"),
        ("keys", "list"),
        ("trust", "list"),
        ("plugins", "list"),
        ("plugins", "verify"),
        ("audit", "verify"),
        ("audit", "show"),
        ("config", "show"),
        ("show", "no-such-run"),
        ("run", "missing.json"),
        ("keys",),
        ("secrets", "list"),
    ):
        done = cli(*args, "--json")
        assert isinstance(done.document(), dict | list), (args, done.out)
    events = cli("events", run_id, "--json").document()
    assert events[0]["type"] == "run.started" and events[-1]["type"] == "run.succeeded"


def test_global_options_work_before_the_command(cli: Any) -> None:
    """--config, --json and --debug before the command name are honoured, not dropped."""
    missing = cli("--config", "nowhere.toml", "runs")
    assert missing.code == 2 and "nowhere.toml" in missing.error_line()
    assert cli("--json", "runs").document() == []
    assert "Traceback" in cli("--debug", "show", "nope").err


def test_a_group_without_an_action_is_a_one_line_usage_error(cli: Any) -> None:
    """'taskloom keys' names the actions in one line, exit 2 (JSON error with --json)."""
    done = cli("keys")
    assert done.code == 2 and "generate, list" in done.error_line() and done.out == ""
    as_json = cli("trust", "--json")
    assert as_json.code == 2 and as_json.document()["error"]["type"] == "CliUsageError"
    bare = cli("--json")
    assert bare.code == 2 and "give a command" in bare.document()["error"]["message"]
    assert cli().code == 0  # no arguments at all: the help


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("run", "missing.json"), 2, "does not exist"),
        (("run", "."), 2, "cannot read pipeline"),
        (("run", "hello.json", "-i", "novalue"), 2, "key=value"),
        (("run", "hello.json", "-i", "=x"), 2, "key=value"),
        (("run", "hello.json", "-i", "name=@nofile.txt"), 2, "cannot read nofile.txt"),
        (("run", "hello.json", "-i", "name=@binary.dat"), 2, "not UTF-8 text"),
        (("run", "hello.json", "-i", "name=@"), 2, "give a file after '@'"),
        (("run", "hello.json", "-i", "nobody=1"), 2, "unknown input"),
        (("run", "map.json", "-i", "documents=notjson"), 2, "give it as JSON"),
        (("show", "no-such-run"), 2, "no run 'no-such-run'"),
        (("events", "no-such-run"), 2, "no run 'no-such-run'"),
        (("cancel", "no-such-run"), 2, "no run 'no-such-run'"),
        (("runs", "--limit", "x"), 2, "not a whole number"),
        (("runs", "--status", "bogus"), 2, "invalid choice"),
        (("frobnicate",), 2, "invalid choice"),
        (("trust", "remove", "zzz"), 2, "no trusted key"),
        (("trust", "add", "nokey", "--plugins", "x"), 2, "no public key 'nokey'"),
        (("runs", "--limit", "-1"), 2, "at least 1"),
        (("audit", "show", "--limit", "0"), 2, "at least 1"),
        (("run", "hello.json", "--executor", "nope"), 2, "unknown executor 'nope'"),
        (("sign", "nowhere", "--key", "k"), 2, "plugin.toml not found"),
        (("verify", "nowhere"), 2, "sign it first"),
    ],
)
def test_bad_input_is_one_line_with_the_right_exit_code(
    cli: Any, args: tuple[str, ...], code: int, fragment: str
) -> None:
    """Bad arguments, files and ids: one line on stderr, exit 2, nothing on stdout."""
    done = cli(*args)
    assert done.code == code, done.err
    assert fragment in done.error_line()
    assert done.out == ""


def test_invalid_json_pipeline(cli: Any, tmp_path: Path) -> None:
    """A pipeline that is not JSON, or not an object, is a usage error naming the file."""
    Path("bad.json").write_text('{"taskloom": ')
    Path("list.json").write_text("[1]")
    assert "not valid JSON" in cli("run", "bad.json").error_line()
    assert "JSON object" in cli("validate", "list.json").error_line()


def test_a_failed_run_reports_its_run_id(cli: Any) -> None:
    """A run that fails prints its id (JSON: run_id, status, error), exit 1; show finds it."""
    done = cli("run", "map.json", "-i", "documents=[1, 2]", "--json")
    assert done.code == 1
    document = done.document()
    assert document["status"] == "failed" and document["error"]["type"] == "StepFailed"
    shown = cli("show", document["run_id"], "--json").document()
    assert shown["run"]["status"] == "failed"
    human = cli("run", "map.json", "-i", "documents=[1, 2]")
    assert human.code == 1 and "taskloom show" in human.err and "Traceback" not in human.err


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("[bogus]\n", "unknown section"),
        ("[plugins]\ndir = ['plugins']\n", "unknown key(s) dir in [plugins]"),
        ("[storage]\nkind = 'redis'\n", "'redis'"),
        ("[storage]\npaht = 'x.db'\n", "unknown key(s) paht in [storage]"),
        ("[engine]\nmax_concurrency = 0\n", "max_concurrency"),
        ("[executors.x]\nmodel = 'm'\n", "'type'"),
        ("[plugins]\ndev_mode = 'yes'\n", "dev_mode"),
        ("not toml [", "cannot read config"),
    ],
)
def test_a_bad_config_is_a_one_line_usage_error(cli: Any, config: str, fragment: str) -> None:
    """A config with a bad section, key or value stops every command with one line, exit 2."""
    Path("taskloom.toml").write_text(config)
    done = cli("runs")
    assert done.code == 2 and fragment in done.error_line()


def test_a_literal_credential_in_the_config_is_masked(cli: Any) -> None:
    """config show never prints an api_key written literally into the config."""
    Path("taskloom.toml").write_text(
        "[executors.x]\ntype = 'openai'\napi_key = 'sk-live-1234567890'\nmax_tokens = 5\n"
    )
    done = cli("config", "show", "--json")
    assert "sk-live-1234567890" not in done.out + done.err
    assert done.document()["executors"]["x"]["max_tokens"] == 5


def test_tables_keep_run_ids_whole(cli: Any) -> None:
    """In an 80-column table the run id stays on one line, so it can be copied."""
    run_id = cli("run", "hello.json", "--json").document()["run_id"]
    assert run_id in cli("runs").out


class _LeakyExecutor:
    """An executor whose error text contains its API key (a careless provider)."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    async def complete(self, request: Any, /) -> Any:
        raise InvalidRequest(f"bad request with key {self._key.reveal()}")

    def stream(self, request: Any, /) -> Any:
        raise InvalidRequest(f"bad request with key {self._key.reveal()}")

    async def aclose(self) -> None:
        return None


async def _leaky(settings: Mapping[str, Any], secrets: Any) -> _LeakyExecutor:
    return _LeakyExecutor(await secrets.get(settings["api_key"]["secret"]))


def test_secret_values_never_reach_output_or_errors(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret read by an executor is masked in the failed run's JSON and stderr; set reads
    stdin; get masks unless --reveal."""
    from taskloom.sdk import _registry

    monkeypatch.setitem(_registry._EXECUTOR_TYPES, "leaky", _leaky)
    monkeypatch.setenv("TASKLOOM_SECRETS_PASSPHRASE", "a long test passphrase")
    value = "tok-5f2e9a8b7c6d"
    assert cli("secrets", "set", "api", stdin=value + "\n").code == 0
    Path("taskloom.toml").write_text(
        "[executors.leak]\ntype = 'leaky'\napi_key = { secret = 'api' }\n"
    )
    done = cli("run", "hello.json", "--json")
    assert done.code == 1 and done.document()["status"] == "failed"
    assert value not in done.out + done.err
    human = cli("run", "hello.json")
    assert human.code == 1 and value not in human.out + human.err
    assert value not in cli("secrets", "get", "api", "--json").out
    assert cli("secrets", "get", "api", "--reveal", "--json").document()["value"] == value
    assert value not in cli("audit", "show", "--json").out
    assert cli("secrets", "get", "nope").code == 2  # an unknown name, like an unknown run id
    assert "invalid secret name" in cli("secrets", "get", "bad name!").error_line()


def _subprocess(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """taskloom as its own process (no pytest log capture), in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
    env["TASKLOOM_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-m", "taskloom.sdk._cli.main", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_plugin_failure_is_reported_once(tmp_path: Path) -> None:
    """A plugin that does not load gets one note on stderr, not a second log line."""
    shutil.copytree(EXAMPLES / "plugins" / "textkit", tmp_path / "plugins" / "textkit")
    shutil.copy(EXAMPLES / "hello.json", tmp_path / "hello.json")
    (tmp_path / "taskloom.toml").write_text("[plugins]\ndirs = ['plugins']\n")
    done = _subprocess(tmp_path, "validate", "hello.json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("textkit") == 1, done.stderr


def test_resume_of_an_unknown_run_ends(tmp_path: Path) -> None:
    """Resuming a run id that does not exist ends at once with exit 2 (it used to hang)."""
    done = _subprocess(tmp_path, "resume", "no-such-run", "--json")
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["error"]["type"] == "RunNotFound"
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr


FAKE_SUITE = """
import argparse, json, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--output", type=pathlib.Path)
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
print("a table for humans")
args.output.mkdir(parents=True, exist_ok=True)
(args.output / "results.json").write_text(json.dumps({"groups": ["fake"], "quick": args.quick}))
"""


def test_bench_json_is_one_document(cli: Any) -> None:
    """bench --json: the suite's table goes to stderr, stdout holds its results.json."""
    Path("pyproject.toml").write_text("[project]\nname = 'checkout'\n")
    Path("benchmarks").mkdir()
    Path("benchmarks/__init__.py").write_text("")
    Path("benchmarks/__main__.py").write_text(FAKE_SUITE)
    done = cli("bench", "--quick", "--json", "--output", "out")
    assert done.code == 0, done.err
    document = done.document()
    assert document["results"] == {"groups": ["fake"], "quick": True}
    assert Path(document["results_path"]) == Path("out/results.json").resolve()


def test_ctrl_c_during_a_run_leaves_one_document_and_a_cancelled_run(tmp_path: Path) -> None:
    """SIGINT while a run goes: exit 130, stdout one JSON document (cancelled, with the run id),
    and the stored run is cancelled, so resume can continue it."""
    import signal
    import time

    (tmp_path / "taskloom.toml").write_text(
        '[executors.slow]\ntype = "scripted"\nlatency_s = 0.2\n'
    )
    steps = [{"id": f"s{i}", "prompt": f"step {i}"} for i in range(300)]
    (tmp_path / "long.json").write_text(
        json.dumps({"taskloom": "pipeline/v1", "name": "long", "steps": steps})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
    env["TASKLOOM_HOME"] = str(tmp_path / "home")
    running = subprocess.Popen(
        [sys.executable, "-m", "taskloom.sdk._cli.main", "run", "long.json", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = _subprocess(tmp_path, "runs", "--json")
            if listed.returncode == 0 and json.loads(listed.stdout):
                break
            time.sleep(0.2)
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 130, err
    document = json.loads(out)
    assert document["status"] == "cancelled", out
    shown = _subprocess(tmp_path, "show", document["run_id"], "--json")
    assert json.loads(shown.stdout)["run"]["status"] == "cancelled"


def test_sign_refuses_a_bytecode_cache(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing a plugin whose src/ holds __pycache__ is refused with what to delete."""
    monkeypatch.setenv("TASKLOOM_KEY_PASSPHRASE", "a long key passphrase")
    shutil.copytree(EXAMPLES / "plugins" / "textkit", Path("textkit"))
    (Path("textkit") / "taskloom-plugin.json").unlink()
    cache = Path("textkit/src/__pycache__")
    cache.mkdir()
    (cache / "textkit.cpython-311.pyc").write_bytes(b"\x00")
    generated = cli("keys", "generate", "me")
    assert generated.code == 0, generated.err
    done = cli("sign", "textkit", "--key", "me")
    assert done.code == 2 and "__pycache__" in done.error_line()
    assert not (Path("textkit") / "taskloom-plugin.json").exists()


def test_a_printing_plugin_cannot_corrupt_json_output(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that prints in setup and in its step: --json stdout is still one document."""
    monkeypatch.setenv("TASKLOOM_KEY_PASSPHRASE", "a long key passphrase")
    shutil.copytree(EXAMPLES / "plugins" / "textkit", Path("plugins/textkit"))
    (Path("plugins/textkit") / "taskloom-plugin.json").unlink()
    code = Path("plugins/textkit/src/textkit.py")
    code.write_text(
        code.read_text().replace(
            "    async def setup(self, context: Any) -> None:\n",
            "    async def setup(self, context: Any) -> None:\n"
            "        print('hello from the plugin')\n",
        )
    )
    Path("taskloom.toml").write_text("[plugins]\ndirs = ['plugins']\ntrust = 'trust.json'\n")
    shutil.copy(EXAMPLES / "plugin_pipeline.json", Path("pipeline.json"))
    assert cli("keys", "generate", "me").code == 0
    assert cli("sign", "plugins/textkit", "--key", "me").code == 0
    assert cli("trust", "add", "me", "--plugins", "textkit").code == 0
    listed = cli("plugins", "list", "--json")
    assert listed.code == 0 and listed.document()[0]["loaded"] is True
    assert "hello from the plugin" in listed.err
    ran = cli("run", "pipeline.json", "-i", "text=a b b", "--json")
    assert ran.code == 0 and ran.document()["status"] == "succeeded"


def test_show_marks_a_truncated_step(cli: Any) -> None:
    """`taskloom show` gives each step's finish reason and marks a cut-off reply truncated."""
    Path("taskloom.toml").write_text(
        '[executors.cut]\ntype = "scripted"\nfinish_reason = "length"\n'
    )
    done = cli("run", "hello.json", "--json")
    assert done.code == 0, done.err
    run_id = done.document()["run_id"]
    shown = cli("show", run_id, "--json").document()
    assert {s["finish_reason"] for s in shown["steps"]} == {"length"}
    assert all(s["truncated"] for s in shown["steps"])
    human = cli("show", run_id)
    assert "truncated" in human.out and "length" in human.out


@pytest.mark.parametrize("json_mode", [False, True])
def test_sigterm_during_a_run_cancels_it_releases_the_lease_and_says_how_to_resume(
    tmp_path: Path, json_mode: bool
) -> None:
    """SIGTERM is handled like Ctrl-C: the run is recorded cancelled, its lease released (a
    resume right after works, with no 'held until'), and the resume command is printed."""
    import signal
    import time

    (tmp_path / "taskloom.toml").write_text(
        '[executors.slow]\ntype = "scripted"\nlatency_s = 0.05\n'
    )
    steps = [{"id": f"s{i}", "prompt": f"step {i}"} for i in range(200)]  # 10 s
    (tmp_path / "long.json").write_text(
        json.dumps({"taskloom": "pipeline/v1", "name": "long", "steps": steps})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
    env["TASKLOOM_HOME"] = str(tmp_path / "home")
    extra = ["--json"] if json_mode else []
    running = subprocess.Popen(
        [sys.executable, "-m", "taskloom.sdk._cli.main", "run", "long.json", *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = None
        deadline = time.monotonic() + 60
        while run_id is None and time.monotonic() < deadline:
            listed = _subprocess(tmp_path, "runs", "--json")
            if listed.returncode == 0 and json.loads(listed.stdout):
                run_id = json.loads(listed.stdout)[0]["run_id"]
            else:
                time.sleep(0.1)
        assert run_id is not None
        running.send_signal(signal.SIGTERM)
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 143, err
    assert f"taskloom resume {run_id}" in (out + err)
    assert "Traceback" not in err
    if json_mode:
        assert json.loads(out)["status"] == "cancelled"
    shown = _subprocess(tmp_path, "show", run_id, "--json")
    assert json.loads(shown.stdout)["run"]["status"] == "cancelled"
    if not json_mode:
        return
    resumed = _subprocess(tmp_path, "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"


def test_a_failing_audit_write_leaves_no_unretrieved_task_exception(
    cli: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit write fails while the run fails on its own: one error line, and no
    'Task exception was never retrieved' for the run's task afterwards."""
    import asyncio
    import gc
    import logging

    import taskloom.security as security
    from taskloom.adapters.scripted import ScriptedExecutor
    from taskloom.contracts import StorageUnavailable

    async def failing_append(self: Any, **_fields: Any) -> None:
        await asyncio.sleep(0.2)  # the run fails meanwhile
        raise StorageUnavailable("the audit log's disk is gone")

    original_init = ScriptedExecutor.__init__

    def failing_executor(self: ScriptedExecutor, *args: Any, **kwargs: Any) -> None:
        kwargs.update(fail_first=100, error=InvalidRequest("refused"))
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(security.AuditLog, "append", failing_append)
    monkeypatch.setattr(ScriptedExecutor, "__init__", failing_executor)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        done = cli("run", "hello.json")
        gc.collect()
    assert done.code == 1
    assert "audit log's disk is gone" in done.error_line()
    assert "never retrieved" not in caplog.text + done.err


def _runs(cli: Any) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = cli("runs", "--json").document()
    return listed


MARKUP = "[echo] said [bold]hi[/bold] :smile: [/oops]"


def test_model_output_is_data_never_markup(cli: Any) -> None:
    """A reply holding rich markup prints as written in run, show, events and runs: '[echo]'
    stays, '[/oops]' cannot crash the command, ':smile:' stays text."""
    Path("taskloom.toml").write_text(f"[executors.s]\ntype = 'scripted'\nreplies = ['{MARKUP}']\n")
    Path("p.json").write_text(
        json.dumps(
            {
                "taskloom": "pipeline/v1",
                "name": "[red]p[/red]",
                "steps": [{"id": "a", "prompt": "x"}],
            }
        )
    )
    ran = cli("run", "p.json", "-e", "s")
    assert ran.code == 0, ran.err
    assert MARKUP in ran.out
    run_id = _runs(cli)[0]["run_id"]
    for args in (("show", run_id), ("events", run_id), ("runs",)):
        done = cli(*args)
        assert done.code == 0, done.err
        assert "MarkupError" not in done.err and "internal error" not in done.err
    shown = cli("show", run_id).out
    assert "[echo]" in shown and "[/oops]" in shown and ":smile:" in shown
    assert "[red]p[/red]" in cli("runs").out


def test_tables_piped_to_a_file_are_not_wrapped(cli: Any) -> None:
    """Not a terminal (COLUMNS=80 set): each run is one table row on one line."""
    run_id = cli("run", "hello.json", "--json").document()["run_id"]
    lines = [line for line in cli("runs").out.splitlines() if run_id in line]
    assert len(lines) == 1
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[0]) and "succeeded" in lines[0]


def test_run_ids_may_be_given_as_a_unique_prefix(cli: Any) -> None:
    """show, events, cancel and resume take a unique prefix of 6+ characters; a shorter one
    is refused with a hint (exit 2)."""
    run_id = cli("run", "hello.json", "--json").document()["run_id"]
    assert cli("show", run_id[:6], "--json").document()["run"]["run_id"] == run_id
    assert cli("events", run_id[:8], "--json").code == 0
    assert cli("resume", run_id[:7], "--json").document()["run_id"] == run_id
    assert cli("cancel", run_id[:6], "--json").code == 1  # already succeeded
    short = cli("show", run_id[:5])
    assert short.code == 2 and "6+" in short.error_line()


def test_show_of_a_failed_run_lists_its_steps(cli: Any) -> None:
    """The step that failed the run is listed (status failed, its error), not an empty table."""
    done = cli("run", "map.json", "-i", "documents=[1, 2]", "--json")
    assert done.code == 1
    shown = cli("show", done.document()["run_id"], "--json").document()
    failed = [step for step in shown["steps"] if step["status"] == "failed"]
    assert failed and failed[0]["error"]
    human = cli("show", done.document()["run_id"]).out
    assert "failed" in human.split("steps", 1)[1]


def test_follow_on_a_crashed_run_says_it_is_not_running(cli: Any) -> None:
    """`events --follow` on a run whose process died (record 'running', lease expired) ends
    with exit 1, saying it is not running and how to resume it, instead of waiting forever."""
    import asyncio
    import time

    from taskloom.adapters.sqlite import SQLiteStorage
    from taskloom.sdk._runs.records import RunRecord
    from taskloom.sdk._runs.store import RunStore

    cli("runs")  # creates the default store

    async def crashed() -> None:
        storage = await SQLiteStorage.open(Path(os.environ["TASKLOOM_HOME"]) / "data/taskloom.db")
        async with RunStore(storage) as store:
            now = time.time()
            await store.create_run(
                RunRecord(
                    run_id="deadbeef0001",
                    pipeline_name="p",
                    pipeline_digest="d" * 64,
                    pipeline={},
                    inputs={},
                    status="running",
                    created_at=now,
                    started_at=now,
                )
            )
            await store.acquire_lease("deadbeef0001", "killed-process", ttl_s=0.01)
        await storage.aclose()
        await asyncio.sleep(0.05)

    asyncio.run(crashed())
    done = cli("events", "deadbeef0001", "--follow")
    assert done.code == 1
    assert "not running" in done.err and "taskloom resume deadbeef0001" in done.err


async def test_follow_sees_a_run_that_ended_with_its_lease_as_ended_not_crashed() -> None:
    """A worker gives its lease back in its outcome's commit: a run whose record was read
    as running just before that commit is not taken for a crashed one."""
    from attrs import evolve

    from taskloom.adapters.memory import MemoryStorage
    from taskloom.contracts import Delete, RunSucceeded
    from taskloom.sdk._cli.history import _stopped
    from taskloom.sdk._runs.records import NS_LEASES, RunRecord
    from taskloom.sdk._runs.store import RunStore

    storage = MemoryStorage()
    async with RunStore(storage) as worker, RunStore(storage) as follower:
        record = RunRecord(
            run_id="r1",
            pipeline_name="p",
            pipeline_digest="d" * 64,
            pipeline={},
            inputs={},
            status="running",
            created_at=worker.clock(),
            started_at=worker.clock(),
        )
        await worker.acquire_lease("r1", "worker", ttl_s=30)
        await worker.create_run(record)
        seen = await follower.load_run("r1")  # the follower reads "running" ...
        worker.with_outcome("r1", [Delete(namespace=NS_LEASES, key="r1")])
        done = evolve(record, status="succeeded", finished_at=worker.clock())
        ended = RunSucceeded(run_id="r1", at=worker.clock(), duration_s=0.0)
        await (await worker.queue_finish(done, ended))  # ... then the run ends, lease and all
        assert not await _stopped(follower, seen)


@pytest.mark.parametrize(
    "table",
    [
        "[executors.s]\ntype = 'scripted'\nfail_first = 5\n",
        "[executors.s]\ntype = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n"
        "api_key = 'sk-literal-123'\nmodel = 'm'\n",
    ],
    ids=["unknown-option", "literal-api-key"],
)
def test_a_config_mistake_exits_2_before_any_run_is_stored(cli: Any, table: str) -> None:
    """An executor config the adapter refuses is a usage error (exit 2) and stores no run."""
    Path("taskloom.toml").write_text(table)
    done = cli("run", "hello.json", "-e", "s")
    assert done.code == 2, done.err
    assert "sk-literal-123" not in done.err + done.out
    assert _runs(cli) == []
