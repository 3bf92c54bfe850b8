"""A fork server for the crash tests' worker processes.

One interpreter imports a worker module and taskloom once, then forks a worker per
command, so each of the many SIGKILLed attempts costs a fork instead of an interpreter
start (about 0.6 s of CPU and 0.7 s of wall time each on a 2-core machine). A forked
worker is a real process of its own: the test SIGKILLs it by pid, and it dies in the
middle of whatever it was writing, as a started one does.

``python fork_server.py MODULE [PRELOAD...]`` imports MODULE and the PRELOAD modules,
prints ``ready``, then reads one command per line on stdin and answers one line:

    run ARGS_JSON     fork a child running MODULE.main(ARGS); answer its pid
    poll PID          "running", or "exit CODE" once it ended (it is reaped then)
    wait PID          wait until it ends; "exit CODE"

CODE is what ``subprocess.Popen.returncode`` would be: the exit status, or minus the
signal that ended the child. A child's stdout is the server's stderr (the command pipe
stays clean); its stderr is the server's.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType


def _child(module: ModuleType, args: list[str]) -> None:
    """In the forked child: run the worker's main and leave without returning."""
    code = 1
    try:
        os.dup2(2, 1)
        sys.stdin.close()
        code = int(module.main(args) or 0)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _code(status: int) -> str:
    return f"exit {os.waitstatus_to_exitcode(status)}"


def serve(module_name: str, preload: list[str]) -> None:
    module = importlib.import_module(module_name)
    for name in preload:
        importlib.import_module(name)
    print("ready", flush=True)
    for line in sys.stdin:
        verb, _, rest = line.strip().partition(" ")
        if verb == "run":
            pid = os.fork()
            if pid == 0:
                _child(module, json.loads(rest))
            print(pid, flush=True)
        elif verb == "poll":
            done, status = os.waitpid(int(rest), os.WNOHANG)
            print(_code(status) if done else "running", flush=True)
        elif verb == "wait":
            _, status = os.waitpid(int(rest), 0)
            print(_code(status), flush=True)
        else:
            print(f"error: unknown command {verb!r}", flush=True)


class Forked:
    """A worker forked by the server: the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            answer = self.server.ask(f"poll {self.pid}")
            if answer != "running":
                self.returncode = int(answer.removeprefix("exit "))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                self.returncode = int(self.server.ask(f"wait {self.pid}").removeprefix("exit "))
            return self.returncode
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout)
            time.sleep(0.005)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The server process, started with ``env``; ``run`` forks a worker. ``module`` is a
    file beside this one (the script's directory is on the server's path)."""

    def __init__(self, module: Path, preload: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(module.stem), *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        assert self.ask(None) == "ready"

    def ask(self, command: str | None) -> str:
        """Send ``command`` (None: send nothing) and return the one-line answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer and not answer.startswith("error"), f"fork server: {answer or 'died'}"
        return answer

    def run(self, args: list[str]) -> Forked:
        return Forked(self, int(self.ask("run " + json.dumps(args))))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
