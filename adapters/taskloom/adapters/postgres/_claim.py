"""The native claim (``ClaimingStorage.claim``): ``SELECT ... FOR UPDATE SKIP LOCKED``.

Each claim is one READ COMMITTED transaction on a pooled connection: the first
live record of the namespace under the prefix that no other transaction holds
is locked (``FOR UPDATE SKIP LOCKED``: a record another claimer is taking is
skipped, never waited for), ``ops_for`` is asked what claiming it writes, and
its deletion at the version read plus those operations commit together. Many
workers on many hosts claim side by side without colliding on one record,
where compare-and-set claimers would all race for the first one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg_pool

from taskloom.adapters.postgres._dsn import Dsn
from taskloom.adapters.postgres._errors import is_lost_connection, is_retryable, translate
from taskloom.adapters.postgres._listen import NOTIFY
from taskloom.adapters.postgres._ops import plan_commit
from taskloom.adapters.postgres._schema import Statements
from taskloom.adapters.postgres._writer import CONFLICT_STATE, rollback
from taskloom.contracts import (
    ClaimedRecord,
    ClaimOps,
    CommitResult,
    Op,
    Put,
    Record,
    StorageUnavailable,
)

__all__ = ["claim_one"]

ChecksOps = Callable[[Sequence[Op]], tuple[Op, ...]]


async def claim_one(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    sql: Statements,
    dsn: Dsn,
    *,
    namespace: str,
    low: str,
    after: str,
    high: str | None,
    ops_for: ClaimOps,
    check_ops: ChecksOps,
    notify: tuple[str, frozenset[str]],
    now: float,
    pool_timeout_s: float,
    retries: int,
) -> tuple[str | None, ClaimedRecord | None]:
    """Try the first unlocked live record after ``after``; (its key, the claim or None).

    The key is None when no candidate is left. A claim of None with a key means
    ``ops_for`` declined the record or a version check failed (CL3): skip it.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _attempt(
                pool,
                sql,
                namespace=namespace,
                low=low,
                after=after,
                high=high,
                ops_for=ops_for,
                check_ops=check_ops,
                notify=notify,
                now=now,
                pool_timeout_s=pool_timeout_s,
            )
        except (psycopg.Error, OSError) as exc:
            again = is_retryable(exc) or (
                is_lost_connection(exc) and not isinstance(exc, psycopg_pool.PoolTimeout)
            )
            if again and attempt <= retries and not isinstance(exc, _CommitLost):
                await asyncio.sleep(min(0.002 * 2**attempt, 0.2) * random.random())
                continue
            if isinstance(exc, _CommitLost):
                error = StorageUnavailable(
                    f"the connection to PostgreSQL at {dsn.describe()} was lost while "
                    "committing a claim; it may or may not have been taken: an expired "
                    "lease brings the run back if it was"
                )
                raise error from exc.__cause__
            raise translate(exc, dsn) from exc


class _CommitLost(psycopg.OperationalError):
    """The connection was lost while a claim's COMMIT was in flight."""


async def _attempt(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    sql: Statements,
    *,
    namespace: str,
    low: str,
    after: str,
    high: str | None,
    ops_for: ClaimOps,
    check_ops: ChecksOps,
    notify: tuple[str, frozenset[str]],
    now: float,
    pool_timeout_s: float,
) -> tuple[str | None, ClaimedRecord | None]:
    async with pool.connection(timeout=pool_timeout_s) as conn:
        cur: psycopg.AsyncCursor[Any] = conn.cursor()
        key_seen = ""
        committing = False
        try:
            # Round trip 1: BEGIN and the locking SELECT together.
            async with conn.pipeline():
                await cur.execute("BEGIN ISOLATION LEVEL READ COMMITTED", prepare=False)
                if high is None:
                    await cur.execute(sql.claim_next, (namespace, low, after, now), prepare=False)
                else:
                    await cur.execute(
                        sql.claim_next_bounded, (namespace, low, after, now, high), prepare=False
                    )
            row = await cur.fetchone()
            if row is None:
                await rollback(conn)
                return None, None
            key, value, version, updated_at, expires_at = row
            record = Record(
                namespace=namespace,
                key=str(key),
                value=bytes(value),
                version=int(version),
                updated_at=float(updated_at),
                expires_at=None if expires_at is None else float(expires_at),
            )
            key_seen = record.key
            ops = ops_for(record)
            if ops is None:
                await rollback(conn)
                return record.key, None
            checked = check_ops(ops)
            statements, finish = plan_commit(sql, checked, now)
            channel, watched = notify
            wake = sorted({op.namespace for op in checked if isinstance(op, Put)} & watched)
            cursors: list[psycopg.AsyncCursor[Any]] = []
            # Round trip 2: the deletion, ops_for's operations and COMMIT; a failed check
            # raises TL409 in the server and aborts it all (CL3: the record is skipped).
            committing = True
            async with conn.pipeline():
                await cur.execute(
                    sql.p_delete_if_version,
                    (namespace, record.key, record.version, now),
                    prepare=False,
                )
                for query, params in statements:
                    op_cur: psycopg.AsyncCursor[Any] = conn.cursor()
                    await op_cur.execute(query, params, prepare=False)
                    cursors.append(op_cur)
                if wake:
                    await cur.execute(NOTIFY, (channel, wake), prepare=False)
                await conn.execute("COMMIT", prepare=False)
        except psycopg.Error as exc:
            if str(getattr(exc, "sqlstate", "") or "") == CONFLICT_STATE:
                await rollback(conn)
                return key_seen, None
            if committing and (conn.broken or is_lost_connection(exc)):
                raise _CommitLost(str(exc)) from exc
            await rollback(conn)
            raise
        except BaseException:
            await rollback(conn)
            raise
        result: CommitResult = await finish(cursors)
        return record.key, ClaimedRecord(record=record, result=result)
