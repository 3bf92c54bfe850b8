"""The write operations, as coroutines the writer runs inside a batch transaction.

Each takes the batch's cursor, the store's statements and a tuple of already
validated arguments. A conditional write is one statement whose WHERE carries
the version check (PostgreSQL re-checks it on the newest row after waiting for
a concurrent writer), so a version mismatch writes nothing and needs no
savepoint; only ``commit`` runs under one. Timestamps come from the caller's
clock, read when the call was made, so an injected clock governs TTLs here as
in every adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from taskloom.adapters.postgres._schema import Statements
from taskloom.contracts import (
    Append,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Put,
    Record,
    StreamEntry,
)

__all__ = [
    "Cursor",
    "JobFn",
    "Plan",
    "append_job",
    "commit_job",
    "delete_job",
    "delete_versions_job",
    "drop_stream_job",
    "plan",
    "plan_commit",
    "purge_job",
    "put_job",
    "upsert_job",
    "upsert_many",
]

Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
JobFn = Callable[[Cursor, Statements, tuple[Any, ...]], Awaitable[Any]]
"""A unit of work the writer runs inside the batch's transaction."""


async def _current_version(
    cur: Cursor, sql: Statements, namespace: str, key: str, now: float
) -> int:
    """The key's live version, 0 if missing or expired (ST5); the row stays locked."""
    await cur.execute(sql.select_version, (namespace, key))
    row = await cur.fetchone()
    if row is None or (row[1] is not None and row[1] <= now):
        return 0
    return int(row[0])


def conflict(namespace: str, key: str, expected: int, actual: int) -> ConflictError:
    """The error of a failed version check, saying what was expected and what was found."""
    wanted = "to be missing" if expected == 0 else f"at version {expected}"
    found = "it is missing" if actual == 0 else f"it is at version {actual}"
    return ConflictError(
        f"expected {namespace!r}/{key!r} {wanted}, but {found}: "
        "read it again and retry with the current version",
        namespace=namespace,
        key=key,
        expected=expected,
        actual=actual,
    )


async def _check(
    cur: Cursor, sql: Statements, namespace: str, key: str, expected: int, now: float
) -> bool:
    """Raise ConflictError unless the key is at ``expected``; True if a placeholder was left.

    Checking that a key is missing must hold until COMMIT, but there is no row to
    lock: so an invisible placeholder row (version 0, expired since 1970) is
    inserted in its place. A concurrent writer of that key waits for this
    transaction, as it would for a row lock; the caller deletes the placeholder
    before committing (a later Put of the same key in the batch overwrites it,
    starting at version 1, since it counts as expired).
    """
    if expected == 0:
        await cur.execute(sql.reserve, (namespace, key))
        if await cur.fetchone() is not None:
            return True
    actual = await _current_version(cur, sql, namespace, key, now)
    if actual != expected:
        raise conflict(namespace, key, expected, actual)
    return False


async def _put(
    cur: Cursor,
    sql: Statements,
    namespace: str,
    key: str,
    value: bytes,
    if_version: int | None,
    now: float,
    expires_at: float | None,
) -> Record:
    if if_version is None:
        await cur.execute(sql.upsert, (namespace, key, value, now, expires_at))
    elif if_version == 0:
        await cur.execute(sql.insert_if_missing, (namespace, key, value, now, expires_at))
    else:
        await cur.execute(
            sql.update_if_version, (value, now, expires_at, namespace, key, if_version, now)
        )
    row = await cur.fetchone()
    if row is None:
        actual = await _current_version(cur, sql, namespace, key, now)
        raise conflict(namespace, key, if_version or 0, actual)
    return Record(
        namespace=namespace,
        key=key,
        value=value,
        version=int(row[0]),
        updated_at=now,
        expires_at=expires_at,
    )


async def _delete(
    cur: Cursor, sql: Statements, namespace: str, key: str, if_version: int | None, now: float
) -> bool:
    if if_version:
        await cur.execute(sql.delete_if_version, (namespace, key, if_version, now))
        if await cur.fetchone() is None:
            actual = await _current_version(cur, sql, namespace, key, now)
            raise conflict(namespace, key, if_version, actual)
        return True
    if if_version == 0:
        await _check(cur, sql, namespace, key, 0, now)
    await cur.execute(sql.delete, (namespace, key))
    row = await cur.fetchone()
    return row is not None and (row[0] is None or row[0] > now)


async def _append(
    cur: Cursor, sql: Statements, stream: str, payload: bytes, now: float
) -> StreamEntry:
    await cur.execute(sql.append, (stream, payload, now))
    row = await cur.fetchone()
    assert row is not None  # an INSERT ... SELECT of one row always returns it
    return StreamEntry(stream=stream, seq=int(row[0]), payload=payload, appended_at=now)


async def put_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> Record:
    """``put``: args (namespace, key, value, if_version, now, expires_at)."""
    return await _put(cur, sql, *args)


async def upsert_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> Record:
    """``put`` without if_version: args as for put_job; runs of them go to ``upsert_many``."""
    return await _put(cur, sql, *args)


async def upsert_many(cur: Cursor, sql: Statements, batch: list[tuple[Any, ...]]) -> list[Record]:
    """Plain puts of one batch as few multi-row upserts (``unnest`` of arrays).

    One statement for a whole run of puts instead of one round trip each: this is
    what makes group commit pay on a network. A statement never holds the same
    key twice (a repeat starts the next one), so each returned row names its put
    and repeated puts of a key get increasing versions in call order.
    """
    results: list[Record] = []
    start = 0
    total = len(batch)
    while start < total:
        seen: set[tuple[str, str]] = set()
        end = start
        while end < total:
            name = (batch[end][0], batch[end][1])
            if name in seen:
                break
            seen.add(name)
            end += 1
        chunk = batch[start:end]
        await cur.execute(
            sql.upsert_many,
            (
                [a[0] for a in chunk],
                [a[1] for a in chunk],
                [a[2] for a in chunk],
                [a[4] for a in chunk],
                [a[5] for a in chunk],
            ),
        )
        versions = {(row[0], row[1]): int(row[2]) for row in await cur.fetchall()}
        results += [
            Record(
                namespace=namespace,
                key=key,
                value=value,
                version=versions[(namespace, key)],
                updated_at=now,
                expires_at=expires_at,
            )
            for namespace, key, value, _, now, expires_at in chunk
        ]
        start = end
    return results


async def delete_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> bool:
    """``delete``: args (namespace, key, if_version, now)."""
    return await _delete(cur, sql, *args)


async def append_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> StreamEntry:
    """``append``: args (stream, payload, now)."""
    return await _append(cur, sql, *args)


async def commit_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> CommitResult:
    """``commit``: args (ops, now); runs under a savepoint, so a conflict undoes it all."""
    ops: tuple[Op, ...] = args[0]
    now: float = args[1]
    records: list[Record] = []
    entries: list[StreamEntry] = []
    deleted: list[bool] = []
    reserved: list[tuple[str, str]] = []
    for op in ops:
        if isinstance(op, Put):
            expires_at = None if op.ttl is None else now + op.ttl
            records.append(
                await _put(cur, sql, op.namespace, op.key, op.value, op.if_version, now, expires_at)
            )
        elif isinstance(op, Delete):
            deleted.append(await _delete(cur, sql, op.namespace, op.key, op.if_version, now))
        elif isinstance(op, Append):
            entries.append(await _append(cur, sql, op.stream, op.payload, now))
        elif isinstance(op, Check) and await _check(
            cur, sql, op.namespace, op.key, op.version, now
        ):
            reserved.append((op.namespace, op.key))
    for namespace, key in reserved:
        await cur.execute(sql.unreserve, (namespace, key))
    return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))


async def drop_stream_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> bool:
    """Remove a whole stream: args (stream,); True if it had entries.

    The head row goes first: that waits for appends in flight and makes later ones
    start again at 1; the entries are deleted by a second statement, whose snapshot
    sees every append committed before the head was taken.
    """
    await cur.execute(sql.drop_head, args)
    await cur.execute(sql.drop_entries, args)
    return cur.rowcount > 0


async def purge_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> int:
    """Delete up to ``limit`` expired records: args (now, limit); returns how many."""
    await cur.execute(sql.purge, args)
    return max(cur.rowcount, 0)


async def delete_versions_job(cur: Cursor, sql: Statements, args: tuple[Any, ...]) -> int:
    """Delete records still at the version seen: args (namespace, [(key, version)])."""
    namespace: str = args[0]
    pairs: list[tuple[str, int]] = args[1]
    await cur.execute(
        sql.delete_versions, ([k for k, _ in pairs], [v for _, v in pairs], namespace)
    )
    return max(cur.rowcount, 0)


# --- pipelined forms ---------------------------------------------------------------------
#
# A batch whose every member has a plan is sent in one pipeline (BEGIN, every statement,
# COMMIT: one round trip) and its results read afterwards. A failed version check raises
# TL409 in the server, which aborts the whole batch; the writer then runs it again the
# serial way, where each member's conflict is its own.

Statement = tuple[str, tuple[Any, ...]]
Finish = Callable[[list[Cursor]], Awaitable[Any]]
Plan = tuple[list[Statement], Finish]


async def _version_of(cur: Cursor) -> int:
    row = await cur.fetchone()
    assert row is not None  # a pipelined write returns its row or raised TL409
    return int(row[0])


def _put_plan(
    sql: Statements,
    namespace: str,
    key: str,
    value: bytes,
    if_version: int | None,
    now: float,
    expires_at: float | None,
) -> tuple[Statement, Callable[[Cursor], Awaitable[Record]]]:
    if if_version is None:
        statement: Statement = (sql.upsert, (namespace, key, value, now, expires_at))
    elif if_version == 0:
        statement = (sql.p_insert_if_missing, (namespace, key, value, now, expires_at))
    else:
        statement = (
            sql.p_update_if_version,
            (value, now, expires_at, namespace, key, if_version, now),
        )

    async def finish(cur: Cursor) -> Record:
        return Record(
            namespace=namespace,
            key=key,
            value=value,
            version=await _version_of(cur),
            updated_at=now,
            expires_at=expires_at,
        )

    return statement, finish


def _check_absent(sql: Statements, namespace: str, key: str, now: float) -> list[Statement]:
    """Reserve the key (see ``_check``), then check in a later statement that it is missing."""
    return [(sql.reserve, (namespace, key)), (sql.p_check_absent, (namespace, key, now))]


def plan_commit(sql: Statements, ops: tuple[Op, ...], now: float) -> Plan:
    statements: list[Statement] = []
    readers: list[tuple[str, Callable[[Cursor], Awaitable[Any]] | None]] = []
    reserved: list[tuple[str, str]] = []
    for op in ops:
        if isinstance(op, Put):
            expires_at = None if op.ttl is None else now + op.ttl
            statement, read_record = _put_plan(
                sql, op.namespace, op.key, op.value, op.if_version, now, expires_at
            )
            statements.append(statement)
            readers.append(("record", read_record))
        elif isinstance(op, Delete):
            if op.if_version:
                statements.append(
                    (sql.p_delete_if_version, (op.namespace, op.key, op.if_version, now))
                )
                readers.append(("deleted_checked", None))
                continue
            if op.if_version == 0:
                statements += _check_absent(sql, op.namespace, op.key, now)
                readers += [("check", None), ("check", None)]
            statements.append((sql.delete, (op.namespace, op.key)))
            readers.append(("deleted", None))
        elif isinstance(op, Append):
            statements.append((sql.append, (op.stream, op.payload, now)))
            readers.append((op.stream, None))
        elif isinstance(op, Check):
            if op.version == 0:
                statements += _check_absent(sql, op.namespace, op.key, now)
                readers.append(("check", None))
                reserved.append((op.namespace, op.key))
            else:
                statements.append((sql.p_check, (op.namespace, op.key, op.version, now)))
            readers.append(("check", None))
    for namespace, key in reserved:
        statements.append((sql.unreserve, (namespace, key)))
        readers.append(("check", None))

    async def finish_commit(cursors: list[Cursor]) -> CommitResult:
        records: list[Record] = []
        entries: list[StreamEntry] = []
        deleted: list[bool] = []
        for (kind, reader), cur in zip(readers, cursors, strict=True):
            if reader is not None:
                records.append(await reader(cur))
            elif kind == "deleted_checked":
                deleted.append(True)
            elif kind == "deleted":
                row = await cur.fetchone()
                deleted.append(row is not None and (row[0] is None or row[0] > now))
            elif kind != "check":
                entries.append(
                    StreamEntry(
                        stream=kind, seq=await _version_of(cur), payload=b"", appended_at=now
                    )
                )
        if entries:  # the payloads, in the order of the appends
            payloads = iter(op.payload for op in ops if isinstance(op, Append))
            entries = [
                StreamEntry(stream=e.stream, seq=e.seq, payload=next(payloads), appended_at=now)
                for e in entries
            ]
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))

    return statements, finish_commit


def plan(fn: JobFn, sql: Statements, args: tuple[Any, ...]) -> Plan | None:
    """The pipelined form of a job, or None when it has none (it then runs serially)."""
    if fn is upsert_job or fn is put_job:
        statement, finish_one = _put_plan(sql, *args)

        async def finish_put(cursors: list[Cursor]) -> Record:
            return await finish_one(cursors[0])

        return [statement], finish_put
    if fn is append_job:
        stream, payload, now = args

        async def finish_append(cursors: list[Cursor]) -> StreamEntry:
            seq = await _version_of(cursors[0])
            return StreamEntry(stream=stream, seq=seq, payload=payload, appended_at=now)

        return [(sql.append, (stream, payload, now))], finish_append
    if fn is commit_job:
        return plan_commit(sql, args[0], args[1])
    return None
