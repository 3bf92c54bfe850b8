"""The one place where psycopg and psycopg_pool exceptions become taskloom errors.

PostgreSQL says what went wrong in a five-character SQLSTATE; the mapping
looks at its class (the first two characters) and at a few exact codes, and
only then at the exception's Python class (a refused or lost connection has no
SQLSTATE at all). Every message is scrubbed of the DSN's password before it
is built into an error: ``Dsn.scrub`` runs on psycopg's text as on ours.

Serialization failures and deadlocks are not mapped here to an error a caller
sees: ``is_retryable`` tells the writer to run the transaction again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool

from taskloom.adapters.postgres._dsn import Dsn
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

__all__ = ["is_lost_connection", "is_retryable", "map_pg_errors", "translate"]

RETRYABLE_STATES = frozenset({"40001", "40P01"})
"""serialization_failure and deadlock_detected: running the transaction again cures them."""

_AUTH_STATES = frozenset({"28000", "28P01"})
_READ_ONLY_STATES = frozenset({"25006"})
_GONE_STATES = frozenset({"57P01", "57P02", "57P03", "57P05"})  # shutdowns, cannot connect now


_CONNECT_FAILURES = (
    # libpq reports a refused login without a SQLSTATE: recognise its words.
    ("password authentication failed", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ('role "', "28000"),  # role "x" does not exist
    ('database "', "3D000"),  # database "x" does not exist
    ("too many clients", "53300"),
    ("the database system is starting up", "57P03"),
    ("the database system is shutting down", "57P03"),
)


def _state(exc: BaseException) -> str:
    state = str(getattr(exc, "sqlstate", None) or "")
    if not state and isinstance(exc, psycopg.OperationalError):
        text = str(exc)
        for words, implied in _CONNECT_FAILURES:
            if words in text:
                return implied
    return state


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` asks for the whole transaction to be run again."""
    return _state(exc) in RETRYABLE_STATES


def is_lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (refused, dropped, server shut down)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return True
    state = _state(exc)
    if state.startswith("08") or state in _GONE_STATES:
        return True
    return isinstance(exc, psycopg.OperationalError) and not state


def _detail(exc: BaseException, dsn: Dsn) -> str:
    text = str(exc).strip().replace("\n", " ")
    return dsn.scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def translate(exc: BaseException, dsn: Dsn) -> TaskloomError:
    """The taskloom error for a backend exception raised against the server ``dsn`` names."""
    if isinstance(exc, TaskloomError):
        return exc
    where = dsn.describe()
    detail = _detail(exc, dsn)
    state = _state(exc)
    klass = state[:2]
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StorageUnavailable(
            f"no connection to PostgreSQL at {where} became free or could be opened in time "
            f"({detail}); check that the server is up and reachable, then retry (or give "
            "PostgresStorage a larger max_size or pool_timeout_s)"
        )
    if state == "53100" or (klass == "53" and state != "53300"):
        return StorageFull(
            f"PostgreSQL at {where} is out of disk space or memory ({detail}); free space "
            "on the server and retry: data written before is intact"
        )
    if state in _READ_ONLY_STATES:
        return StorageReadOnly(
            f"PostgreSQL at {where} accepts reads only ({detail}); point the DSN at the "
            "primary server, or turn off default_transaction_read_only"
        )
    if state in _AUTH_STATES:
        return StoragePermissionDenied(
            f"PostgreSQL at {where} refused the login ({detail}); check the user and "
            "password of the DSN and the server's pg_hba.conf"
        )
    if state == "42501":
        return StoragePermissionDenied(
            f"PostgreSQL at {where} denied a permission ({detail}); grant the DSN's user "
            "CREATE on the database and ownership of taskloom's schema"
        )
    if state == "3D000":
        return StorageUnavailable(
            f"PostgreSQL at {where} has no such database ({detail}); create it "
            "(createdb) or fix the database name in the DSN"
        )
    if state == "53300":
        return StorageUnavailable(
            f"PostgreSQL at {where} has too many connections ({detail}); retry later, "
            "give PostgresStorage a smaller max_size, or raise max_connections"
        )
    if state in RETRYABLE_STATES:
        return StorageUnavailable(
            f"PostgreSQL at {where} kept aborting the transaction on concurrent writes "
            f"({detail}) after every retry; retry later"
        )
    if is_lost_connection(exc):
        return StorageUnavailable(
            f"cannot reach PostgreSQL at {where} ({detail}); check that the server is up "
            "and reachable, then retry"
        )
    if state in ("54000", "54001") or state == "22001":
        return ValueTooLarge(
            f"PostgreSQL at {where} refused a value as too large ({detail}); store large "
            "data elsewhere and keep a reference"
        )
    if state in ("42P01", "42703", "3F000"):
        return StorageCorrupted(
            f"PostgreSQL at {where} does not have the tables taskloom created ({detail}); "
            "they were changed by something else: restore them or use another schema",
            path=where,
        )
    if isinstance(exc, psycopg.InterfaceError) and "closed" in str(exc).lower():
        return UsageError(f"the PostgreSQL connection to {where} is closed ({detail})")
    if isinstance(exc, OSError):
        return StorageUnavailable(
            f"cannot reach PostgreSQL at {where} ({detail}); check the network and retry"
        )
    return StorageError(
        f"PostgreSQL at {where} failed unexpectedly ({detail}); this is a bug in "
        "taskloom's PostgreSQL adapter or an unusual server setup: please report it"
    )


@contextmanager
def map_pg_errors(dsn: Dsn) -> Iterator[None]:
    """Translate any psycopg, pool or OS exception raised inside into a taskloom error."""
    try:
        yield
    except TaskloomError:
        raise
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, dsn) from exc
