"""The crash tests' worker process: started once, it forks writers on command.

``test_sqlite_crash`` and ``test_filesystem_crash`` drive their own worker scripts
through this one line-per-command pipe: a command goes in, one answer line comes
back (``ready`` first).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class Zygote:
    """The worker process that forks writers on command."""

    def __init__(self, worker: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(worker)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the crash worker zygote died; see its stderr"
        return line.strip()

    def command(self, text: str) -> str:
        """Send one command and return its one-line answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        """End the worker (closing its input) and wait for it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
