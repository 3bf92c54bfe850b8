"""``SQLiteStorage``: the embedded, durable StorageAdapter on one SQLite file.

Writes go through a single writer that commits every write queued at the moment
it runs in one transaction (group commit, see ``taskloom.adapters.sqlite._writer``): small batches
on the event loop itself, without a thread hop, larger ones on its own thread.
Small reads (a ``get``, a page of up to ``INLINE_READ_ROWS``) run on the event loop
too, on the write connection while it is free; the others, and any read while the
writer thread holds that connection, go in parallel to aiosqlite connections, one
round trip each. The database
runs in WAL mode so that readers never wait for the writer, and write
transactions begin IMMEDIATE under a busy timeout, so another process sharing
the file is waited for, never reported as ``database is locked``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from taskloom.adapters.sqlite._args import (
    check_key,
    check_ops,
    check_options,
    check_prune_args,
    choose_victims,
    prefix_end,
    sql_limit,
)
from taskloom.adapters.sqlite._ops import (
    OpsForFailed,
    append_job,
    claim_job,
    commit_job,
    delete_job,
    delete_versions_job,
    drop_stream_job,
    entry,
    integrity_job,
    purge_job,
    put_job,
    record,
    upsert_job,
    vacuum_job,
)
from taskloom.adapters.sqlite._readers import Readers
from taskloom.adapters.sqlite._schema import (
    GET,
    READ,
    SCAN,
    SCAN_BOUNDED,
    SCAN_META,
    SCAN_META_BOUNDED,
    SCHEMA_VERSION,
    open_writer_connection,
)
from taskloom.adapters.sqlite._writer import THREAD_ONLY, Writer
from taskloom.contracts import (
    MAX_VALUE_BYTES,
    Append,
    ClaimedRecord,
    ClaimOps,
    CommitResult,
    Op,
    Put,
    Record,
    StorageError,
    StorageFinding,
    StreamEntry,
    UsageError,
    check_if_version,
    check_name,
    check_read,
    check_scan,
    check_ttl,
    check_value,
)

__all__ = ["SQLiteStorage"]

_LOG = logging.getLogger("taskloom.adapters.sqlite")

_PURGE_CHUNK = 1000

_BYTES_PER_OP_BITS = 14
"""Every 16 KiB of data written counts as one more operation towards the writer's
inline limit, so a batch of large values is committed on the writer thread instead
of holding up the event loop (see ``taskloom.adapters.sqlite._writer``)."""


def _weight(ops: Sequence[Op]) -> int:
    """A commit's weight for the writer: its operations, plus one per 16 KiB of data."""
    size = 0
    for op in ops:
        if isinstance(op, Put):
            size += len(op.value)
        elif isinstance(op, Append):
            size += len(op.payload)
    return len(ops) + (size >> _BYTES_PER_OP_BITS)


_PRUNE_PAGE = 1000

_CLAIM_WEIGHT = 8
"""A claim's weight for the writer, per record asked for: its scan and operations."""

INLINE_READ_ROWS = 64
"""Largest page a ``scan`` or ``read`` asks for that is read on the event loop (a point
read always is, when the write connection is free): small reads cost a few
microseconds there, a thread round trip about a hundred."""


class SQLiteStorage:
    """A StorageAdapter on one SQLite file: durable, shared safely by several processes.

    ``synchronous="NORMAL"`` (the default) keeps every acknowledged write through
    a crash of the process; ``"FULL"`` also through a power loss, at the cost of
    an fsync per commit. ``busy_timeout_s`` is how long a write waits for another
    process's lock before ``StorageUnavailable``. Expired records are invisible at
    once and deleted every ``purge_interval_s`` seconds (None: only by
    ``purge_expired()``).

    Open with ``await SQLiteStorage.open(path)`` or ``async with
    SQLiteStorage(path) as storage``; a method called first also opens it.

    Writes from all tasks are committed together by one writer (group commit;
    small batches on the event loop, large ones on the writer's thread): a write
    returns once the transaction holding it is committed, so a
    returned write survives a killed process. A write whose caller is cancelled
    while it waits may still be committed, as with any database. Small reads run on
    the event loop on the write connection when it is free; the rest on
    ``readers`` aiosqlite connections (one round trip each). No read waits for
    the writer. The adapter belongs to the event loop that opened it.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        purge_interval_s: float | None = 60.0,
        readers: int = 2,
    ) -> None:
        self._path = check_options(
            path,
            synchronous=synchronous,
            busy_timeout_s=busy_timeout_s,
            purge_interval_s=purge_interval_s,
            readers=readers,
        )
        self._synchronous = str(synchronous).upper()
        self._busy_timeout_s = float(busy_timeout_s)
        self._clock = clock
        self._purge_interval_s = purge_interval_s
        self._reader_count = readers
        self._writer: Writer | None = None
        self._readers: Readers | None = None
        self._purger: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False

    @property
    def path(self) -> str:
        """Where the database file is."""
        return self._path

    @property
    def write_transactions(self) -> int:
        """How many write transactions this adapter has committed: with group commit,
        far fewer than the writes it was asked for when writers run concurrently."""
        return self._writer.transactions if self._writer is not None else 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._writer else "not opened"
        return f"SQLiteStorage({self._path!r}, {state})"

    # --- lifecycle -----------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        purge_interval_s: float | None = 60.0,
        readers: int = 2,
    ) -> SQLiteStorage:
        """Open (creating or migrating if needed) the database at ``path``."""
        storage = cls(
            path,
            synchronous=synchronous,
            busy_timeout_s=busy_timeout_s,
            clock=clock,
            purge_interval_s=purge_interval_s,
            readers=readers,
        )
        await storage._ensure_open()
        return storage

    async def __aenter__(self) -> SQLiteStorage:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _usage_closed(self) -> UsageError:
        return UsageError(f"SQLiteStorage({self._path!r}) is closed; open a new one to use it")

    async def _ensure_open(self) -> Writer:
        if self._closed:
            raise self._usage_closed()
        if self._writer is not None:
            return self._writer
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._writer is None:
                await self._open()
            if self._closed or self._writer is None:
                raise self._usage_closed()
            return self._writer

    async def _open(self, target_version: int = SCHEMA_VERSION) -> None:
        conn = await asyncio.to_thread(
            open_writer_connection,
            self._path,
            synchronous=self._synchronous,
            busy_timeout_s=self._busy_timeout_s,
            target_version=target_version,
        )
        writer = Writer(conn, self._path, self._busy_timeout_s)
        try:
            readers = await Readers.open(
                self._path,
                count=self._reader_count,
                busy_timeout_s=self._busy_timeout_s,
                synchronous=self._synchronous,
            )
        except BaseException:
            await writer.stop()
            raise
        self._writer = writer
        self._readers = readers
        if self._purge_interval_s is not None:
            self._purger = asyncio.get_running_loop().create_task(
                self._purge_forever(self._purge_interval_s), name=f"taskloom-purge:{self._path}"
            )

    async def aclose(self) -> None:
        """Finish queued writes and close every connection; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
            self._purger = None
        writer, self._writer = self._writer, None
        readers, self._readers = self._readers, None
        if writer is not None:
            await writer.stop()
        if readers is not None:
            await readers.close()

    def __del__(self) -> None:
        writer = getattr(self, "_writer", None)  # None too if __init__ raised
        if writer is None or self._closed:
            return
        warnings.warn(
            f"{self!r} was never closed: use 'async with' or 'await storage.aclose()'",
            ResourceWarning,
            stacklevel=1,
        )
        writer.stop_nowait()

    async def _purge_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.purge_expired()
            except StorageError as exc:
                # The next round retries; reads already hide expired records.
                _LOG.warning("purging expired records of %s failed: %s", self._path, exc)

    # --- reads ---------------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple[Any, ...], *, small: bool = False) -> list[Any]:
        """Rows of one SELECT. ``small`` (a point read, or a page of at most
        ``INLINE_READ_ROWS``) is read on the event loop on the write connection when it
        is free, with no thread round trip; anything else, or a busy connection, goes
        to a reader."""
        if small and self._writer is not None:
            rows = self._writer.read_inline(sql, params)
            if rows is not None:
                return rows
        readers = self._readers
        if readers is None:
            if self._closed:
                raise self._usage_closed()
            await self._ensure_open()
            readers = self._readers
            assert readers is not None
        return await readers.fetch(sql, params)

    async def get(self, namespace: str, key: str) -> Record | None:
        """The live record at ``namespace``/``key``, or None (ST1, ST5)."""
        check_key(namespace, "namespace")
        check_key(key)
        rows = await self._fetch(GET, (namespace, key, float(self._clock())), small=True)
        if not rows:
            return None
        value, version, updated_at, expires_at = rows[0]
        return record(namespace, key, value, version, updated_at, expires_at)

    def _scan_query(
        self, namespace: str, prefix: str, start_after: str | None, limit: int | None, *, meta: bool
    ) -> tuple[str, tuple[Any, ...]]:
        check_key(namespace, "namespace")
        count = sql_limit(check_scan(prefix, start_after, limit))
        end = prefix_end(prefix)
        head = (namespace, prefix, start_after or "", float(self._clock()))
        if end is None:
            return (SCAN_META if meta else SCAN), (*head, count)
        return (SCAN_META_BOUNDED if meta else SCAN_BOUNDED), (*head, end, count)

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Live records of ``namespace`` in key order, paged by ``start_after`` (ST6)."""
        sql, params = self._scan_query(namespace, prefix, start_after, limit, meta=False)
        small = limit is not None and limit <= INLINE_READ_ROWS
        rows = await self._fetch(sql, params, small=small)
        return [
            record(namespace, key, value, version, updated_at, expires_at)
            for key, value, version, updated_at, expires_at in rows
        ]

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        """Entries of ``stream`` after ``after``, in order (ST8)."""
        check_name(stream, what="stream")
        count = sql_limit(check_read(after, limit))
        small = limit is not None and limit <= INLINE_READ_ROWS
        rows = await self._fetch(READ, (stream, after, count), small=small)
        return [entry(stream, seq, payload, appended_at) for seq, payload, appended_at in rows]

    # --- writes --------------------------------------------------------------

    async def _writer_for_call(self) -> Writer:
        if self._closed:
            raise self._usage_closed()
        return self._writer or await self._ensure_open()

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        """Write ``value``; the version grows by one (ST2), checked by ``if_version`` (ST3)."""
        check_key(namespace, "namespace")
        check_key(key)
        if ttl is None and if_version is None and type(value) is bytes:
            # The hot path (plain puts, 100 concurrent writers): the same checks, inlined.
            if len(value) > MAX_VALUE_BYTES:
                check_value(value)
            writer = self._writer or await self._writer_for_call()
            plain: Record = await writer.submit(
                upsert_job,
                (namespace, key, value, None, float(self._clock()), None),
                weight=1 + (len(value) >> _BYTES_PER_OP_BITS),
            )
            return plain
        check_value(value)
        seconds = check_ttl(ttl)
        check_if_version(if_version)
        # No extra coroutine when open (None also once closed).
        writer = self._writer or await self._writer_for_call()
        now = float(self._clock())
        expires_at = None if seconds is None else now + seconds
        result: Record = await writer.submit(
            put_job if if_version is not None else upsert_job,
            (namespace, key, value, if_version, now, expires_at),
            weight=1 + (len(value) >> _BYTES_PER_OP_BITS),
        )
        return result

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Remove the key; True if it existed (ST4), checked by ``if_version`` (ST3)."""
        check_key(namespace, "namespace")
        check_key(key)
        check_if_version(if_version)
        writer = self._writer or await self._writer_for_call()
        result: bool = await writer.submit(
            delete_job, (namespace, key, if_version, float(self._clock())), weight=1
        )
        return result

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        """Add an entry at the stream's next sequence number (ST8)."""
        check_key(stream, "stream")
        check_value(payload, what="payload")
        writer = self._writer or await self._writer_for_call()
        result: StreamEntry = await writer.submit(
            append_job,
            (stream, payload, float(self._clock())),
            weight=1 + (len(payload) >> _BYTES_PER_OP_BITS),
        )
        return result

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Apply every operation in order in one transaction, or none of them (ST9)."""
        checked = check_ops(ops)
        writer = await self._writer_for_call()
        if not checked:
            return CommitResult()
        result: CommitResult = await writer.submit(
            commit_job, (checked, float(self._clock())), savepoint=True, weight=_weight(checked)
        )
        return result

    # --- the queue's capability --------------------------------------------------

    async def claim(
        self, namespace: str, *, prefix: str = "", limit: int = 1, ops_for: ClaimOps
    ) -> list[ClaimedRecord]:
        """Claim up to ``limit`` records of ``namespace`` under ``prefix`` (CL1-CL5).

        One write transaction reads the candidates in key order and claims them, each
        under a savepoint: deleted at its version together with ``ops_for(record)``'s
        operations. The transaction holds the file's write lock throughout, so claimers
        in other connections and processes never pick the same record and never
        conflict; like every small write it runs on the event loop when it can, so
        ``ops_for`` runs there or on the writer thread: it must only compute the
        operations. An exception it raises undoes the whole call and is raised here.
        """
        check_key(namespace, "namespace")
        check_scan(prefix, None, None)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be an int >= 1, got {limit!r}")
        if not callable(ops_for):
            raise UsageError("ops_for must be a function of a Record returning operations")
        writer = self._writer or await self._writer_for_call()
        if "\x00" in prefix:
            return []  # no key holds NUL
        try:
            claimed: list[ClaimedRecord] = await writer.submit(
                claim_job,
                (namespace, prefix, prefix_end(prefix), limit, ops_for, float(self._clock())),
                savepoint=True,
                weight=min(THREAD_ONLY, _CLAIM_WEIGHT * limit),
            )
        except OpsForFailed as failed:
            raise failed.error from None
        return claimed

    # --- retention -------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Delete every record whose TTL has passed; returns how many were deleted."""
        writer = await self._writer_for_call()
        total = 0
        while True:
            count: int = await writer.submit(purge_job, (float(self._clock()), _PURGE_CHUNK))
            total += count
            if count < _PURGE_CHUNK:
                return total

    async def prune(
        self,
        namespace: str,
        *,
        prefix: str = "",
        older_than: float | None = None,
        keep_last: int | None = None,
    ) -> int:
        """Delete old records of ``namespace`` under ``prefix``; returns how many.

        A record goes when it was last written more than ``older_than`` seconds
        ago (if given) and is not among the ``keep_last`` most recently written
        (if given); at least one of the two is required. A record rewritten while
        pruning runs is kept: deletes check the version that was scanned.
        """
        check_prune_args(older_than, keep_last)
        seen: list[tuple[str, int, float]] = []
        after: str | None = None
        while True:
            sql, params = self._scan_query(namespace, prefix, after, _PRUNE_PAGE, meta=True)
            rows = await self._fetch(sql, params)
            seen.extend((key, version, updated_at) for key, version, updated_at in rows)
            if len(rows) < _PRUNE_PAGE:
                break
            after = rows[-1][0]
        victims = choose_victims(seen, float(self._clock()), older_than, keep_last)
        if not victims:
            return 0
        writer = await self._writer_for_call()
        deleted: int = await writer.submit(
            delete_versions_job, (namespace, [(key, version) for key, version, _ in victims])
        )
        return deleted

    async def verify(self, *, repair: bool = False) -> list[StorageFinding]:
        """``PRAGMA integrity_check`` (``SelfChecking``); ``repair`` rebuilds damaged indexes.

        Damage to the tables themselves is only reported: restore the file from a
        backup (SQLite's ``.recover`` can salvage rows, but not without loss).
        """
        writer = await self._writer_for_call()
        left, reindexed = await writer.submit(integrity_job, (bool(repair),))
        findings = (
            [
                StorageFinding(
                    where=self._path,
                    problem="an index did not match its table; REINDEX rebuilt it from the table",
                    repaired=True,
                )
            ]
            if reindexed
            else []
        )
        findings += [
            StorageFinding(
                where=self._path,
                problem=f"integrity_check: {message}: restore the database from a backup",
            )
            for message in left
        ]
        return findings

    @staticmethod
    async def verify_file(path: str | os.PathLike[str]) -> list[StorageFinding]:
        """``PRAGMA integrity_check`` on a database that cannot be opened as a store.

        Read only (``mode=ro``): for ``taskloom doctor`` when opening refused the file,
        so that the report says what is damaged. Nothing is repaired.
        """
        where = os.fspath(path)

        def check() -> list[str]:
            try:
                conn = sqlite3.connect(f"file:{where}?mode=ro", uri=True)
            except sqlite3.Error as exc:
                return [str(exc)]
            try:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
            except sqlite3.Error as exc:
                return [str(exc)]
            finally:
                conn.close()
            return [str(row[0]) for row in rows if str(row[0]) != "ok"]

        messages = await asyncio.to_thread(check)
        return [
            StorageFinding(
                where=where, problem=f"integrity_check: {message}: restore it from a backup"
            )
            for message in messages
        ]

    async def stream_names(self) -> list[str]:
        """The names of every stream that has entries, sorted (for ``taskloom doctor``)."""
        rows = await self._fetch("SELECT DISTINCT stream FROM streams ORDER BY stream", ())
        return [str(row[0]) for row in rows]

    async def drop_stream(self, stream: str) -> bool:
        """Remove every entry of ``stream``; its next append is 1 again (``StreamDropping``).

        The rows' pages go to the free list; ``vacuum`` gives them back to the file system.
        """
        check_key(stream, "stream")
        writer = await self._writer_for_call()
        dropped: bool = await writer.submit(drop_stream_job, (stream,))
        return dropped

    async def vacuum(self, *, pages: int | None = None) -> int:
        """Give free pages back to the file system, at most ``pages`` (None: all).

        Databases are created with ``auto_vacuum=INCREMENTAL``, so this is cheap
        and can run in small steps beside normal traffic. Returns pages freed.
        """
        if pages is not None and (
            isinstance(pages, bool) or not isinstance(pages, int) or pages < 1
        ):
            raise UsageError(f"pages must be None or an int >= 1, got {pages!r}")
        writer = await self._writer_for_call()
        freed: int = await writer.submit(vacuum_job, (pages or 0,))
        return freed
