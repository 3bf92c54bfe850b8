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

import attrs

from taskloom.adapters.sqlite._args import check_ops
from taskloom.adapters.sqlite._schema import (
    APPEND,
    DELETE,
    DELETE_IF_VERSION,
    DROP_STREAM,
    PURGE_EXPIRED,
    SCAN,
    SCAN_BOUNDED,
    SELECT_VERSION,
    UPSERT,
    upsert_rows,
)
from taskloom.contracts import (
    Append,
    Check,
    ClaimedRecord,
    ClaimOps,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Put,
    Record,
    StreamEntry,
    TaskloomError,
)

__all__ = [
    "UPSERT_CHUNKS",
    "OpsForFailed",
    "append_job",
    "claim_job",
    "commit_job",
    "delete_job",
    "delete_versions_job",
    "drop_stream_job",
    "entry",
    "integrity_job",
    "purge_job",
    "put_job",
    "record",
    "upsert_job",
    "vacuum_job",
]


_RECORD_FIELDS = ("namespace", "key", "value", "version", "updated_at", "expires_at")
_set = object.__setattr__


def _trusted_record(
    namespace: str,
    key: str,
    value: bytes,
    version: int,
    updated_at: float,
    expires_at: float | None,
) -> Record:
    """Build a Record without re-running its validators (a third of a put's cost).

    Every field comes from arguments that were validated on the way in, or from our
    own schema's typed columns, so the validators could only repeat what is known.
    """
    made = object.__new__(Record)
    _set(made, "namespace", namespace)
    _set(made, "key", key)
    _set(made, "value", value)
    _set(made, "version", version)
    _set(made, "updated_at", updated_at)
    _set(made, "expires_at", expires_at)
    return made


def _checked_record(
    namespace: str,
    key: str,
    value: bytes,
    version: int,
    updated_at: float,
    expires_at: float | None,
) -> Record:
    return Record(
        namespace=namespace,
        key=key,
        value=value,
        version=version,
        updated_at=updated_at,
        expires_at=expires_at,
    )


# Should Record ever gain a field, the shortcut would leave it unset: use the real
# constructor then.
record = (
    _trusted_record
    if tuple(a.name for a in attrs.fields(Record)) == _RECORD_FIELDS
    else _checked_record
)
"""Make a Record from known-good parts (positional: namespace, key, value, version,
updated_at, expires_at)."""


_ENTRY_FIELDS = ("stream", "seq", "payload", "appended_at")


def _trusted_entry(stream: str, seq: int, payload: bytes, appended_at: float) -> StreamEntry:
    """Build a StreamEntry without re-running validators; see ``_trusted_record``."""
    made = object.__new__(StreamEntry)
    _set(made, "stream", stream)
    _set(made, "seq", seq)
    _set(made, "payload", payload)
    _set(made, "appended_at", appended_at)
    return made


def _checked_entry(stream: str, seq: int, payload: bytes, appended_at: float) -> StreamEntry:
    return StreamEntry(stream=stream, seq=seq, payload=payload, appended_at=appended_at)


entry = (
    _trusted_entry
    if tuple(a.name for a in attrs.fields(StreamEntry)) == _ENTRY_FIELDS
    else _checked_entry
)
"""Make a StreamEntry from known-good parts (positional: stream, seq, payload, appended_at)."""


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
    return record(namespace, key, value, version, now, expires_at)


def _delete(
    cursor: sqlite3.Cursor, namespace: str, key: str, if_version: int | None, now: float
) -> bool:
    if if_version is not None:
        _check(cursor, namespace, key, if_version, now)
    row = cursor.execute(DELETE, (namespace, key)).fetchone()
    return row is not None and (row[0] is None or row[0] > now)


def _append(cursor: sqlite3.Cursor, stream: str, payload: bytes, now: float) -> StreamEntry:
    seq = cursor.execute(APPEND, (stream, payload, now)).fetchone()[0]
    return entry(stream, seq, payload, now)


def put_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> Record:
    """``put``: args (namespace, key, value, if_version, now, expires_at)."""
    return _put(cursor, *args)


UPSERT_CHUNKS = (256, 64, 16, 4, 1)
"""Row counts of the multi-row upserts; few sizes, so their statements stay cached."""


def _upsert_chunk(cursor: sqlite3.Cursor, chunk: list[tuple[Any, ...]]) -> list[Record]:
    """One multi-row upsert of puts to distinct keys; their records, in order."""
    params: list[Any] = []
    for namespace, key, value, _, now, expires_at in chunk:
        params += (namespace, key, value, now, expires_at)
    rows = cursor.execute(upsert_rows(len(chunk)), params).fetchall()
    # RETURNING promises no order. SQLite hands the rows back in the order it
    # applied them, and the keys are distinct: check that, and match by key if not.
    if all(row[1] == args[1] and row[0] == args[0] for row, args in zip(rows, chunk, strict=True)):
        return [
            record(namespace, key, value, row[2], now, expires_at)
            for (namespace, key, value, _, now, expires_at), row in zip(chunk, rows, strict=True)
        ]
    versions = {(row[0], row[1]): row[2] for row in rows}
    return [
        record(namespace, key, value, versions[(namespace, key)], now, expires_at)
        for namespace, key, value, _, now, expires_at in chunk
    ]


def _upsert_many(cursor: sqlite3.Cursor, batch: list[tuple[Any, ...]]) -> list[Record]:
    """Plain puts (no if_version) of one batch, as multi-row upserts with RETURNING.

    One statement per chunk instead of one per put halves the writer's cost per
    write. A chunk never holds the same key twice (a repeat starts the next
    chunk), so each returned row names its put unambiguously; chunks run in call
    order, so repeated puts of a key get increasing versions.
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
        while start < end:
            size = next(chunk for chunk in UPSERT_CHUNKS if chunk <= end - start)
            results += _upsert_chunk(cursor, batch[start : start + size])
            start += size
    return results


def upsert_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> Record:
    """``put`` without if_version: args as for put_job; batched by ``upsert_job.many``."""
    return _put(cursor, *args)


upsert_job.many = _upsert_many  # type: ignore[attr-defined]


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


class OpsForFailed(TaskloomError):
    """A claim's ``ops_for`` raised: the claim is undone, and ``claim`` raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"ops_for raised {type(error).__name__}: {error}")
        self.error = error


def claim_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> list[ClaimedRecord]:
    """``claim``: args (namespace, prefix, end, limit, ops_for, now); CL1-CL5 in one
    transaction.

    The transaction holds the database's write lock from its first statement, so the
    candidates read here cannot be taken by any other connection or process before
    this transaction ends: no claimer ever loses a race (CL2), and no record is
    skipped as locked. Each candidate is claimed under a savepoint of its own: one
    whose operations fail a version check is rolled back alone and skipped (CL3).
    """
    namespace: str = args[0]
    prefix: str = args[1]
    end: str | None = args[2]
    limit: int = args[3]
    ops_for: ClaimOps = args[4]
    now: float = args[5]
    # Nobody else can take a candidate while this transaction runs, so a page needs only
    # what is asked for (and one more); declined candidates page on.
    page = limit + 1
    claimed: list[ClaimedRecord] = []
    after = ""
    while len(claimed) < limit:
        if end is None:
            rows = cursor.execute(SCAN, (namespace, prefix, after, now, page)).fetchall()
        else:
            rows = cursor.execute(
                SCAN_BOUNDED, (namespace, prefix, after, now, end, page)
            ).fetchall()
        for key, value, version, updated_at, expires_at in rows:
            candidate = record(namespace, key, value, version, updated_at, expires_at)
            try:
                ops = ops_for(candidate)
                if ops is None:
                    continue
                checked = check_ops(
                    [Delete(namespace=namespace, key=key, if_version=version), *ops]
                )
            except Exception as exc:  # the caller's function: undo the claim, raise it there
                raise OpsForFailed(exc) from exc
            cursor.execute("SAVEPOINT claim")
            try:
                result = commit_job(cursor, (checked, now))
            except ConflictError:
                cursor.execute("ROLLBACK TO claim")
                cursor.execute("RELEASE claim")
                continue
            cursor.execute("RELEASE claim")
            claimed.append(ClaimedRecord(record=candidate, result=result))
            if len(claimed) >= limit:
                break
        if len(rows) < page:
            break
        after = rows[-1][0]
    return claimed


def purge_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> int:
    """Delete up to ``limit`` expired records: args (now, limit); returns how many."""
    cursor.execute(PURGE_EXPIRED, args)
    return cursor.rowcount


def delete_versions_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> int:
    """Delete records still at the version seen: args (namespace, [(key, version)])."""
    namespace: str = args[0]
    cursor.executemany(DELETE_IF_VERSION, [(namespace, key, version) for key, version in args[1]])
    return cursor.rowcount


def drop_stream_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> bool:
    """Delete every entry of a stream: args (stream,); True if it had any."""
    cursor.execute(DROP_STREAM, args)
    return cursor.rowcount > 0


_INDEX_ONLY = ("missing from index", "wrong # of entries in index", "non-unique entry in index")
"""integrity_check messages about an index alone: REINDEX rebuilds it from the table."""


def integrity_job(cursor: sqlite3.Cursor, args: tuple[Any, ...]) -> tuple[list[str], bool]:
    """``PRAGMA integrity_check``: args (repair,); returns (problems left, whether repaired).

    With ``repair`` and only index problems found, the indexes are rebuilt from
    their tables (nothing is lost) and the check runs again.
    """
    repair: bool = args[0]
    problems = _integrity(cursor)
    if repair and problems and all(any(m in p for m in _INDEX_ONLY) for p in problems):
        cursor.execute("REINDEX")
        return _integrity(cursor), True
    return problems, False


def _integrity(cursor: sqlite3.Cursor) -> list[str]:
    try:
        rows = cursor.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:  # too damaged for the check to walk it
        return [str(exc)]
    return [str(row[0]) for row in rows if str(row[0]) != "ok"]


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
