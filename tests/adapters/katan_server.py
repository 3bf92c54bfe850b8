"""llm-katan as a subprocess, for integration tests of the HTTP executors.

llm-katan (PyPI) is an independent server that speaks both the OpenAI and the
Anthropic protocols; ``--backend echo`` needs no model and no network. Its
failure counters are per process and never reset, so tests start one server
per failure scenario; ``start_servers`` starts them all at once (each takes
about 0.3 s) and ``stop_servers`` kills them.

Gotchas handled here: ``LLM_KATAN_*`` environment variables override the
flags, so they are removed; ``--stats-file ""`` keeps it from writing into
the home directory; a port taken between our probe and its bind makes it exit
with status 3, so it is retried on a new port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

OPENAI_KEY = "sk-katan-good-0123456789"
ANTHROPIC_KEY = "ak-katan-good-0123456789"
_PORT_IN_USE = 3


def katan_executable() -> str | None:
    """The llm-katan console script beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("llm-katan")
    if beside.exists():
        return str(beside)
    return shutil.which("llm-katan")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class KatanServer:
    """One llm-katan process on 127.0.0.1 with the given extra flags."""

    def __init__(self, name: str, flags: Sequence[str]) -> None:
        self.name = name
        self.flags = list(flags)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """base_url for OpenAIExecutor (the version is part of it, as in OpenAI's SDK)."""
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        """base_url for AnthropicExecutor (the host only, as in Anthropic's SDK)."""
        return self.url

    def spawn(self) -> None:
        executable = katan_executable()
        if executable is None:
            raise RuntimeError("llm-katan is not installed (pip install llm-katan)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_KATAN_")}
        env["HF_HUB_OFFLINE"] = "1"
        self.port = _free_port()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by kill())
        command = [
            executable,
            "--model",
            "test-model",
            "--backend",
            "echo",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--providers",
            "openai,anthropic",
            "--stats-file",
            "",
            "--max-concurrent",
            "64",
            *self.flags,
        ]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL
        )

    def _stderr(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-2000:]

    def poll_ready(self) -> bool:
        """True once /health answers 200; raises if the process died (but not for a port race)."""
        assert self.process is not None
        code = self.process.poll()
        if code == _PORT_IN_USE:
            self.spawn()
            return False
        if code is not None:
            raise RuntimeError(f"llm-katan {self.name} exited with {code}:\n{self._stderr()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stats_total(self) -> int:
        """How many requests were answered, simulated failures included (needs the dashboard)."""
        return int(httpx.get(f"{self.url}/stats", timeout=5.0).json()["total"])

    def kill(self) -> None:
        """Stop the process at once (it holds no state worth a graceful shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_servers(
    specs: Mapping[str, Sequence[str]], *, timeout_s: float = 30.0
) -> dict[str, KatanServer]:
    """Start one server per entry of ``specs`` (name → extra flags), all at once."""
    servers = {name: KatanServer(name, flags) for name, flags in specs.items()}
    try:
        for server in servers.values():
            server.spawn()
        waiting = set(servers)
        deadline = time.monotonic() + timeout_s
        while waiting:
            waiting = {name for name in waiting if not servers[name].poll_ready()}
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"llm-katan servers not ready in {timeout_s} s: {waiting}")
            if waiting:
                time.sleep(0.05)
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: Mapping[str, KatanServer]) -> None:
    for server in servers.values():
        server.kill()
