"""Argument checks of ``PostgresStorage``, run before a call reaches the server.

A call with a bad argument fails here with ``UsageError``/``InvalidKey``/
``ValueTooLarge`` and never occupies the writer or a connection (ST10: a failed
call stores nothing).
"""

from __future__ import annotations

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

__all__ = ["check_key", "check_ops", "positive", "prefix_end"]


def check_key(name: object, what: str = "key") -> None:
    """``check_name`` with a shortcut for short ASCII names (every write's hot path)."""
    if (
        type(name) is str
        and name.isascii()
        and 0 < len(name) <= MAX_KEY_BYTES
        and "\x00" not in name
    ):
        return
    check_name(name, what=what)


def prefix_end(prefix: str) -> str | None:
    """The smallest text greater than every text starting with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


def positive(name: str, value: object, *, upper: float = 1e6) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < upper:
        raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_ops(ops: Sequence[Op]) -> tuple[Op, ...]:
    """Validate every operation of a ``commit`` before any of it is queued (ST10)."""
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
