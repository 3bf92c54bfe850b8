"""``PostgresStorage``: the StorageAdapter that many hosts share through one PostgreSQL.

Reads take a pooled connection for one statement each (autocommit, so each
sees everything committed before it began). Writes go through one writer task
per adapter that commits everything queued meanwhile in one transaction (group
commit, see ``_writer``); a write returns once its transaction is committed,
so with the server's default ``synchronous_commit = on`` a returned write
survives a crash of this process and of the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool

from taskloom.adapters.postgres._args import check_key, check_ops, positive, prefix_end
from taskloom.adapters.postgres._claim import claim_one
from taskloom.adapters.postgres._dsn import Dsn, LogScrubber
from taskloom.adapters.postgres._errors import is_lost_connection, map_pg_errors, translate
from taskloom.adapters.postgres._listen import Listener, channel_for
from taskloom.adapters.postgres._ops import (
    append_job,
    commit_job,
    delete_job,
    delete_versions_job,
    drop_stream_job,
    purge_job,
    put_job,
    upsert_job,
)
from taskloom.adapters.postgres._schema import SCHEMA_VERSION, Statements, prepare
from taskloom.adapters.postgres._writer import Writer, check_pool
from taskloom.contracts import (
    ClaimedRecord,
    ClaimOps,
    CommitResult,
    Op,
    Record,
    Secret,
    StorageError,
    StreamEntry,
    UsageError,
    check_if_version,
    check_name,
    check_read,
    check_scan,
    check_ttl,
    check_value,
)

__all__ = ["DsnSource", "PostgresStorage"]

_LOG = logging.getLogger("taskloom.adapters.postgres")

DsnSource = str | Secret | Callable[[], Awaitable[str | Secret]] | None
"""A DSN, a ``Secret`` holding one, a coroutine function that fetches one when the
store opens (a secret store lookup), or None for ``TASKLOOM_POSTGRES_DSN``."""

_PURGE_CHUNK = 1000
_PRUNE_PAGE = 1000


_PSYCOPG_LOGGERS = ("psycopg", "psycopg.pool")


class PostgresStorage:
    """A StorageAdapter on PostgreSQL (psycopg 3, a connection pool): shared by many hosts.

    ``dsn`` is a libpq connection string or URI, a ``Secret`` holding one, an
    async function returning one (looked up when the store opens), or None to
    read ``TASKLOOM_POSTGRES_DSN``. Its password never appears in a repr, an
    error or a log record of this adapter.

    Everything lives in the PostgreSQL ``schema`` (created, and migrated forward
    under an advisory lock, when first opened; a schema written by a newer
    taskloom is refused). The pool keeps ``min_size`` to ``max_size``
    connections; a call waits ``pool_timeout_s`` for one and a new connection
    ``connect_timeout_s`` for the server. ``pgbouncer=True`` turns off
    server-side prepared statements, which PgBouncer in transaction mode cannot
    carry. Serialization failures, deadlocks and a connection lost before
    COMMIT are retried inside, up to ``retries`` times.

    It claims natively (``claim``: ``FOR UPDATE SKIP LOCKED``) and wakes idle
    workers on other hosts (``wait_for_change``): a transaction that puts records
    in one of ``notify_namespaces`` (the run queue) sends one NOTIFY per such
    namespace; one connection per store LISTENs, except with ``pgbouncer=True``
    (PgBouncer in transaction mode cannot carry LISTEN), where waits just poll.

    Open with ``await PostgresStorage.open(dsn)`` or ``async with
    PostgresStorage(dsn) as storage``; a method called first also opens it. The
    adapter belongs to the event loop that opened it.
    """

    durable = True

    def __init__(
        self,
        dsn: DsnSource = None,
        *,
        schema: str = "taskloom",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        pool_timeout_s: float = 30.0,
        pgbouncer: bool = False,
        retries: int = 8,
        purge_interval_s: float | None = 60.0,
        application_name: str = "taskloom",
        notify_namespaces: Iterable[str] = ("queue",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sql = Statements.for_schema(schema)
        self._schema = schema
        for name, size in (("min_size", min_size), ("max_size", max_size)):
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 1000:
                raise UsageError(f"{name} must be an int from 0 to 1000, got {size!r}")
        if max_size < 1 or min_size > max_size:
            raise UsageError(
                f"need 1 <= max_size and min_size <= max_size, got {min_size} and {max_size}"
            )
        self._min_size, self._max_size = min_size, max_size
        self._connect_timeout_s = positive("connect_timeout_s", connect_timeout_s)
        self._pool_timeout_s = positive("pool_timeout_s", pool_timeout_s)
        if not isinstance(pgbouncer, bool):
            raise UsageError(f"pgbouncer must be True or False, got {pgbouncer!r}")
        self._pgbouncer = pgbouncer
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise UsageError(f"retries must be an int from 0 to 100, got {retries!r}")
        self._retries = retries
        if purge_interval_s is not None:
            positive("purge_interval_s", purge_interval_s, upper=1e9)
        self._purge_interval_s = purge_interval_s
        if not isinstance(application_name, str) or len(application_name) > 63:
            raise UsageError("application_name must be text of at most 63 characters")
        self._application_name = application_name
        if isinstance(notify_namespaces, str):
            raise UsageError("notify_namespaces must be a collection of namespaces, not one text")
        watched = frozenset(notify_namespaces)
        for name in watched:
            check_name(name, what="namespace")
        self._notify = (channel_for(schema), watched)
        self._listener: Listener | None = None
        self._clock = clock
        self._dsn_fetch: Callable[[], Awaitable[str | Secret]] | None = None
        self._dsn: Dsn | None = None
        if callable(dsn):
            self._dsn_fetch = dsn
        else:
            self._dsn = Dsn(dsn)
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._writer: Writer | None = None
        self._scrubber: LogScrubber | None = None
        self._purger: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False

    # --- what it is --------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds this store's tables."""
        return self._schema

    @property
    def where(self) -> str:
        """``user@host:port/dbname`` of the server (no password); "" before the DSN is known."""
        return self._dsn.describe() if self._dsn is not None else ""

    @property
    def write_transactions(self) -> int:
        """Write transactions committed so far: with group commit, far fewer than writes."""
        return self._writer.transactions if self._writer is not None else 0

    @property
    def retried_transactions(self) -> int:
        """Transactions run again after a serialization failure, deadlock or lost connection."""
        return self._writer.retried if self._writer is not None else 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._writer else "not opened"
        where = self.where or "DSN not fetched yet"
        return f"PostgresStorage({where!r}, schema={self._schema!r}, {state})"

    # --- lifecycle -----------------------------------------------------------------

    @classmethod
    async def open(cls, dsn: DsnSource = None, **options: Any) -> PostgresStorage:
        """Open (creating or migrating the schema if needed) the store ``dsn`` points at."""
        storage = cls(dsn, **options)
        await storage._ensure_open()
        return storage

    async def __aenter__(self) -> PostgresStorage:
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
        return UsageError(f"{self!r} is closed; open a new one to use it")

    async def _ensure_open(self) -> Writer:
        if self._closed:
            raise self._usage_closed()
        if self._writer is not None:
            return self._writer
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._writer is None and not self._closed:
                await self._open()
            if self._closed or self._writer is None:
                raise self._usage_closed()
            return self._writer

    def _connection_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            # None: never prepare on the server (PgBouncer in transaction mode).
            "prepare_threshold": None if self._pgbouncer else 5,
            "connect_timeout": max(2, math.ceil(self._connect_timeout_s)),
            "application_name": self._application_name,
        }

    async def _open(self, target_version: int = SCHEMA_VERSION) -> None:
        if self._dsn is None:
            assert self._dsn_fetch is not None
            fetched = await self._dsn_fetch()
            self._dsn = Dsn(fetched)
        dsn = self._dsn
        scrubber = LogScrubber(dsn)
        for name in _PSYCOPG_LOGGERS:
            logging.getLogger(name).addFilter(scrubber)
        self._scrubber = scrubber
        kwargs = self._connection_kwargs()
        try:
            with map_pg_errors(dsn):
                conn = await psycopg.AsyncConnection.connect(dsn.conninfo(), **kwargs)
                try:
                    await prepare(conn, self._schema, dsn.describe(), target_version=target_version)
                finally:
                    await conn.close()
                pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
                    dsn.conninfo(),
                    kwargs=kwargs,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._pool_timeout_s,
                    name=f"taskloom:{dsn.describe()}",
                    open=False,
                )
                await pool.open(wait=self._min_size > 0, timeout=self._connect_timeout_s)
        except BaseException:
            self._remove_scrubber()
            raise
        self._pool = pool
        self._writer = Writer(
            pool,
            self._sql,
            dsn,
            pool_timeout_s=self._pool_timeout_s,
            retries=self._retries,
            notify=self._notify,
        )
        if not self._pgbouncer:
            self._listener = Listener(dsn, self._notify[0], kwargs)
        if self._purge_interval_s is not None:
            self._purger = asyncio.get_running_loop().create_task(
                self._purge_forever(self._purge_interval_s), name=f"taskloom-purge:{dsn.describe()}"
            )

    def _remove_scrubber(self) -> None:
        if self._scrubber is not None:
            for name in _PSYCOPG_LOGGERS:
                logging.getLogger(name).removeFilter(self._scrubber)
            self._scrubber = None

    async def aclose(self) -> None:
        """Commit queued writes and close every connection; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
            self._purger = None
        writer, self._writer = self._writer, None
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        try:
            if listener is not None:
                await listener.aclose()
            if writer is not None:
                await writer.stop()
        finally:
            if pool is not None:
                await pool.close()
            self._remove_scrubber()

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is None or self._closed:
            return
        warnings.warn(
            f"{self!r} was never closed: use 'async with' or 'await storage.aclose()'",
            ResourceWarning,
            stacklevel=1,
        )

    async def _purge_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.purge_expired()
            except StorageError as exc:
                # The next round retries; reads already hide expired records.
                _LOG.warning("purging expired records on %s failed: %s", self.where, exc)

    # --- reads -----------------------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._closed:
            raise self._usage_closed()
        if self._pool is None:
            await self._ensure_open()
        pool, dsn = self._pool, self._dsn
        assert pool is not None and dsn is not None
        for attempt in range(2):
            try:
                async with pool.connection(timeout=self._pool_timeout_s) as conn:
                    cur = conn.cursor(binary=True)
                    await cur.execute(sql, params)
                    rows: list[tuple[Any, ...]] = await cur.fetchall()
                    return rows
            except (psycopg.Error, OSError) as exc:
                # A pooled connection the server dropped meanwhile (a restart, a failover
                # drops them all): replace the dead ones, then once more.
                if (
                    attempt == 0
                    and is_lost_connection(exc)
                    and not isinstance(exc, psycopg_pool.PoolTimeout)
                ):
                    await check_pool(pool)
                    continue
                raise translate(exc, dsn) from exc
        raise AssertionError("unreachable")

    async def get(self, namespace: str, key: str) -> Record | None:
        """The live record at ``namespace``/``key``, or None (ST1, ST5)."""
        check_key(namespace, "namespace")
        check_key(key)
        rows = await self._fetch(self._sql.get, (namespace, key, float(self._clock())))
        if not rows:
            return None
        value, version, updated_at, expires_at = rows[0]
        return Record(
            namespace=namespace,
            key=key,
            value=bytes(value),
            version=int(version),
            updated_at=float(updated_at),
            expires_at=None if expires_at is None else float(expires_at),
        )

    def _scan_query(
        self, namespace: str, prefix: str, start_after: str | None, limit: int | None, *, meta: bool
    ) -> tuple[str, tuple[Any, ...]]:
        check_key(namespace, "namespace")
        count = check_scan(prefix, start_after, limit)
        # PostgreSQL text cannot hold NUL, and no key contains one: a prefix with NUL
        # matches nothing, and the keys after "a\x00b" are exactly those after "a".
        if "\x00" in prefix:
            count = 0
            prefix = prefix.partition("\x00")[0]
        if start_after is not None:
            start_after = start_after.partition("\x00")[0]
        end = prefix_end(prefix)
        head = (namespace, prefix, start_after or "", float(self._clock()))
        sql = self._sql
        if end is None:
            return (sql.scan_meta if meta else sql.scan), (*head, count)
        return (sql.scan_meta_bounded if meta else sql.scan_bounded), (*head, end, count)

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
        rows = await self._fetch(sql, params)
        return [
            Record(
                namespace=namespace,
                key=key,
                value=bytes(value),
                version=int(version),
                updated_at=float(updated_at),
                expires_at=None if expires_at is None else float(expires_at),
            )
            for key, value, version, updated_at, expires_at in rows
        ]

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        """Entries of ``stream`` after ``after``, in order (ST8)."""
        check_name(stream, what="stream")
        count = check_read(after, limit)
        rows = await self._fetch(self._sql.read, (stream, after, count))
        return [
            StreamEntry(stream=stream, seq=int(seq), payload=bytes(payload), appended_at=float(at))
            for seq, payload, at in rows
        ]

    # --- writes ----------------------------------------------------------------------

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
        check_value(value)
        seconds = check_ttl(ttl)
        check_if_version(if_version)
        writer = await self._writer_for_call()
        now = float(self._clock())
        expires_at = None if seconds is None else now + seconds
        result: Record = await writer.submit(
            put_job if if_version is not None else upsert_job,
            (namespace, key, value, if_version, now, expires_at),
        )
        return result

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Remove the key; True if it existed (ST4), checked by ``if_version`` (ST3)."""
        check_key(namespace, "namespace")
        check_key(key)
        check_if_version(if_version)
        writer = await self._writer_for_call()
        result: bool = await writer.submit(
            delete_job, (namespace, key, if_version, float(self._clock()))
        )
        return result

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        """Add an entry at the stream's next sequence number (ST8)."""
        check_key(stream, "stream")
        check_value(payload, what="payload")
        writer = await self._writer_for_call()
        result: StreamEntry = await writer.submit(
            append_job, (stream, payload, float(self._clock()))
        )
        return result

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Apply every operation in order in one transaction, or none of them (ST9)."""
        checked = check_ops(ops)
        writer = await self._writer_for_call()
        if not checked:
            return CommitResult()
        result: CommitResult = await writer.submit(
            commit_job, (checked, float(self._clock())), savepoint=True
        )
        return result

    async def drop_stream(self, stream: str) -> bool:
        """Remove every entry of ``stream``; its next append is 1 again (``StreamDropping``)."""
        check_key(stream, "stream")
        writer = await self._writer_for_call()
        dropped: bool = await writer.submit(drop_stream_job, (stream,))
        return dropped

    # --- the queue's capabilities ----------------------------------------------------

    async def claim(
        self, namespace: str, *, prefix: str = "", limit: int = 1, ops_for: ClaimOps
    ) -> list[ClaimedRecord]:
        """Claim up to ``limit`` records of ``namespace`` under ``prefix`` (CL1-CL5).

        One transaction per record: the first live record no other claimer holds
        is locked (``FOR UPDATE SKIP LOCKED``), deleted at its version, and
        ``ops_for(record)``'s operations applied with it, all or nothing.
        """
        check_key(namespace, "namespace")
        if not isinstance(prefix, str):
            raise UsageError(f"prefix must be text, got {type(prefix).__name__}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be an int >= 1, got {limit!r}")
        if not callable(ops_for):
            raise UsageError("ops_for must be a function of a Record returning operations")
        await self._writer_for_call()
        pool, dsn = self._pool, self._dsn
        assert pool is not None and dsn is not None
        claimed: list[ClaimedRecord] = []
        if "\x00" in prefix:
            return claimed  # no key holds NUL
        high = prefix_end(prefix)
        after = ""
        while len(claimed) < limit:
            if self._closed:
                raise self._usage_closed()
            key, got = await claim_one(
                pool,
                self._sql,
                dsn,
                namespace=namespace,
                low=prefix,
                after=after,
                high=high,
                ops_for=ops_for,
                check_ops=check_ops,
                notify=self._notify,
                now=float(self._clock()),
                pool_timeout_s=self._pool_timeout_s,
                retries=self._retries,
            )
            if key is None:
                break
            after = key
            if got is not None:
                claimed.append(got)
        return claimed

    async def wait_for_change(self, namespace: str, *, timeout: float) -> bool:
        """True soon after a record of ``namespace`` (one of ``notify_namespaces``) was
        put by any host since the last True; else False after ``timeout`` seconds (WK1).

        Only a hint: keep polling as well. With ``pgbouncer=True``, or while the
        listening connection is down, it waits the timeout out and returns False.
        """
        check_key(namespace, "namespace")
        seconds = positive("timeout", timeout, upper=1e9)
        await self._writer_for_call()
        listener = self._listener
        if listener is None or namespace not in self._notify[1]:
            await asyncio.sleep(seconds)
            return False
        return await listener.wait(namespace, seconds)

    # --- retention -------------------------------------------------------------------

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
        if older_than is None and keep_last is None:
            raise UsageError("prune needs older_than, keep_last or both; to delete all use scan")
        if older_than is not None and (
            isinstance(older_than, bool)
            or not isinstance(older_than, int | float)
            or older_than < 0
        ):
            raise UsageError(f"older_than must be seconds >= 0, got {older_than!r}")
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
        ):
            raise UsageError(f"keep_last must be an int >= 0, got {keep_last!r}")
        seen: list[tuple[str, int, float]] = []
        after: str | None = None
        while True:
            sql, params = self._scan_query(namespace, prefix, after, _PRUNE_PAGE, meta=True)
            rows = await self._fetch(sql, params)
            seen.extend((str(k), int(v), float(u)) for k, v, u in rows)
            if len(rows) < _PRUNE_PAGE:
                break
            after = str(rows[-1][0])
        victims = seen
        if keep_last is not None:
            victims = sorted(seen, key=lambda row: (row[2], row[0]), reverse=True)[keep_last:]
        if older_than is not None:
            cutoff = float(self._clock()) - float(older_than)
            victims = [row for row in victims if row[2] < cutoff]
        if not victims:
            return 0
        writer = await self._writer_for_call()
        deleted: int = await writer.submit(
            delete_versions_job, (namespace, [(key, version) for key, version, _ in victims])
        )
        return deleted
