"""Group commit on PostgreSQL: every write queued while a transaction is in flight
goes into the next one.

One writer task per adapter takes everything queued when it wakes and runs it
in one READ COMMITTED transaction on one pooled connection: plain puts of the
batch as one multi-row statement, the rest one statement each. A hundred tasks
that write at once pay for one round trip of BEGIN, a few statements and one
COMMIT (one WAL flush), not a hundred.

READ COMMITTED is enough, and scales across hosts where SERIALIZABLE would not
(its predicate locks coarsen on large batches, and hosts would abort each
other's): every conditional write is one statement whose WHERE PostgreSQL
re-checks on the newest row after waiting for a concurrent writer; a ``Check``
locks its row FOR SHARE, or reserves a missing key, until COMMIT; a stream's
head row serializes its appends, so numbers stay gapless.

Each member of a batch gets its own outcome: a version check that fails raises
``ConflictError`` before its member writes anything (a ``commit`` runs inside a
SAVEPOINT and rolls back to it), so one member's conflict never fails the
others. What PostgreSQL itself refuses is handled by the transaction as a whole:

- a serialization failure or a deadlock (another host wrote the same rows) runs
  the whole batch again, with a short jittered pause, up to ``retries`` times;
- a connection lost before COMMIT was sent runs it again on a fresh connection;
  one lost while COMMIT was in flight cannot tell whether it committed, so its
  members get ``StorageUnavailable`` saying so, rather than a second copy;
- any other failure tied to one member re-runs the members one by one, and a
  failure of the server itself (unreachable, full, read-only) fails them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import psycopg
import psycopg_pool

from taskloom.adapters.postgres._dsn import Dsn
from taskloom.adapters.postgres._errors import is_lost_connection, is_retryable, translate
from taskloom.adapters.postgres._listen import NOTIFY
from taskloom.adapters.postgres._ops import (
    JobFn,
    Plan,
    append_job,
    commit_job,
    delete_job,
    delete_versions_job,
    plan,
    purge_job,
    put_job,
    upsert_job,
    upsert_many,
)
from taskloom.adapters.postgres._schema import Statements
from taskloom.contracts import (
    Append,
    Put,
    StorageCorrupted,
    StorageError,
    StorageUnavailable,
    TaskloomError,
    UsageError,
)

__all__ = ["MAX_BATCH", "Writer", "check_pool", "rollback"]

Job = tuple[JobFn, tuple[Any, ...], "asyncio.Future[Any]", bool]
"""(function, arguments, future of its outcome, whether it needs a savepoint)."""

_LOG = logging.getLogger("taskloom.adapters.postgres")

MAX_BATCH = 1000
"""Most jobs in one transaction; more wait for the next one."""

MAX_BATCH_BYTES = 16 * 1024 * 1024
"""About the most data one transaction carries: a thousand 4 MiB values are not one batch."""


def _job_bytes(job: Job) -> int:
    """The bytes of data a job writes (values and payloads)."""
    fn, args = job[0], job[1]
    if fn is upsert_job or fn is put_job:
        return len(args[2])
    if fn is append_job:
        return len(args[1])
    if fn is commit_job:
        return sum(
            len(op.value)
            if isinstance(op, Put)
            else len(op.payload)
            if isinstance(op, Append)
            else 0
            for op in args[0]
        )
    return 0


_Outcome = tuple["asyncio.Future[Any]", bool, Any]

SINGLE_STATEMENT_JOBS = frozenset(
    {upsert_job, put_job, append_job, delete_job, purge_job, delete_versions_job}
)
"""Jobs that write with one statement (a conflict's follow-up SELECT only reads);
``delete_job`` with ``if_version=0`` is not one of them (it reserves the key first)."""

_CLOSED_FIRST = frozenset({"57P01", "57P02", "57P03"})
"""The server closed the connection before reading what was sent (shutdown, terminated)."""


CONFLICT_STATE = "TL409"
"""The SQLSTATE ``taskloom_conflict()`` raises (see ``_schema``)."""


class _CheckFailed(Exception):
    """A version check failed inside a pipelined batch: it was rolled back as a whole."""


class _CommitUnknown(Exception):
    """The connection was lost while COMMIT was in flight."""


def _deliver(outcomes: list[_Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.done():
            continue  # the caller was cancelled; the write may still have happened
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


async def rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """End the open transaction, if the connection still has one to end."""
    if conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        await conn.execute("ROLLBACK")
    except psycopg.Error:
        return  # the pool discards a connection it cannot reset


async def check_pool(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
    """Drop the pool's idle connections that the server closed (they are reopened)."""
    try:
        await pool.check()
    except (psycopg.Error, OSError):
        return  # the next attempt reports what is wrong


class Writer:
    """Runs queued write jobs in batch transactions; see the module docstring."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        sql: Statements,
        dsn: Dsn,
        *,
        pool_timeout_s: float,
        retries: int,
        notify: tuple[str, frozenset[str]] = ("", frozenset()),
    ) -> None:
        self._pool = pool
        self._notify = notify
        self._sql = sql
        self._dsn = dsn
        self._pool_timeout_s = pool_timeout_s
        self._retries = retries
        self._pending: list[Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.transactions = 0
        """Write transactions committed so far (benchmarks read it to see batching)."""
        self.retried = 0
        """Transactions run again after a serialization failure, deadlock or lost connection."""

    def submit(self, fn: JobFn, args: tuple[Any, ...], *, savepoint: bool = False) -> Any:
        """Queue ``fn(cursor, statements, args)``; return the future of its outcome."""
        if self._stopping:
            raise UsageError("PostgresStorage is closed; open a new one to use it")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, future, savepoint))
        if self._task is None or self._task.done():
            # (done: it died of an unexpected error, which its callers got; start afresh)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"taskloom-postgres-writer:{self._dsn.describe()}"
            )
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Commit everything queued, then stop the writer task."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._take_batch()
                try:
                    outcomes = await self._commit(batch)
                except Exception as exc:
                    # A bug, not the database: this batch fails with it, the writer goes on.
                    _LOG.exception("the PostgreSQL writer failed on a batch")
                    error = (
                        exc
                        if isinstance(exc, TaskloomError)
                        else StorageError(
                            f"the PostgreSQL writer failed unexpectedly ({type(exc).__name__}: "
                            f"{self._dsn.scrub(str(exc))}); this is a bug: please report it"
                        )
                    )
                    outcomes = [(job[2], False, error) for job in batch]
                except BaseException:
                    # Cancelled (the loop is going away): no caller waits forever.
                    gone = StorageUnavailable("the PostgreSQL writer was stopped with its loop")
                    _deliver([(job[2], False, gone) for job in batch + self._pending])
                    self._pending.clear()
                    raise
                _deliver(outcomes)
            if self._stopping:
                return

    def _take_batch(self) -> list[Job]:
        """The next batch: the oldest queued jobs, up to MAX_BATCH of them and about
        MAX_BATCH_BYTES of data (always at least one job)."""
        pending = self._pending
        size = 0
        count = 0
        while count < len(pending) and count < MAX_BATCH:
            size += _job_bytes(pending[count])
            if count and size > MAX_BATCH_BYTES:
                break
            count += 1
        batch = pending[:count]
        del pending[:count]
        return batch

    async def _commit(self, batch: list[Job]) -> list[_Outcome]:
        """Run ``batch`` in one transaction, retrying what PostgreSQL asks to retry."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(batch)
            except _CommitUnknown as unknown:
                cause = unknown.__cause__ or unknown
                unknown_error = StorageUnavailable(
                    f"the connection to PostgreSQL at {self._dsn.describe()} was lost while "
                    f"committing ({self._dsn.scrub(str(cause))}); the write may or may not "
                    "have been stored: read it back before retrying"
                )
                unknown_error.__cause__ = cause
                return [(job[2], False, unknown_error) for job in batch]
            except (psycopg.Error, OSError) as exc:
                # A pool that timed out has waited long enough already: no second wait.
                again = is_retryable(exc) or (
                    is_lost_connection(exc) and not isinstance(exc, psycopg_pool.PoolTimeout)
                )
                if again and attempt <= self._retries:
                    self.retried += 1
                    if is_lost_connection(exc):
                        await check_pool(self._pool)
                    await asyncio.sleep(min(0.002 * 2**attempt, 0.2) * random.random())
                    continue
                error = translate(exc, self._dsn)
                error.__cause__ = exc
                if len(batch) == 1 or isinstance(error, StorageUnavailable | StorageCorrupted):
                    return [(job[2], False, error) for job in batch]
                outcomes: list[_Outcome] = []
                for job in batch:  # tied to one member: find it by running them alone
                    outcomes += await self._commit([job])
                return outcomes

    def _announced(self, batch: list[Job]) -> list[str]:
        """The watched namespaces this batch puts records in: one NOTIFY each."""
        watched = self._notify[1]
        if not watched:
            return []
        written: set[str] = set()
        for fn, args, _, _ in batch:
            if fn is upsert_job or fn is put_job:
                written.add(args[0])
            elif fn is commit_job:
                written.update(op.namespace for op in args[0] if isinstance(op, Put))
        return sorted(written & watched)

    def _one_statement(self, batch: list[Job]) -> bool:
        """Whether ``batch`` is one statement: then it commits alone, without BEGIN/COMMIT.

        A lone single-statement job, or plain puts of distinct keys (one multi-row
        upsert), that announce nothing: one round trip instead of three.
        """
        if self._announced(batch):
            return False
        if len(batch) == 1:
            fn, args = batch[0][0], batch[0][1]
            return fn in SINGLE_STATEMENT_JOBS and not (fn is delete_job and args[2] == 0)
        seen: set[tuple[str, str]] = set()
        for fn, args, _, _ in batch:
            if fn is not upsert_job or (args[0], args[1]) in seen:
                return False
            seen.add((args[0], args[1]))
        return True

    async def _attempt_one_statement(self, batch: list[Job]) -> list[_Outcome]:
        """Run a one-statement batch in autocommit: the statement is the transaction.

        A connection lost while it ran leaves its outcome unknown, as a lost COMMIT
        does; one the server had already closed (it says so first: shutdown,
        terminated) never ran it, and the batch is retried.
        """
        async with self._pool.connection(timeout=self._pool_timeout_s) as conn:
            cur: psycopg.AsyncCursor[Any] = conn.cursor()
            try:
                if len(batch) == 1:
                    fn, args, future, _ = batch[0]
                    try:
                        value = await fn(cur, self._sql, args)
                    except TaskloomError as exc:
                        return [(future, False, exc)]
                    outcomes: list[_Outcome] = [(future, True, value)]
                else:
                    values = await upsert_many(cur, self._sql, [job[1] for job in batch])
                    outcomes = [
                        (job[2], True, value) for job, value in zip(batch, values, strict=True)
                    ]
            except psycopg.Error as exc:
                closed_first = str(getattr(exc, "sqlstate", "") or "") in _CLOSED_FIRST
                if (conn.broken or is_lost_connection(exc)) and not closed_first:
                    raise _CommitUnknown() from exc
                raise
            self.transactions += 1
            return outcomes

    async def _attempt(self, batch: list[Job]) -> list[_Outcome]:
        if self._one_statement(batch):
            return await self._attempt_one_statement(batch)
        plans = [plan(fn, self._sql, args) for fn, args, _, _ in batch]
        if all(p is not None for p in plans):
            try:
                return await self._attempt_pipelined(batch, [p for p in plans if p is not None])
            except _CheckFailed:
                pass  # some member's check failed: sort it out member by member below
        return await self._attempt_serial(batch)

    async def _attempt_pipelined(self, batch: list[Job], plans: list[Plan]) -> list[_Outcome]:
        """Send BEGIN, every statement of every member and COMMIT at once, then read.

        One round trip for the whole batch. A failed version check raises TL409 in the
        server, which aborts it all (``_CheckFailed``: the caller runs the batch
        serially). A connection lost once this was sent leaves the outcome unknown.
        """
        async with self._pool.connection(timeout=self._pool_timeout_s) as conn:
            cursors: list[list[psycopg.AsyncCursor[Any]]] = []
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED", prepare=False)
                    for statements, _ in plans:
                        mine = []
                        for query, params in statements:
                            cur: psycopg.AsyncCursor[Any] = conn.cursor()
                            # prepare=False: a statement psycopg prepares inside a pipeline
                            # that then aborts is never created in the server, and psycopg
                            # would go on using its name ("prepared statement does not exist")
                            await cur.execute(query, params, prepare=False)
                            mine.append(cur)
                        cursors.append(mine)
                    wake = self._announced(batch)
                    if wake:
                        await conn.execute(NOTIFY, (self._notify[0], wake), prepare=False)
                    await conn.execute("COMMIT", prepare=False)
            except psycopg.Error as exc:
                state = str(getattr(exc, "sqlstate", "") or "")
                if state == CONFLICT_STATE:
                    await rollback(conn)
                    raise _CheckFailed() from exc
                if (conn.broken or is_lost_connection(exc)) and state not in _CLOSED_FIRST:
                    raise _CommitUnknown() from exc
                await rollback(conn)
                raise
            self.transactions += 1
            outcomes: list[_Outcome] = []
            for job, (_, finish), mine in zip(batch, plans, cursors, strict=True):
                outcomes.append((job[2], True, await finish(mine)))
            return outcomes

    async def _attempt_serial(self, batch: list[Job]) -> list[_Outcome]:
        sql = self._sql
        alone = len(batch) == 1
        async with self._pool.connection(timeout=self._pool_timeout_s) as conn:
            cur: psycopg.AsyncCursor[Any] = conn.cursor()
            await cur.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            undo_all = False
            outcomes: list[_Outcome] = []
            try:
                index = 0
                while index < len(batch):
                    fn, args, future, savepoint = batch[index]
                    if fn is upsert_job:
                        end = index + 1
                        while end < len(batch) and batch[end][0] is upsert_job:
                            end += 1
                        if end - index > 1:
                            run = batch[index:end]
                            values = await upsert_many(cur, sql, [job[1] for job in run])
                            outcomes += [
                                (job[2], True, value)
                                for job, value in zip(run, values, strict=True)
                            ]
                            index = end
                            continue
                    index += 1
                    savepoint = savepoint and not alone
                    if savepoint:
                        await cur.execute("SAVEPOINT member")
                    try:
                        value = await fn(cur, sql, args)
                    except TaskloomError as exc:
                        if savepoint:
                            await cur.execute("ROLLBACK TO SAVEPOINT member")
                            await cur.execute("RELEASE SAVEPOINT member")
                        else:
                            undo_all = alone
                        outcomes.append((future, False, exc))
                        continue
                    if savepoint:
                        await cur.execute("RELEASE SAVEPOINT member")
                    outcomes.append((future, True, value))
            except BaseException:
                await rollback(conn)
                raise
            if undo_all:
                await rollback(conn)
                return outcomes
            wake = self._announced(batch)
            try:
                if wake:
                    await cur.execute(NOTIFY, (self._notify[0], wake))
                await cur.execute("COMMIT")
            except psycopg.Error as exc:
                if conn.broken or is_lost_connection(exc):
                    raise _CommitUnknown() from exc
                raise
            self.transactions += 1
            return outcomes
