"""The write operations, as functions the writer thread runs inside a batch transaction.

Each takes the writer's cursor and a tuple of already validated arguments. A
version check that fails raises ``ConflictError`` *before* the operation writes,
so a single put or delete needs no savepoint; ``commit`` runs under one.
Timestamps come from the caller's clock, read on the event loop when the call
was made, so an injected clock governs TTLs exactly as it does in every adapter.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from taskloom.adapters._sqlite_schema import (
    APPEND,
    DELETE,
    DELETE_IF_VERSION,
    PURGE_EXPIRED,
    SELECT_VERSION,
    UPSERT,
)
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
    "append_job",
    "commit_job",
    "delete_job",
    "delete_versions_job",
    "purge_job",
    "put_job",
    "vacuum_job",
]


def _current_version(cursor: sqlite3.Cursor, namespace: str, key: str, now: float) -> int:
    """The key's live version, 0 if missing or expired (ST5)."""
    row = cursor.execute(SELECT_VERSION, (namespace, key)).fetchone()
    if row is None or (row[1] is not None and row[1] <= now):
        return 0
    return int(row[0])


def _check(cursor: sqlite3.Cursor, namespace: str, key: str, expected: int, now: float) -> None:
    actual = _current_version(cursor, namespace, key, now)
    if actual != expected:
        wanted = "to be missing" if expected == 0 else f"at version {expected}"
        found = "it is missing" if actual == 0 else f"it is at version {actual}"
        raise ConflictError(
            f"expected {namespace!r}/{key!r} {wanted}, but {found}: "
            "read it again and retry with the current version",
            namespace=namespace,
            key=key,
            expected=expected,
            actual=actual,
        )


def _put(
    cursor: sqlite3.Cursor,
    namespace: str,
    key: str,
    value: bytes,
    if_version: int | None,
    now: float,
    expires_at: float | None,
) -> Record:
    if if_version is not None:
        _check(cursor, namespace, key, if_version, now)
    version = cursor.execute(UPSERT, (namespace, key, value, now, expires_at)).fetchone()[0]
    return Record(
        namespace=namespace,
        key=key,
        value=value,
        version=version,
        updated_at=now,
        expires_at=expires_at,
    )


def _delete(
    cursor: sqlite3.Cursor, namespace: str, key: str, if_version: int | None, now: float
) -> bool:
    if if_version is not None:
        _check(cursor, namespace, key, if_version, now)
    row = cursor.execute(DELETE, (namespace, key)).fetchone()
    return row is not None and (row[0] is None or row[0] > now)


def _append(cursor: sqlite3.Cursor, stream: str, payload: bytes, now: float) -> StreamEntry:
    seq = cursor.execute(APPEND, (stream, payload, now)).fetchone()[0]
    return StreamEntry(stream=stream, seq=seq, payload=payload, appended_at=now)


def put_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> Record:
    """``put``: args (namespace, key, value, if_version, now, expires_at)."""
    return _put(cursor, *args)


def delete_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> bool:
    """``delete``: args (namespace, key, if_version, now)."""
    return _delete(cursor, *args)


def append_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> StreamEntry:
    """``append``: args (stream, payload, now)."""
    return _append(cursor, *args)


def commit_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> CommitResult:
    """``commit``: args (ops, now); runs under a savepoint, so a conflict undoes it all."""
    ops: tuple[Op, ...] = args[0]
    now: float = args[1]
    records: list[Record] = []
    entries: list[StreamEntry] = []
    deleted: list[bool] = []
    for op in ops:
        if isinstance(op, Put):
            expires_at = None if op.ttl is None else now + op.ttl
            records.append(
                _put(cursor, op.namespace, op.key, op.value, op.if_version, now, expires_at)
            )
        elif isinstance(op, Delete):
            deleted.append(_delete(cursor, op.namespace, op.key, op.if_version, now))
        elif isinstance(op, Append):
            entries.append(_append(cursor, op.stream, op.payload, now))
        elif isinstance(op, Check):
            _check(cursor, op.namespace, op.key, op.version, now)
    return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))


def purge_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> int:
    """Delete up to ``limit`` expired records: args (now, limit); returns how many."""
    cursor.execute(PURGE_EXPIRED, args)
    return cursor.rowcount


def delete_versions_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> int:
    """Delete records still at the version seen: args (namespace, [(key, version)])."""
    namespace: str = args[0]
    cursor.executemany(DELETE_IF_VERSION, [(namespace, key, version) for key, version in args[1]])
    return cursor.rowcount


def vacuum_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> int:
    """Return up to ``pages`` free pages to the file system (0: all); returns how many."""
    pages: int = args[0]
    before = int(cursor.execute("PRAGMA freelist_count").fetchone()[0])
    # Python's sqlite3 steps a statement without result columns only once, and one
    # step of incremental_vacuum frees one page: so ask for one page at a time.
    for _ in range(before if pages == 0 else min(pages, before)):
        cursor.execute("PRAGMA incremental_vacuum(1)")
    after = int(cursor.execute("PRAGMA freelist_count").fetchone()[0])
    return before - after
