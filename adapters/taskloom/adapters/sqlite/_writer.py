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

Small batches skip the thread. A write schedules one callback on the event loop
(``call_soon``, unless one is scheduled already): when it runs, every
write queued by then (all the tasks that were ready in the same loop round) is
committed right there, in the same kind of transaction, if the batch weighs at
most ``INLINE_MAX_OPS`` (one per operation, plus one per 16 KiB of data written,
so large values never hold up the loop). A sequential chain of checkpoints then pays one
SQLite transaction per step (about 20 µs) instead of two thread hops (about 100
µs each on a busy 2-core machine). The event loop never waits for a lock there:
the inline transaction begins without waiting, and a busy database,
a large batch, a failure that needs the members re-run one by one, or a thread
that is already working all hand the batch to the thread, which applies the
busy deadline and everything described below. Either way one lock keeps the
thread and the loop from using the connection at once, and jobs run in the
order they were queued.

The thread waits for a lock another process holds by itself, attempts 0.1 to 2 ms
apart (``BUSY_SLEEPS_S``), up to the busy deadline: SQLite's own busy handler sleeps
1, 2, 5, 10... ms between attempts, while another process's transaction holds the
lock for about 0.1 ms, so four worker processes on one file spent most of their
time asleep waiting for locks that were long free. The connection's own busy
timeout is zero.

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
import time
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from taskloom.adapters.sqlite._errors import is_busy, is_environmental, translate
from taskloom.contracts import TaskloomError, UsageError

__all__ = ["Job", "Writer"]

JobFn = Callable[[sqlite3.Cursor, tuple[Any, ...]], Any]
"""A unit of work run on the writer thread inside the batch's transaction."""

Job = tuple[JobFn, tuple[Any, ...], "asyncio.Future[Any]", bool, int]
"""(function, arguments, future to resolve, whether it needs a savepoint, weight).

The weight is the number of operations the job writes, or ``THREAD_ONLY`` for jobs
that must never run on the event loop (purges, vacuums, bulk deletes)."""

INLINE_MAX_OPS = 256
"""Heaviest batch committed on the event loop instead of the thread (weights: see submit)."""

BUSY_SLEEPS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002)
"""Waits of the writer thread between attempts at a write lock another connection holds."""

THREAD_ONLY = 1 << 30
"""The weight of a job that always runs on the writer thread."""

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
        # Held by whoever uses the connection: the thread while it drains the
        # queue, the event loop while it commits a small batch inline.
        self._lock = threading.Lock()
        self._inline_scheduled = False
        self._stopped = False
        # SQLite's own busy handler sleeps 1, 2, 5, 10... ms between attempts, while a
        # transaction of another process holds the lock for ~0.1 ms: the writer waits
        # for the lock itself, with short sleeps (see _begin), and SQLite never waits.
        conn.execute("PRAGMA busy_timeout = 0")
        self.transactions = 0
        """Write transactions committed so far (read by benchmarks to see batching)."""
        self._thread = threading.Thread(
            target=self._run, name=f"taskloom-sqlite-writer:{path}", daemon=True
        )
        self._thread.start()

    def submit(
        self,
        fn: JobFn,
        args: tuple[Any, ...],
        *,
        savepoint: bool = False,
        weight: int = THREAD_ONLY,
    ) -> Any:
        """Queue ``fn(cursor, args)`` for the next batch; return the future of its outcome.

        ``weight`` is how many operations the job writes; jobs that may run on the
        event loop give it (see the module docstring), the others leave the default.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, args, future, savepoint, weight))
        if weight >= THREAD_ONLY:
            self._idle = False
            self._wake.put(None)
        elif not self._inline_scheduled:
            self._inline_scheduled = True
            loop.call_soon(self._commit_inline)
        return future

    def stop(self) -> asyncio.Future[Any]:
        """Finish every queued job, close the connection; the future resolves when done."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((_stop_marker, (), done, False, THREAD_ONLY))
        self._wake.put(None)
        return done

    def stop_nowait(self) -> None:
        """Ask the thread to stop without waiting (finalizers, a loop that is gone)."""
        self._pending.append(_STOP)
        self._wake.put(None)

    # --- on the event loop ---------------------------------------------------

    def read_inline(self, sql: str, params: tuple[Any, ...]) -> list[Any] | None:
        """All rows of one small SELECT on the write connection, right here on the event
        loop; None when that cannot be done at once (the thread holds the connection,
        it is closed, or SQLite answered busy): then the caller reads on a reader.

        Outside a transaction a SELECT reads the latest commit (WAL: without waiting
        for anyone), exactly as a reader connection would, for about a tenth of the
        reader's thread round trip.
        """
        if self._stopped or not self._lock.acquire(blocking=False):
            return None
        try:
            if self._stopped or self._conn.in_transaction:
                return None
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error:
                return None  # the reader reads it again and reports what is wrong
        finally:
            self._lock.release()

    def _commit_inline(self) -> None:
        """Commit what is queued right here if it is small; otherwise leave it to the thread.

        If the lock is taken, the thread is draining the queue: it looks at the
        queue again after releasing the lock, so these jobs are never stranded.
        """
        self._inline_scheduled = False
        pending = self._pending
        if not pending or not self._lock.acquire(blocking=False):
            return
        batch: list[Job] = []
        try:
            if self._stopped:
                closed = UsageError("SQLiteStorage is closed")
                outcomes: list[_Outcome] = []
                while pending:
                    job = pending.popleft()
                    if job is None:
                        continue
                    if job[0] is _stop_marker:
                        outcomes.append((job[2], True, None))
                    else:
                        outcomes.append((job[2], False, closed))
                _deliver(outcomes)
                return
            budget = INLINE_MAX_OPS
            while pending:
                job = pending.popleft()
                batch.append(job)  # type: ignore[arg-type]
                if job is None or job[4] > budget:
                    break
                budget -= job[4]
            else:
                done = self._run_batch(batch, inline=True)
                if done is not None:
                    batch = []
                    _deliver(done)
                    return
            # Too big, a stop request, busy or a failure to sort out member by member:
            # everything goes back, in order, for the thread.
            pending.extendleft(reversed(batch))
            batch = []
            self._idle = False
            self._wake.put(None)
        finally:
            self._lock.release()
            if batch:  # an unexpected error escaped: give the jobs to the thread
                pending.extendleft(reversed(batch))
                self._wake.put(None)

    # --- on the writer thread ------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        lock = self._lock
        closing: list[asyncio.Future[Any]] = []
        stop = False
        try:
            while not stop:
                with lock:
                    stop = self._drain(closing)
                    if stop:
                        self._stopped = True
                        self._fail_leftovers()
                        break
                    self._idle = True
                # Look again after releasing the lock: a job appended while the lock
                # was held (its inline callback found the lock taken) is caught here;
                # one appended later is committed inline or sends a wake-up. A wake-up
                # that arrives needlessly only costs an empty round.
                if pending:
                    self._idle = False
                    continue
                self._wake.get()
        finally:
            with lock:
                self._stopped = True
                try:
                    self._conn.close()
                finally:
                    self._send([(future, True, None) for future in closing])

    def _drain(self, closing: list[asyncio.Future[Any]]) -> bool:
        """Run batches until the queue is empty; True when asked to stop."""
        pending = self._pending
        while True:
            batch: list[Job] = []
            stop = False
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
                outcomes = self._run_batch(batch)
                assert outcomes is not None  # only inline batches are handed back
                self._send(outcomes)
            if stop:
                return True
            if not batch:
                return False

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

    def _run_batch(self, batch: list[Job], *, inline: bool = False) -> list[_Outcome] | None:
        """Run ``batch`` in one transaction; each member's outcome, in order.

        ``inline`` (on the event loop): return None instead of waiting for a busy
        database or re-running members one by one; the thread does that.
        """
        conn = self._conn
        cursor = conn.cursor()
        try:
            if inline:
                cursor.execute("BEGIN IMMEDIATE")
            else:
                self._begin(cursor)
        except BaseException as exc:
            if inline:
                return None
            error = self._error(exc)
            return [(job[2], False, error) for job in batch]
        # A lone member needs no savepoint: if it fails, the whole transaction is
        # rolled back instead, which undoes exactly the same writes.
        alone = len(batch) == 1
        undo_all = False
        outcomes: list[_Outcome] = []
        try:
            index = 0
            while index < len(batch):
                fn, args, future, savepoint, _ = batch[index]
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
                savepoint = savepoint and not alone
                if savepoint:
                    cursor.execute("SAVEPOINT member")
                try:
                    value = fn(cursor, args)
                except TaskloomError as exc:
                    if savepoint:
                        cursor.execute("ROLLBACK TO member")
                        cursor.execute("RELEASE member")
                    else:
                        undo_all = alone
                    outcomes.append((future, False, exc))
                    continue
                if savepoint:
                    cursor.execute("RELEASE member")
                outcomes.append((future, True, value))
            if undo_all:
                cursor.execute("ROLLBACK")
            else:
                cursor.execute("COMMIT")
                self.transactions += 1
        except BaseException as exc:
            self._rollback()
            if inline:
                return None
            error = self._error(exc)
            if len(batch) == 1 or is_environmental(error):
                return [(job[2], False, error) for job in batch]
            outcomes = []
            for job in batch:
                outcomes.extend(self._run_batch([job]) or ())
        return outcomes

    def _begin(self, cursor: sqlite3.Cursor) -> None:
        """BEGIN IMMEDIATE on the thread, waiting up to the busy deadline for a lock that
        another connection holds: attempts ``BUSY_SLEEPS_S`` apart (the last repeats)."""
        deadline = time.monotonic() + self._busy_timeout_s
        attempt = 0
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(BUSY_SLEEPS_S[min(attempt, len(BUSY_SLEEPS_S) - 1)])
            attempt += 1

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                return
