"""SQL of the SQLite adapter: the schema, its forward migrations, and the checks on open.

A database is taskloom's when its header carries our ``application_id`` and it
holds the ``taskloom_schema`` table. Anything else found at the location (random
bytes, another application's database) is refused with ``StorageCorrupted``
before a single byte of it is written, so that pointing taskloom at the wrong
path can never damage someone else's data.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time

from taskloom.adapters.sqlite._errors import translate
from taskloom.contracts import StorageCorrupted

__all__ = [
    "APPEND",
    "APPLICATION_ID",
    "DELETE",
    "DROP_STREAM",
    "GET",
    "MIGRATIONS",
    "PURGE_EXPIRED",
    "READ",
    "SCAN",
    "SCAN_BOUNDED",
    "SCHEMA_VERSION",
    "SELECT_VERSION",
    "UPSERT",
    "open_writer_connection",
    "prepare",
    "upsert_rows",
]

APPLICATION_ID = 0x546C6F6D
"""``PRAGMA application_id`` of every taskloom database ("Tlom")."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the records and streams tables.
    (
        """CREATE TABLE records (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            version INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL,
            PRIMARY KEY (namespace, key)
        )""",
        """CREATE TABLE streams (
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload BLOB NOT NULL,
            appended_at REAL NOT NULL,
            PRIMARY KEY (stream, seq)
        )""",
    ),
    # 2: an index so that the background purge of expired records does not scan everything.
    ("CREATE INDEX records_expiry ON records (expires_at) WHERE expires_at IS NOT NULL",),
)
"""Forward migrations: entry ``i`` brings a database from schema ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema this taskloom writes; a database with a higher one came from a newer taskloom."""

_CREATE_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS taskloom_schema "
    "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"

GET = (
    "SELECT value, version, updated_at, expires_at FROM records "
    f"WHERE namespace = ? AND key = ? AND {_LIVE}"
)
SELECT_VERSION = "SELECT version, expires_at FROM records WHERE namespace = ? AND key = ?"
UPSERT = """INSERT INTO records (namespace, key, value, version, updated_at, expires_at)
VALUES (?1, ?2, ?3, 1, ?4, ?5)
ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value,
    version = CASE
        WHEN records.expires_at IS NOT NULL AND records.expires_at <= excluded.updated_at THEN 1
        ELSE records.version + 1 END,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at
RETURNING version"""
_UPSERT_ROW = "(?, ?, ?, 1, ?, ?)"


@functools.lru_cache(maxsize=16)
def upsert_rows(count: int) -> str:
    """UPSERT for ``count`` rows at once, returning (namespace, key, version) per row."""
    values = ", ".join([_UPSERT_ROW] * count)
    head, _, tail = UPSERT.partition("VALUES (?1, ?2, ?3, 1, ?4, ?5)")
    tail = tail.replace("RETURNING version", "RETURNING namespace, key, version")
    return f"{head}VALUES {values}{tail}"


DELETE = "DELETE FROM records WHERE namespace = ? AND key = ? RETURNING expires_at"
DROP_STREAM = "DELETE FROM streams WHERE stream = ?"
DELETE_IF_VERSION = "DELETE FROM records WHERE namespace = ? AND key = ? AND version = ?"
APPEND = """INSERT INTO streams (stream, seq, payload, appended_at)
SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3 FROM streams WHERE stream = ?1
RETURNING seq"""
READ = (
    "SELECT seq, payload, appended_at FROM streams WHERE stream = ? AND seq > ? "
    "ORDER BY seq LIMIT ?"
)
_SCAN_HEAD = (
    "SELECT key, value, version, updated_at, expires_at FROM records "
    f"WHERE namespace = ? AND key >= ? AND key > ? AND {_LIVE}"
)
SCAN = f"{_SCAN_HEAD} ORDER BY key LIMIT ?"
SCAN_BOUNDED = f"{_SCAN_HEAD} AND key < ? ORDER BY key LIMIT ?"
SCAN_META = (
    "SELECT key, version, updated_at FROM records "
    f"WHERE namespace = ? AND key >= ? AND key > ? AND {_LIVE} ORDER BY key LIMIT ?"
)
SCAN_META_BOUNDED = (
    "SELECT key, version, updated_at FROM records "
    f"WHERE namespace = ? AND key >= ? AND key > ? AND {_LIVE} AND key < ? "
    "ORDER BY key LIMIT ?"
)
PURGE_EXPIRED = (
    "DELETE FROM records WHERE rowid IN (SELECT rowid FROM records "
    "WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)"
)

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _foreign(path: str, what: str) -> StorageCorrupted:
    return StorageCorrupted(
        f"{path} {what}, so taskloom will not touch it: move it away or give "
        "SQLiteStorage another path",
        path=path,
    )


def _check_file(path: str) -> None:
    """Refuse a directory, an empty file or one without SQLite's header; read only.

    taskloom creates a database whole (``_create``), so an empty file at the path
    was truncated or made by something else. The one exception is a database
    whose writes all still sit in its WAL (an empty main file beside a non-empty
    ``-wal``): SQLite recovers that itself.
    """
    try:
        if os.path.isdir(path):
            raise _foreign(path, "is a directory, not a taskloom database")
        if not os.path.exists(path):
            return
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
        wal = f"{path}-wal"
        wal_has_data = os.path.exists(wal) and os.path.getsize(wal) > 0
    except OSError as exc:
        raise translate(exc, path) from exc
    if not head and not wal_has_data:
        raise StorageCorrupted(
            f"database file {path} is empty (0 bytes): taskloom never leaves an empty "
            "database, so it was truncated or created by something else; nothing was "
            "changed: restore it from a backup, or remove it to start a new store "
            "('taskloom doctor --repair' removes an empty file)",
            path=path,
        )
    if head and head != _SQLITE_MAGIC:
        raise _foreign(path, "is not a SQLite database (its first bytes are not SQLite's header)")


def _create(path: str, *, target_version: int) -> None:
    """Create a new database at ``path`` whole: built aside, then linked into place.

    The file is private to the user (0600; SQLite gives its ``-wal`` and ``-shm``
    the same mode). Linking never replaces a database another process created
    meanwhile: then that one is used. A crash leaves no file at ``path``, or a
    complete one, never an empty one.
    """
    tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.new"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            prepare(conn, tmp, target_version=target_version)
            conn.execute("PRAGMA journal_mode = DELETE")  # fold the WAL into the file
        finally:
            conn.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use theirs
            os.link(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        for leftover in (tmp, f"{tmp}-journal", f"{tmp}-wal", f"{tmp}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _inspect(conn: sqlite3.Connection, path: str) -> int | None:
    """Return the schema version of the database, or None if it is empty (new).

    Raises StorageCorrupted for another application's database and for one
    written by a newer taskloom. Only reads.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if not tables and app_id in (0, APPLICATION_ID):
        return None
    if app_id != APPLICATION_ID or "taskloom_schema" not in tables:
        names = ", ".join(sorted(tables)[:8]) or "none"
        raise _foreign(path, f"holds a SQLite database of another application (tables: {names})")
    row = conn.execute("SELECT MAX(version) FROM taskloom_schema").fetchone()
    version = int(row[0] or 0)
    if version > SCHEMA_VERSION:
        raise StorageCorrupted(
            f"database at {path} was written by a newer taskloom (schema {version}; this "
            f"taskloom reads up to schema {SCHEMA_VERSION}): upgrade taskloom to use it",
            path=path,
        )
    return version


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the database to SCHEMA_VERSION inside one IMMEDIATE transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-inspect under the write lock: another process may have set it up meanwhile.
        version = _inspect(conn, path)
        if version is None:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(_CREATE_SCHEMA_TABLE)
            version = 0
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO taskloom_schema (version, applied_at) VALUES (?, ?)",
                (target, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def prepare(conn: sqlite3.Connection, path: str, *, target_version: int = SCHEMA_VERSION) -> None:
    """Check what is at ``path`` and create or migrate taskloom's schema.

    ``target_version`` exists so that tests can build a database of an older
    schema and watch the next open migrate it forward.
    """
    version = _inspect(conn, path)
    if version is None:
        # auto_vacuum must be chosen before the first table exists; WAL lets readers
        # proceed while the single writer commits.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
    if version is None or version < target_version:
        if target_version == SCHEMA_VERSION:
            _migrate(conn, path)
        else:
            _migrate_to(conn, path, target_version)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")


def _migrate_to(conn: sqlite3.Connection, path: str, target: int) -> None:
    """Create a database at an older schema (tests of the forward migrations only)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(_CREATE_SCHEMA_TABLE)
    for version in range(1, target + 1):
        for statement in MIGRATIONS[version - 1]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO taskloom_schema (version, applied_at) VALUES (?, ?)",
            (version, time.time()),
        )
    conn.execute("COMMIT")


def _apply_pragmas(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute(f"PRAGMA synchronous = {synchronous}")


def open_writer_connection(
    path: str, *, synchronous: str, busy_timeout_s: float, target_version: int = SCHEMA_VERSION
) -> sqlite3.Connection:
    """Open (and if needed create or migrate) the database; return the writer's connection.

    Runs on a worker thread: it touches the disk. The connection is in autocommit
    mode (``isolation_level=None``) so that the writer issues BEGIN IMMEDIATE and
    COMMIT itself, and ``check_same_thread=False`` because it is created here and
    then used only by the writer thread.
    """
    _check_file(path)
    try:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise translate(exc, path) from exc
    conn: sqlite3.Connection | None = None
    try:
        if not os.path.exists(path):
            _create(path, target_version=target_version)
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        prepare(conn, path, target_version=target_version)
        _apply_pragmas(conn, synchronous)
        return conn
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise translate(exc, path, busy_timeout_s=busy_timeout_s) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def reader_init_statements(synchronous: str) -> tuple[str, ...]:
    """Pragmas for a read connection: it must never write, even by mistake."""
    return ("PRAGMA query_only = 1", f"PRAGMA synchronous = {synchronous}")
