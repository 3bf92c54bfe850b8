"""SQL of the PostgreSQL adapter: the tables, their forward migrations, and the checks on open.

Everything taskloom stores lives in one PostgreSQL schema (``taskloom`` unless
told otherwise), so one database can hold several independent stores. Table
names are always qualified with it: a ``search_path`` set per session would be
lost behind PgBouncer in transaction mode.

Keys are ``text COLLATE "C"``: in a UTF8 database that compares bytes of UTF-8,
which is code point order (ST6) whatever the database's default collation. A
store is taskloom's when its schema holds ``taskloom_schema``; a schema of that
name that holds other tables is refused before anything in it is touched.

Creation and migrations run in one transaction under an advisory lock taken
on the schema's name, so hosts that start at once never migrate twice.
"""

from __future__ import annotations

import hashlib
import re
import time

import attrs
import psycopg

from taskloom.contracts import StorageCorrupted, StorageUnavailable, UsageError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Statements",
    "check_schema_name",
    "prepare",
]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: records, streams and the head of each stream (gapless numbers under concurrency).
    (
        """CREATE TABLE {s}.records (
            namespace text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            value bytea NOT NULL,
            version bigint NOT NULL,
            updated_at double precision NOT NULL,
            expires_at double precision,
            PRIMARY KEY (namespace, key)
        )""",
        "CREATE INDEX records_expiry ON {s}.records (expires_at) WHERE expires_at IS NOT NULL",
        """CREATE TABLE {s}.stream_heads (
            stream text COLLATE "C" PRIMARY KEY,
            last_seq bigint NOT NULL
        )""",
        """CREATE TABLE {s}.streams (
            stream text COLLATE "C" NOT NULL,
            seq bigint NOT NULL,
            payload bytea NOT NULL,
            appended_at double precision NOT NULL,
            PRIMARY KEY (stream, seq)
        )""",
    ),
    # 2: a failed version check inside a pipelined batch aborts it server-side (TL409).
    (
        """CREATE FUNCTION {s}.taskloom_conflict() RETURNS bigint LANGUAGE plpgsql VOLATILE
        AS $$ BEGIN RAISE EXCEPTION 'taskloom: a version check failed'
        USING ERRCODE = 'TL409'; END $$""",
    ),
)
"""Forward migrations: entry ``i`` brings a store from schema ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema this taskloom writes; a store with a higher one came from a newer taskloom."""

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_LIVE = "(expires_at IS NULL OR expires_at > %s)"
_GET = (
    "SELECT value, version, updated_at, expires_at FROM {s}.records "
    f"WHERE namespace = %s AND key = %s AND {_LIVE}"
)
_SELECT_VERSION = (
    "SELECT version, expires_at FROM {s}.records WHERE namespace = %s AND key = %s FOR SHARE"
)
_UPSERT_TAIL = """ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value,
    version = CASE
        WHEN r.expires_at IS NOT NULL AND r.expires_at <= excluded.updated_at THEN 1
        ELSE r.version + 1 END,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at"""
_UPSERT = (
    "INSERT INTO {s}.records AS r (namespace, key, value, version, updated_at, expires_at) "
    f"VALUES (%s, %s, %s, 1, %s, %s) {_UPSERT_TAIL} RETURNING version"
)
_UPSERT_MANY = (
    "INSERT INTO {s}.records AS r (namespace, key, value, version, updated_at, expires_at) "
    "SELECT n, k, v, 1, u, e FROM unnest("
    "%s::text[], %s::text[], %s::bytea[], %s::float8[], %s::float8[]) AS t(n, k, v, u, e) "
    f"{_UPSERT_TAIL} RETURNING namespace, key, version"
)
_INSERT_IF_MISSING = (
    "INSERT INTO {s}.records AS r (namespace, key, value, version, updated_at, expires_at) "
    "VALUES (%s, %s, %s, 1, %s, %s) ON CONFLICT (namespace, key) DO UPDATE SET "
    "value = excluded.value, version = 1, updated_at = excluded.updated_at, "
    "expires_at = excluded.expires_at "
    "WHERE r.expires_at IS NOT NULL AND r.expires_at <= excluded.updated_at RETURNING version"
)
_UPDATE_IF_VERSION = (
    "UPDATE {s}.records SET value = %s, version = version + 1, updated_at = %s, "
    f"expires_at = %s WHERE namespace = %s AND key = %s AND version = %s AND {_LIVE} "
    "RETURNING version"
)
_DELETE = "DELETE FROM {s}.records WHERE namespace = %s AND key = %s RETURNING expires_at"
_DELETE_IF_VERSION = (
    f"DELETE FROM {{s}}.records WHERE namespace = %s AND key = %s AND version = %s AND {_LIVE} "
    "RETURNING version"
)
_DELETE_VERSIONS = (
    "DELETE FROM {s}.records r USING unnest(%s::text[], %s::bigint[]) AS t(k, v) "
    "WHERE r.namespace = %s AND r.key = t.k AND r.version = t.v"
)
_APPEND = """WITH head AS (
    INSERT INTO {s}.stream_heads AS h (stream, last_seq) VALUES (%s, 1)
    ON CONFLICT (stream) DO UPDATE SET last_seq = h.last_seq + 1
    RETURNING stream, last_seq)
INSERT INTO {s}.streams (stream, seq, payload, appended_at)
SELECT stream, last_seq, %s, %s FROM head RETURNING seq"""
_READ = (
    "SELECT seq, payload, appended_at FROM {s}.streams WHERE stream = %s AND seq > %s "
    "ORDER BY seq LIMIT %s"
)
_SCAN_HEAD = (
    "SELECT key, value, version, updated_at, expires_at FROM {s}.records "
    f"WHERE namespace = %s AND key >= %s AND key > %s AND {_LIVE}"
)
_SCAN_META_HEAD = (
    "SELECT key, version, updated_at FROM {s}.records "
    f"WHERE namespace = %s AND key >= %s AND key > %s AND {_LIVE}"
)
_DROP_HEAD = "DELETE FROM {s}.stream_heads WHERE stream = %s RETURNING last_seq"
_DROP_ENTRIES = "DELETE FROM {s}.streams WHERE stream = %s"
# The pipelined forms: one statement each, whose failed check raises TL409 in the server.
_FAIL = "{s}.taskloom_conflict()"
_P_CHECK = (
    f"SELECT CASE WHEN count(*) = 1 THEN 1 ELSE {_FAIL} END FROM (SELECT 1 FROM {{s}}.records "
    f"WHERE namespace = %s AND key = %s AND version = %s AND {_LIVE} FOR SHARE) AS t"
)
# After the key was reserved (a statement of its own, which waits for a concurrent
# writer of the key): a new statement, so a new snapshot that sees what that writer
# committed. One statement for both would judge by the snapshot taken before the wait.
_P_CHECK_ABSENT = (
    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM (SELECT version, expires_at "
    "FROM {s}.records WHERE namespace = %s AND key = %s FOR SHARE) AS x WHERE x.version > 0 "
    f"AND (x.expires_at IS NULL OR x.expires_at > %s)) THEN 1 ELSE {_FAIL} END"
)
_P_WRAP = f"SELECT CASE WHEN count(*) = 1 THEN max(version) ELSE {_FAIL} END FROM u"
_CLAIM_NEXT = (
    "SELECT key, value, version, updated_at, expires_at FROM {s}.records "
    f"WHERE namespace = %s AND key >= %s AND key > %s AND {_LIVE}"
)
_CLAIM_TAIL = " ORDER BY key LIMIT 1 FOR UPDATE SKIP LOCKED"
_RESERVE = (
    "INSERT INTO {s}.records (namespace, key, value, version, updated_at, expires_at) "
    "VALUES (%s, %s, '', 0, 0, 0) ON CONFLICT (namespace, key) DO NOTHING RETURNING version"
)
_UNRESERVE = "DELETE FROM {s}.records WHERE namespace = %s AND key = %s AND version = 0"
_PURGE = (
    "DELETE FROM {s}.records WHERE ctid IN (SELECT ctid FROM {s}.records "
    "WHERE expires_at IS NOT NULL AND expires_at <= %s LIMIT %s)"
)


@attrs.frozen
class Statements:
    """Every statement of the adapter, with the schema's name filled in."""

    get: str
    select_version: str
    upsert: str
    upsert_many: str
    insert_if_missing: str
    update_if_version: str
    delete: str
    delete_if_version: str
    delete_versions: str
    append: str
    read: str
    scan: str
    scan_bounded: str
    scan_meta: str
    scan_meta_bounded: str
    purge: str
    reserve: str
    unreserve: str
    claim_next: str
    claim_next_bounded: str
    drop_head: str
    drop_entries: str
    p_check: str
    p_check_absent: str
    p_insert_if_missing: str
    p_update_if_version: str
    p_delete_if_version: str

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        """The statements for the store in ``schema`` (a name ``check_schema_name`` passed)."""
        s = f'"{check_schema_name(schema)}"'
        bounded = " AND key < %s ORDER BY key LIMIT %s"
        plain = " ORDER BY key LIMIT %s"
        return cls(
            get=_GET.format(s=s),
            select_version=_SELECT_VERSION.format(s=s),
            upsert=_UPSERT.format(s=s),
            upsert_many=_UPSERT_MANY.format(s=s),
            insert_if_missing=_INSERT_IF_MISSING.format(s=s),
            update_if_version=_UPDATE_IF_VERSION.format(s=s),
            delete=_DELETE.format(s=s),
            delete_if_version=_DELETE_IF_VERSION.format(s=s),
            delete_versions=_DELETE_VERSIONS.format(s=s),
            append=_APPEND.format(s=s),
            read=_READ.format(s=s),
            scan=_SCAN_HEAD.format(s=s) + plain,
            scan_bounded=_SCAN_HEAD.format(s=s) + bounded,
            scan_meta=_SCAN_META_HEAD.format(s=s) + plain,
            scan_meta_bounded=_SCAN_META_HEAD.format(s=s) + bounded,
            purge=_PURGE.format(s=s),
            reserve=_RESERVE.format(s=s),
            unreserve=_UNRESERVE.format(s=s),
            claim_next=_CLAIM_NEXT.format(s=s) + _CLAIM_TAIL,
            claim_next_bounded=_CLAIM_NEXT.format(s=s) + " AND key < %s" + _CLAIM_TAIL,
            drop_head=_DROP_HEAD.format(s=s),
            drop_entries=_DROP_ENTRIES.format(s=s),
            p_check=_P_CHECK.format(s=s),
            p_check_absent=_P_CHECK_ABSENT.format(s=s),
            p_insert_if_missing=f"WITH u AS ({_INSERT_IF_MISSING}) {_P_WRAP}".format(s=s),
            p_update_if_version=f"WITH u AS ({_UPDATE_IF_VERSION}) {_P_WRAP}".format(s=s),
            p_delete_if_version=f"WITH u AS ({_DELETE_IF_VERSION}) {_P_WRAP}".format(s=s),
        )


def check_schema_name(schema: object) -> str:
    """Return ``schema`` if it is a plain lower-case SQL identifier, else raise UsageError."""
    if not isinstance(schema, str) or not _NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise UsageError(
            f"schema must be 1 to 63 characters from a-z 0-9 _ (not starting with a digit "
            f"or pg_), got {schema!r}"
        )
    return schema


def _lock_id(schema: str) -> int:
    """The advisory lock that guards creating and migrating ``schema``."""
    digest = hashlib.sha256(f"taskloom-schema:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _inspect(
    cur: psycopg.AsyncCursor[tuple[object, ...]], schema: str, where: str
) -> int | None:
    """The store's schema version; None if the schema or its tables do not exist yet."""
    await cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    )
    tables = {str(row[0]) for row in await cur.fetchall()}
    if not tables:
        return None
    if "taskloom_schema" not in tables:
        names = ", ".join(sorted(tables)[:8])
        raise StorageCorrupted(
            f"schema {schema!r} of PostgreSQL at {where} holds tables of another application "
            f"({names}), so taskloom will not touch it: give PostgresStorage another schema",
            path=where,
        )
    await cur.execute(f'SELECT max(version) FROM "{schema}".taskloom_schema')
    row = await cur.fetchone()
    version = int(row[0] or 0) if row is not None else 0  # type: ignore[call-overload]
    if version > SCHEMA_VERSION:
        raise StorageCorrupted(
            f"schema {schema!r} of PostgreSQL at {where} was written by a newer taskloom "
            f"(schema {version}; this taskloom reads up to schema {SCHEMA_VERSION}): "
            "upgrade taskloom to use it",
            path=where,
        )
    return version


async def prepare(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str,
    where: str,
    *,
    target_version: int = SCHEMA_VERSION,
) -> None:
    """Check the server and the store; create or migrate it up to ``target_version``.

    ``conn`` is in autocommit mode; the work runs in one transaction of its own.
    ``target_version`` lets tests build a store at an older schema.
    """
    async with conn.cursor() as cur:
        await cur.execute("SHOW server_encoding")
        row = await cur.fetchone()
        encoding = str(row[0]) if row is not None else ""
        if encoding.upper() not in ("UTF8", "UTF-8"):
            raise StorageUnavailable(
                f"PostgreSQL database at {where} uses the {encoding} encoding; taskloom needs "
                "UTF8: create the database with ENCODING 'UTF8'"
            )
        version = await _inspect(cur, schema, where)
        if version is not None and version >= target_version:
            return
        async with conn.transaction():
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(schema),))
            # Look again under the lock: another host may have done it meanwhile.
            version = await _inspect(cur, schema, where)
            if version is None:
                await cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                await cur.execute(
                    f'CREATE TABLE "{schema}".taskloom_schema '
                    "(version integer PRIMARY KEY, applied_at double precision NOT NULL)"
                )
                version = 0
            for target in range(version + 1, target_version + 1):
                for statement in MIGRATIONS[target - 1]:
                    await cur.execute(statement.format(s=f'"{schema}"'))
                await cur.execute(
                    f'INSERT INTO "{schema}".taskloom_schema (version, applied_at) VALUES (%s, %s)',
                    (target, time.time()),
                )
