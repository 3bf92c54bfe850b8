"""The one place where sqlite3 and aiosqlite exceptions become taskloom errors.

Callers of ``SQLiteStorage`` must never see ``sqlite3.OperationalError: database
is locked`` (the most reported failure of other SQLite-backed stores): every
backend exception crosses this boundary and leaves as a typed taskloom error whose
message names the database and says what to do. The mapping looks at SQLite's
primary result code first (Python 3.11 exposes it), because the exception class
alone does not say whether a failure was a busy lock, a full disk or a damaged
file; the class decides only when the code says nothing more specific.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from taskloom.contracts import (
    StorageCorrupted,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageReadOnly,
    StorageUnavailable,
    TaskloomError,
    UsageError,
    ValueTooLarge,
)

__all__ = ["CLASS_MAP", "is_busy", "is_environmental", "map_sqlite_errors", "translate"]

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

CLASS_MAP: dict[type[BaseException], type[TaskloomError]] = {
    # Most specific first: the lookup walks this in order with issubclass.
    sqlite3.IntegrityError: StorageCorrupted,
    sqlite3.DataError: ValueTooLarge,
    sqlite3.NotSupportedError: StorageUnavailable,
    sqlite3.InternalError: StorageUnavailable,
    sqlite3.OperationalError: StorageUnavailable,
    sqlite3.ProgrammingError: StorageError,
    sqlite3.DatabaseError: StorageCorrupted,
    sqlite3.InterfaceError: StorageError,
    sqlite3.Error: StorageError,
    sqlite3.Warning: StorageError,
}
"""Fallback by exception class, used when SQLite's result code is not decisive."""


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying that another connection holds the lock it needs."""
    return _code(exc) in _BUSY_CODES


def is_environmental(error: TaskloomError) -> bool:
    """Whether ``error`` concerns the whole database (busy, full, damaged), not one operation.

    The writer uses this to decide whether re-running the members of a failed
    batch one by one could help: it cannot when the disk is full or the lock is
    held, and each retry would only wait out the busy deadline again.
    """
    return isinstance(error, StorageUnavailable | StorageCorrupted)


def translate(exc: BaseException, path: str, *, busy_timeout_s: float = 0.0) -> TaskloomError:
    """Return the taskloom error for a backend exception raised on the database at ``path``."""
    if isinstance(exc, TaskloomError):
        return exc
    detail = f"{type(exc).__name__}: {exc}"
    code = _code(exc)
    if code in _BUSY_CODES:
        # SQLite's own text ("database is locked") stays on __cause__: callers of other
        # stores learned to grep for it, and here it means "wait or retry", said plainly.
        return StorageUnavailable(
            f"database at {path} stayed locked by another connection or process for more "
            f"than the busy timeout ({busy_timeout_s:g} s); retry later, or give "
            "SQLiteStorage a longer busy_timeout_s"
        )
    if code in _CORRUPT_CODES:
        return StorageCorrupted(
            f"database at {path} is damaged or is not a SQLite database ({detail}); "
            "restore it from a backup or point taskloom at another path",
            path=path,
        )
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(
            f"the disk holding {path} is full ({detail}); free space and retry: "
            "data written before is intact"
        )
    if code == sqlite3.SQLITE_READONLY:
        return StorageReadOnly(
            f"database at {path} is read-only ({detail}); check that the file, its "
            "directory and the filesystem are writable by this process (reads still work)"
        )
    if code in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return StoragePermissionDenied(
            f"database at {path} refused this process ({detail}); check the owner and "
            "mode of the file and its directory"
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        return StorageUnavailable(
            f"database at {path} cannot be opened ({detail}); check that its directory "
            "exists and is writable by this process"
        )
    if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_NOLFS, sqlite3.SQLITE_NOMEM):
        return StorageUnavailable(
            f"I/O failed on the database at {path} ({detail}); check the disk "
            "(space, quota, permissions) and retry: data written before is intact"
        )
    if code == sqlite3.SQLITE_TOOBIG:
        return ValueTooLarge(
            f"a value is too large for SQLite at {path} ({detail}); store large data "
            "elsewhere and keep a reference"
        )
    if isinstance(exc, sqlite3.OperationalError) and code == sqlite3.SQLITE_ERROR:
        # "no such table" and friends: our schema is not what taskloom wrote.
        return StorageCorrupted(
            f"database at {path} does not have the tables taskloom created ({detail}); "
            "it was changed by something else: restore it or use another path",
            path=path,
        )
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return StorageReadOnly(
            f"database at {path} is on a read-only filesystem ({detail}); remount it "
            "read-write or choose another path"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return StoragePermissionDenied(
            f"cannot use the database at {path} ({detail}); check the owner and mode of "
            "the file and its directory"
        )
    if isinstance(exc, OSError):
        return StorageUnavailable(
            f"cannot use the database at {path} ({detail}); check the path and its permissions"
        )
    if isinstance(exc, ValueError) and "closed" in str(exc).lower():
        return UsageError(f"the SQLite connection for {path} is closed ({detail})")
    for cls, target in CLASS_MAP.items():
        if isinstance(exc, cls):
            if target is StorageCorrupted:
                return StorageCorrupted(
                    f"database at {path} is damaged or holds unexpected data ({detail}); "
                    "restore it from a backup or point taskloom at another path",
                    path=path,
                )
            if target is ValueTooLarge:
                return ValueTooLarge(
                    f"SQLite at {path} refused a value ({detail}); store large data "
                    "elsewhere and keep a reference"
                )
            if target is StorageUnavailable:
                return StorageUnavailable(
                    f"database at {path} failed ({detail}); check the disk and retry"
                )
            return StorageError(
                f"SQLite failed unexpectedly on {path} ({detail}); this is a bug in "
                "taskloom's SQLite adapter: please report it"
            )
    return StorageError(
        f"unexpected failure on the database at {path} ({detail}); please report it"
    )


@contextmanager
def map_sqlite_errors(path: str, *, busy_timeout_s: float = 0.0) -> Iterator[None]:
    """Translate any sqlite3, aiosqlite or OS exception raised inside into a taskloom error."""
    try:
        yield
    except TaskloomError:
        raise
    except (sqlite3.Error, sqlite3.Warning, OSError, ValueError) as exc:
        raise translate(exc, path, busy_timeout_s=busy_timeout_s) from exc
