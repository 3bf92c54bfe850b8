"""The dev shell driven in a pseudo-terminal: type commands, read the screen."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class Terminal:
    """A child process on a pty; ``expect`` waits until the screen shows a pattern."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
            start_new_session=True,
            # the pty becomes the controlling terminal, so Ctrl-C sends SIGINT as in real use
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.screen = ""

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            self.screen += ANSI.sub("", chunk.decode("utf-8", "replace"))

    def expect(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen)
            if match:
                seen, self.screen = self.screen[: match.end()], self.screen[match.end() :]
                return seen
            self._read(0.1)
        raise AssertionError(f"{pattern!r} never appeared; screen:\n{self.screen[-2000:]}")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "hello.json", work / "hello.json")
    return work


def test_shell_completes_runs_and_survives_errors(workdir: Path, tmp_path: Path) -> None:
    """In a pty: Tab completes a command, a run shows its output, help COMMAND works, errors
    (bad commands, bad quoting, a per-command --config, unknown runs) never end the shell,
    and history persists."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
    env.update(
        TASKLOOM_HOME=str(tmp_path / "home"),
        TERM="xterm",
        PROMPT_TOOLKIT_NO_CPR="1",
        COLUMNS="120",
        LINES="40",
    )
    term = Terminal([sys.executable, "-m", "taskloom.sdk._cli.main", "shell"], workdir, env)
    try:
        term.expect(r"taskloom>")
        term.send("conf\t")
        term.expect(r"config")
        term.send(" show\r")
        term.expect(r'"storage"')
        term.expect(r"taskloom>")

        term.send("run hel\t")
        term.expect(r"hello\.json")
        term.send("\r")
        term.expect(r"succeeded")
        term.expect(r"taskloom>")

        term.send("frobnicate\r")
        term.expect(r"invalid choice")
        term.expect(r"taskloom>")

        term.send("help run\r")
        term.expect(r"usage: taskloom run")
        term.expect(r"taskloom>")

        term.send('run "unbalanced\r')
        term.expect(r"No closing quotation")
        term.expect(r"taskloom>")

        term.send("runs --config elsewhere.toml\r")
        term.expect(r"fixed for a shell session")
        term.expect(r"taskloom>")

        term.send("show no-such-run\r")
        term.expect(r"error")
        term.expect(r"taskloom>")

        term.send("show \t")
        term.expect(r"[0-9a-f]{32}")  # the run id of the run above, completed
        term.send("\r")
        term.expect(r"status: succeeded")
        term.expect(r"taskloom>")
        term.send("exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    history = (tmp_path / "home" / "data" / "shell-history").read_text()
    assert "config show" in history and "frobnicate" in history


def _shell_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
    env.update(
        TASKLOOM_HOME=str(tmp_path / "home"),
        TERM="xterm",
        PROMPT_TOOLKIT_NO_CPR="1",
        COLUMNS="120",
        LINES="40",
    )
    return env


def _shell(workdir: Path, tmp_path: Path) -> Terminal:
    return Terminal(
        [sys.executable, "-m", "taskloom.sdk._cli.main", "shell"], workdir, _shell_env(tmp_path)
    )


def test_ctrl_c_never_ends_the_shell(workdir: Path, tmp_path: Path) -> None:
    """Ctrl-C at the prompt clears the line; Ctrl-C during a run or a resume cancels that run
    only, and says how to continue it."""
    import json

    (workdir / "taskloom.toml").write_text('[executors.slow]\ntype = "scripted"\nlatency_s = 0.2\n')
    steps = [{"id": f"s{i}", "prompt": f"step {i}"} for i in range(300)]
    pipeline = {"taskloom": "pipeline/v1", "name": "long", "steps": steps}
    (workdir / "long.json").write_text(json.dumps(pipeline))
    term = _shell(workdir, tmp_path)
    try:
        term.expect(r"taskloom>")
        term.send("half-typed command")
        term.send("\x03")
        term.expect(r"taskloom>")
        term.send("run long.json\r")
        term.expect(r"long: [1-9]\d* done")  # live progress on the terminal
        term.send("\x03")
        term.expect(r"interrupted")
        term.expect(r"taskloom>")
        term.send("runs --status cancelled --json\r")
        listing = term.expect(r'"status": "cancelled"')
        term.expect(r"taskloom>")
        run_id = re.findall(r'"run_id": "([^"]+)"', listing)[-1]
        term.send(f"resume {run_id}\r")  # Ctrl-C during a resume cancels it the same way
        term.expect(r"resume [^:]*: [1-9]\d* done")
        term.send("\x03")
        term.expect(rf"interrupted; 'taskloom resume {run_id}' continues the run")
        term.expect(r"taskloom>")
        term.send("exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_completion_of_executor_ids_and_history_recall(workdir: Path, tmp_path: Path) -> None:
    """--executor completes the configured executor ids; a new shell recalls the last command
    with the Up arrow; Ctrl-D ends the shell."""
    (workdir / "taskloom.toml").write_text('[executors.local_echo]\ntype = "scripted"\n')
    term = _shell(workdir, tmp_path)
    try:
        term.expect(r"taskloom>")
        term.send("run hello.json --executor loc\t")
        term.expect(r"local_echo")
        term.send("\r")
        term.expect(r"succeeded")
        term.expect(r"taskloom>")
        term.send("\x04")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    term = _shell(workdir, tmp_path)
    try:
        term.expect(r"taskloom>")
        term.send("\x1b[A")  # Up: the previous session's last command
        term.expect(r"run hello\.json --executor local_echo")
        term.send("\x03")
        term.expect(r"taskloom>")
        term.send("exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def _completions(completer: object, text: str) -> list[str]:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    found = completer.get_completions(Document(text), CompleteEvent())  # type: ignore[attr-defined]
    return [c.text for c in found]


def test_completer_offers_commands_actions_files_run_ids_and_executors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a terminal: each position completes from the right source."""
    from taskloom.sdk._cli.context import CliContext, Output
    from taskloom.sdk._cli.main import build_parser
    from taskloom.sdk._cli.shell import ShellCompleter
    from taskloom.sdk._config.toml import load_config

    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taskloom.toml").write_text('[executors.local]\ntype = "scripted"\n')
    (tmp_path / "hello.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "plugins").mkdir()
    ctx = CliContext(load_config(), Output(json_mode=False))
    completer = ShellCompleter(build_parser(), ctx)
    completer.run_ids = ["0123abcd", "4567ef01"]
    assert {"run", "show", "keys", "exit"} <= set(_completions(completer, ""))
    assert _completions(completer, "ke") == ["keys"]
    assert _completions(completer, "keys ") == ["generate", "list"]
    assert _completions(completer, "secrets g") == ["get"]
    assert _completions(completer, "show 01") == ["0123abcd"]
    assert _completions(completer, "resume ") == ["0123abcd", "4567ef01"]
    assert _completions(completer, "run ") == ["hello.json", "plugins/", "taskloom.toml"]
    assert _completions(completer, "run hello.json --executor ") == ["local", "scripted"]
    assert _completions(completer, "validate hello.json -e l") == ["local"]
    assert "plugins/" in _completions(completer, "verify ")
