"""Argument checks and pure helpers of ``SQLiteStorage``, kept apart so they read alone.

Everything here runs on the event loop before a call reaches SQLite: a call
with a bad argument fails at once with ``UsageError``/``InvalidKey``/
``ValueTooLarge`` and never occupies the writer (ST10: a failed call stores
nothing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from taskloom.contracts import (
    MAX_KEY_BYTES,
    Append,
    Check,
    Delete,
    Op,
    Put,
    UsageError,
    check_if_version,
    check_name,
    check_ttl,
    check_value,
)

__all__ = [
    "check_key",
    "check_ops",
    "check_prune_args",
    "choose_victims",
    "prefix_end",
    "sql_limit",
]


def check_options(
    path: object,
    *,
    synchronous: object,
    busy_timeout_s: object,
    purge_interval_s: object,
    readers: object,
) -> str:
    """Check SQLiteStorage's constructor arguments; return the path as text."""
    location = os.fspath(path) if isinstance(path, str | os.PathLike) else path
    if not isinstance(location, str) or location in ("", ":memory:"):
        raise UsageError(
            "SQLiteStorage needs a file path; for a store in memory use "
            "taskloom.adapters.memory.MemoryStorage"
        )
    if str(synchronous).upper() not in ("NORMAL", "FULL"):
        raise UsageError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
    if (
        isinstance(busy_timeout_s, bool)
        or not isinstance(busy_timeout_s, int | float)
        or not 0 < busy_timeout_s < 1e6
    ):
        raise UsageError(f"busy_timeout_s must be a positive number, got {busy_timeout_s!r}")
    if purge_interval_s is not None and (
        isinstance(purge_interval_s, bool)
        or not isinstance(purge_interval_s, int | float)
        or not 0 < purge_interval_s < 1e9
    ):
        raise UsageError(f"purge_interval_s must be positive or None, got {purge_interval_s!r}")
    if isinstance(readers, bool) or not isinstance(readers, int) or not 1 <= readers <= 16:
        raise UsageError(f"readers must be an int from 1 to 16, got {readers!r}")
    return location


def check_key(name: object, what: str = "key") -> None:
    """``check_name`` with a shortcut for the common case, on every write's hot path.

    Non-empty ASCII text without NUL and at most MAX_KEY_BYTES long is valid (its
    UTF-8 is itself): that is settled without encoding; all else goes to the
    contract's ``check_name``, which stays the authority.
    """
    if (
        type(name) is str
        and name.isascii()
        and 0 < len(name) <= MAX_KEY_BYTES
        and "\x00" not in name
    ):
        return
    check_name(name, what=what)


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    None when there is none (the prefix is empty or only U+10FFFF). SQLite compares
    TEXT as UTF-8 bytes, whose order is code point order, so ``prefix <= key <
    prefix_end(prefix)`` is exactly ``key.startswith(prefix)`` and uses the index.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


def sql_limit(limit: int | None) -> int:
    """SQLite's LIMIT for a checked ``limit``: -1 (none) for None."""
    return -1 if limit is None else limit


def check_ops(ops: Sequence[Op]) -> tuple[Op, ...]:
    """Validate every operation of a ``commit`` before any of it is queued."""
    if isinstance(ops, str | bytes) or not isinstance(ops, Sequence):
        raise UsageError(f"commit takes a sequence of operations, got {type(ops).__name__}")
    checked = tuple(ops)
    for op in checked:
        if isinstance(op, Put):
            check_name(op.namespace, what="namespace")
            check_name(op.key)
            check_value(op.value)
            check_ttl(op.ttl)
            check_if_version(op.if_version)
        elif isinstance(op, Delete):
            check_name(op.namespace, what="namespace")
            check_name(op.key)
            check_if_version(op.if_version)
        elif isinstance(op, Append):
            check_name(op.stream, what="stream")
            check_value(op.payload, what="payload")
        elif isinstance(op, Check):
            check_name(op.namespace, what="namespace")
            check_name(op.key)
        else:
            raise UsageError(f"commit takes Put, Delete, Append and Check operations, got {op!r}")
    return checked


def check_prune_args(older_than: object, keep_last: object) -> None:
    """``prune`` needs a criterion: deleting everything by accident must not be one call."""
    if older_than is None and keep_last is None:
        raise UsageError("prune needs older_than, keep_last or both; to delete all use scan")
    if older_than is not None and (
        isinstance(older_than, bool) or not isinstance(older_than, int | float) or older_than < 0
    ):
        raise UsageError(f"older_than must be seconds >= 0, got {older_than!r}")
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
    ):
        raise UsageError(f"keep_last must be an int >= 0, got {keep_last!r}")


def choose_victims(
    seen: list[tuple[str, int, float]],
    now: float,
    older_than: float | None,
    keep_last: int | None,
) -> list[tuple[str, int, float]]:
    """The (key, version, updated_at) rows that ``prune`` deletes.

    A row goes when it is older than ``older_than`` seconds (if given) and not
    among the ``keep_last`` most recently written (if given; ties by key).
    """
    victims = seen
    if keep_last is not None:
        victims = sorted(seen, key=lambda row: (row[2], row[0]), reverse=True)[keep_last:]
    if older_than is not None:
        cutoff = now - float(older_than)
        victims = [row for row in victims if row[2] < cutoff]
    return victims
