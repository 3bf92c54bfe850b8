"""The single writer of a SQLite database: group commit on a dedicated thread.

Why a thread of our own with plain ``sqlite3`` instead of aiosqlite's worker:
a hop between the event loop and a worker thread costs about 100 µs, a whole
SQLite transaction about 18 µs, so the throughput of many concurrent writers is
decided by how many writes share one hop and one transaction. aiosqlite runs one
callable per queue item and resolves one future per call; here the thread itself
drains *everything* queued when it wakes, runs it all inside one ``BEGIN
IMMEDIATE`` transaction, and hands all outcomes back to the loop with a single
``call_soon_threadsafe``. No writer task sits on the event loop: a write costs the
loop only a queue put and a future.

Each member of a batch gets its own outcome: a version check that fails raises
``ConflictError`` before its member writes anything (multi-operation commits run
inside a SAVEPOINT and roll back to it), so one member's conflict never fails the
others. If the batch fails as a whole for a reason tied to one member, the members
are re-run one transaction each; if it fails because of the database itself
(busy past the deadline, disk full, damaged file) every member gets that error.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from taskloom.adapters._sqlite_errors import is_environmental, translate
from taskloom.contracts import TaskloomError, UsageError

__all__ = ["Job", "Writer"]

JobFn = Callable[[sqlite3.Cursor, tuple[Any, ...]], Any]
"""A unit of work run on the writer thread inside the batch's transaction."""

Job = tuple[JobFn, tuple[Any, ...], "asyncio.Future[Any]", bool]
"""(function, arguments, future to resolve, whether it needs a savepoint)."""

_Outcome = tuple["asyncio.Future[Any]", bool, Any]

_STOP = None


def _stop_marker(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> None:
    """Marks the job that asks the writer to finish; never called."""
    raise AssertionError("the stop marker is not a job")


def _deliver(outcomes: list[_Outcome]) -> None:
    """Resolve futures on their loop; a cancelled caller simply drops its outcome."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Writer:
    """Owns the write connection and the thread that uses it; see the module docstring."""

    def __init__(self, conn: sqlite3.Connection, path: str, busy_timeout_s: float) -> None:
        self._conn = conn
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        # Jobs wait in a deque (an append costs a fraction of a queue put); the
        # thread is woken through ``_wake`` only when it went idle.
        self._pending: deque[Job | None] = deque()
        self._wake: SimpleQueue[None] = SimpleQueue()
        self._idle = False
        self.transactions = 0
        """Write transactions committed so far (read by benchmarks to see batching)."""
        self._thread = threading.Thread(
            target=self._run, name=f"taskloom-sqlite-writer:{path}", daemon=True
        )
        self._thread.start()

    def submit(self, fn: JobFn, args: tuple[Any, ...], *, savepoint: bool = False) -> Any:
        """Queue ``fn(cursor, args)`` for the next batch; return the future of its outcome."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, future, savepoint))
        if self._idle:
            self._idle = False
            self._wake.put(None)
        return future

    def stop(self) -> asyncio.Future[Any]:
        """Finish every queued job, close the connection; the future resolves when done."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((_stop_marker, (), done, False))
        self._wake.put(None)
        return done

    def stop_nowait(self) -> None:
        """Ask the thread to stop without waiting (finalizers, a loop that is gone)."""
        self._pending.append(_STOP)
        self._wake.put(None)

    # --- on the writer thread ------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        closing: list[asyncio.Future[Any]] = []
        stop = False
        try:
            while not stop:
                batch: list[Job] = []
                while True:
                    try:
                        job = pending.popleft()
                    except IndexError:
                        break
                    if job is None:
                        stop = True
                        break
                    if job[0] is _stop_marker:
                        closing.append(job[2])
                        stop = True
                        break
                    batch.append(job)
                if batch:
                    self._send(self._run_batch(batch))
                    continue
                if stop:
                    break
                # Announce idleness, then look again: a job appended before the flag
                # was visible is caught here; one appended after it sends a wake-up.
                # A wake-up that arrives needlessly only costs an empty round.
                self._idle = True
                if pending:
                    self._idle = False
                    continue
                self._wake.get()
            self._fail_leftovers()
        finally:
            try:
                self._conn.close()
            finally:
                self._send([(future, True, None) for future in closing])

    def _fail_leftovers(self) -> None:
        leftovers: list[_Outcome] = []
        while True:
            try:
                job = self._pending.popleft()
            except IndexError:
                break
            if job is None:
                continue
            if job[0] is _stop_marker:
                leftovers.append((job[2], True, None))
                continue
            leftovers.append((job[2], False, UsageError("SQLiteStorage is closed")))
        self._send(leftovers)

    def _send(self, outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, group)
            except RuntimeError:
                continue  # the loop is closed: nobody is waiting any more

    def _error(self, exc: BaseException) -> TaskloomError:
        return translate(exc, self._path, busy_timeout_s=self._busy_timeout_s)

    def _run_batch(self, batch: list[Job]) -> list[_Outcome]:
        conn = self._conn
        cursor = conn.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            error = self._error(exc)
            return [(job[2], False, error) for job in batch]
        outcomes: list[_Outcome] = []
        try:
            index = 0
            while index < len(batch):
                fn, args, future, savepoint = batch[index]
                many = getattr(fn, "many", None)
                if many is not None:
                    # A run of jobs that can share statements (plain puts): one call.
                    end = index + 1
                    while end < len(batch) and batch[end][0] is fn:
                        end += 1
                    if end - index > 1:
                        run = batch[index:end]
                        values = many(cursor, [job[1] for job in run])
                        for job, value in zip(run, values, strict=True):
                            outcomes.append((job[2], True, value))
                        index = end
                        continue
                index += 1
                if savepoint:
                    cursor.execute("SAVEPOINT member")
                try:
                    value = fn(cursor, args)
                except TaskloomError as exc:
                    if savepoint:
                        cursor.execute("ROLLBACK TO member")
                        cursor.execute("RELEASE member")
                    outcomes.append((future, False, exc))
                    continue
                if savepoint:
                    cursor.execute("RELEASE member")
                outcomes.append((future, True, value))
            cursor.execute("COMMIT")
            self.transactions += 1
        except BaseException as exc:
            self._rollback()
            error = self._error(exc)
            if len(batch) == 1 or is_environmental(error):
                return [(job[2], False, error) for job in batch]
            outcomes = []
            for job in batch:
                outcomes.extend(self._run_batch([job]))
        return outcomes

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                return
