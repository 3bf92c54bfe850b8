"""Example tests of durability across a killed process (ST11): a write that returned
survives a SIGKILL of the process that made it.

A clean ``aclose()`` proves little: an adapter that writes to disk only when it
closes passes every reopen test and loses acknowledged writes in a crash. So a
child process (``_storage_crash_child``) opens the adapter, makes writes and
prints an acknowledgement after each one returned; the test kills it with
SIGKILL (``Popen.kill``) and reopens the location with ``open_storage``.

The child finds the adapter through ``crash_factory``: by default the test class
itself (imported from its module in the child, instantiated without arguments,
its ``open_storage`` used); set ``crash_factory = "package.module:function"``,
a function ``f(location)`` returning what ``open_storage`` returns, when the
test class cannot be built that way. The child inherits the environment and
``sys.path``.
"""

from __future__ import annotations

import inspect
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from taskloom.contracts import Record, StorageAdapter, StreamEntry
from taskloom.contracts.testing._storage_base import StorageSuiteBase
from taskloom.contracts.testing._storage_crash_child import ACK, entry_of, record_of

_CHILD = (
    "import sys; from taskloom.contracts.testing._storage_crash_child import main; "
    "main(sys.argv[1:])"
)


_DRAIN_TIMEOUT_S = 5.0
"""How long to read what a killed child had printed (its pipe ends at once unless a process
the adapter started still holds it)."""


class _Acknowledged:
    """What the killed process reported written, folded into the state it must leave."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Record | None] = {}
        self.entries: dict[str, list[StreamEntry]] = {}
        self.count = 0

    def add(self, ack: dict[str, Any]) -> None:
        self.count += 1
        if "record" in ack:
            record = record_of(ack["record"])
            self.records[(record.namespace, record.key)] = record
        elif "gone" in ack:
            self.records[(ack["gone"][0], ack["gone"][1])] = None
        elif "entry" in ack:
            entry = entry_of(ack["entry"])
            self.entries.setdefault(entry.stream, []).append(entry)


def _ack_of(line: str) -> dict[str, Any] | None:
    """The acknowledgement a whole line of the child's output carries, if any."""
    if not (line.startswith(ACK) and line.endswith("\n")):
        return None
    try:
        ack = json.loads(line[len(ACK) :])
    except ValueError:
        return None
    return ack if isinstance(ack, dict) else None


def _reader(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class CrashTests(StorageSuiteBase):
    """Tests ST11 across SIGKILL (skipped when ``durable`` is False)."""

    crash_factory: ClassVar[str | None] = None
    """``"module:function"`` naming ``f(location)`` -> what ``open_storage`` returns, for the
    killed child process; None (the default) uses this test class's own ``open_storage``."""

    crash_timeout_s: ClassVar[float] = 60.0
    """How long the child may take to open the adapter and make its writes."""

    survives_kill: ClassVar[bool | None] = None
    """None (the default): as ``durable``. False only for a test double whose "reopening"
    is simulated inside one process (an in-memory store handing out copies)."""

    def _factory(self) -> dict[str, Any]:
        if self.crash_factory is not None:
            module, sep, attr = self.crash_factory.partition(":")
            if not (module and sep and attr):
                pytest.fail(
                    f"crash_factory must be 'package.module:function', got {self.crash_factory!r}"
                )
            return {"module": module, "file": None, "attr": attr}
        cls = type(self)
        if "<locals>" in cls.__qualname__:
            pytest.fail(
                f"ST11 (durable across SIGKILL): {cls.__qualname__} is defined inside a "
                "function, so a child process cannot import it; set crash_factory = "
                "'package.module:function' (a function of the location returning what "
                "open_storage returns)"
            )
        try:
            file: str | None = inspect.getfile(cls)
        except TypeError:
            file = None
        return {"module": cls.__module__, "file": file, "attr": cls.__qualname__}

    def _write_and_kill(self, location: Path, mode: str, extra_acks: int) -> _Acknowledged:
        """Run the child on ``location`` in ``mode``; SIGKILL it once it acknowledged its
        script (and ``extra_acks`` more writes); return everything it acknowledged."""
        if not self.durable:
            pytest.skip("the adapter declares durable = False")
        if self.survives_kill is False:
            pytest.skip("the adapter declares survives_kill = False (reopening is simulated)")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-c", _CHILD, json.dumps(self._factory()), str(location), mode]
        acknowledged = _Acknowledged()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
            child = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                text=True,
                encoding="utf-8",
            )
            assert child.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_reader, args=(child.stdout, lines), daemon=True).start()
            try:
                self._wait_until_ready(child, lines, acknowledged, extra_acks, errors)
            finally:
                child.kill()  # SIGKILL on POSIX: no aclose, no atexit, no flush
                child.wait()
            # Everything the child printed before it died was acknowledged, so it counts too
            # (a line cut short by the kill is not: its write may not have returned).
            while True:
                try:
                    line = lines.get(timeout=_DRAIN_TIMEOUT_S)
                except queue.Empty:  # a process the adapter started keeps the pipe open
                    break
                if line is None:
                    break
                ack = _ack_of(line)
                if ack is not None:
                    acknowledged.add(ack)
        return acknowledged

    def _wait_until_ready(
        self,
        child: subprocess.Popen[str],
        lines: queue.Queue[str | None],
        acknowledged: _Acknowledged,
        extra_acks: int,
        errors: IO[str],
    ) -> None:
        ready_at: int | None = None
        while ready_at is None or acknowledged.count < ready_at + extra_acks:
            try:
                line = lines.get(timeout=self.crash_timeout_s)
            except queue.Empty:
                pytest.fail(
                    f"ST11 (durable across SIGKILL): the writing process acknowledged "
                    f"{acknowledged.count} writes and then nothing for {self.crash_timeout_s} s"
                )
            if line is None:
                child.wait()
                errors.seek(0)
                pytest.fail(
                    f"ST11 (durable across SIGKILL): the writing process exited with code "
                    f"{child.returncode} before it was killed; its stderr ends with:\n"
                    f"{errors.read()[-3000:]}"
                )
            ack = _ack_of(line)
            if ack is None:
                continue
            if "ready" in ack:
                ready_at = acknowledged.count
            else:
                acknowledged.add(ack)

    # ST11 ----------------------------------------------------------------------------

    def test_st11_acknowledged_writes_survive_sigkill(self, tmp_path: Path) -> None:
        """Puts, deletes, appends and a mixed commit that returned are there after a SIGKILL."""
        location = tmp_path / "store"
        acked = self._write_and_kill(location, "idle", 0)

        async def body(s: StorageAdapter) -> None:
            await _holds(s, acked, exact=True)

        self._run_at(location, body)

    def test_st11_sigkill_in_the_middle_of_writes_loses_nothing_acknowledged(
        self, tmp_path: Path
    ) -> None:
        """Killed while writing, the store reopens and holds every write that had returned."""
        location = tmp_path / "store"
        acked = self._write_and_kill(location, "busy", 40)

        async def body(s: StorageAdapter) -> None:
            await _holds(s, acked, exact=False)

        self._run_at(location, body)


async def _holds(s: StorageAdapter, acked: _Acknowledged, *, exact: bool) -> None:
    """Every acknowledged record, delete and entry is in ``s``. ``exact``: nothing more
    (the child idled before the kill, so no write was in flight)."""
    what = "ST11 (durable across SIGKILL)"
    for (namespace, key), want in acked.records.items():
        got = await s.get(namespace, key)
        assert got == want, (
            f"{what}: after the writing process was killed, get({namespace!r}, {key!r}) "
            f"returned {got!r}; the write acknowledged before the kill was {want!r}"
            + (" (a delete)" if want is None else "")
        )
    for stream, want_entries in acked.entries.items():
        got_entries = await s.read(stream)
        shown = got_entries if exact else got_entries[: len(want_entries)]
        assert shown == want_entries, (
            f"{what}: after the writing process was killed, read({stream!r}) returned "
            f"{got_entries!r}; the appends acknowledged before the kill were {want_entries!r}"
        )
    if exact:
        namespaces = sorted({namespace for namespace, _ in acked.records})
        for namespace in namespaces:
            want_keys = sorted(k for (n, k), r in acked.records.items() if n == namespace and r)
            got_keys = [r.key for r in await s.scan(namespace)]
            assert got_keys == want_keys, (
                f"{what}: after the writing process was killed, scan({namespace!r}) returned "
                f"keys {got_keys}; the acknowledged writes leave {want_keys}"
            )
