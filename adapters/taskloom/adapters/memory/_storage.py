"""``MemoryStorage``: the complete storage adapter that keeps everything in memory.

No method awaits anything between reading and writing its data, so on one event
loop every call is atomic without a lock: two tasks can never interleave inside
``put`` or ``commit``. (The adapter is not thread-safe; use it from one loop.)
Keys of each namespace are kept sorted, so ``scan`` is a binary search plus a
walk rather than a sort of the whole namespace.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from sortedcontainers import SortedList

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
    UsageError,
    check_if_version,
    check_name,
    check_read,
    check_scan,
    check_ttl,
    check_value,
)

__all__ = ["MemoryStorage"]


SORTED_LIST_AT = 4096
"""Keys of one namespace from which they are kept in a ``SortedList`` instead of a list."""


class _Namespace:
    """The records of one namespace and their keys in code point order.

    Up to ``SORTED_LIST_AT`` keys they are a plain sorted list (``insort`` moves a
    few kilobytes: the cheapest write); beyond, a ``SortedList`` (sorted sublists),
    where adding or removing a key costs O(log n). A plain list moved half its
    length on every new key -- a put with 200,000 keys stored cost 12.6 us, growing
    with every checkpoint a long-lived default engine keeps.
    """

    __slots__ = ("keys", "records")

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.keys: Any = []

    def set(self, record: Record) -> None:
        key = record.key
        if key not in self.records:
            keys = self.keys
            if type(keys) is list:
                bisect.insort(keys, key)
                if len(keys) > SORTED_LIST_AT:
                    self.keys = SortedList(keys)
            else:
                keys.add(key)
        self.records[key] = record

    def remove(self, key: str) -> None:
        if self.records.pop(key, None) is not None:
            keys = self.keys
            if type(keys) is list:
                del keys[bisect.bisect_left(keys, key)]
            else:
                keys.remove(key)

    def walk(self, prefix: str, start_after: str | None) -> Iterator[str]:
        """Keys from ``prefix`` on (after ``start_after`` if that is not before it), in
        order, without copying the key list; the caller stops at the end of the prefix."""
        keys = self.keys
        after = start_after is not None and start_after >= prefix
        if type(keys) is list:
            start = (
                bisect.bisect_right(keys, start_after)
                if after
                else bisect.bisect_left(keys, prefix)
            )
            return (keys[index] for index in range(start, len(keys)))
        start = keys.bisect_right(start_after) if after else keys.bisect_left(prefix)
        return iter(keys.islice(start))


class _Data:
    """What a location holds; shared by every adapter ``reopen`` made from one another."""

    __slots__ = ("namespaces", "streams")

    def __init__(self) -> None:
        self.namespaces: dict[str, _Namespace] = {}
        self.streams: dict[str, list[StreamEntry]] = {}


def _conflict(namespace: str, key: str, expected: int, actual: int) -> ConflictError:
    state = "does not exist" if actual == 0 else f"is at version {actual}"
    wanted = "not to exist" if expected == 0 else f"to be at version {expected}"
    return ConflictError(
        f"{key!r} in namespace {namespace!r} {state}, but the write expected it {wanted}: "
        "read it again and retry with its current version",
        namespace=namespace,
        key=key,
        expected=expected,
        actual=actual,
    )


class MemoryStorage:
    """A ``StorageAdapter`` whose data lives in this process only.

    For tests and ephemeral runs. ``clock`` returns epoch seconds; pass a fake one
    to control TTL expiry in tests. ``reopen()`` gives a new adapter over the same
    data, which is how tests exercise restart and resume logic without a disk.
    It passes ``StorageConformance`` with ``durable = True`` when reopened that way.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._data = _Data()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<MemoryStorage {state}: {len(self._data.namespaces)} namespace(s), "
            f"{len(self._data.streams)} stream(s)>"
        )

    async def __aenter__(self) -> MemoryStorage:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def reopen(self) -> MemoryStorage:
        """A new, open adapter over this one's data (as if a process opened it again).

        Works whether or not this adapter was closed; both then share one store.
        """
        other = MemoryStorage(clock=self._clock)
        other._data = self._data
        return other

    # --- helpers ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this MemoryStorage is closed: open a new adapter (or reopen())")

    def _now(self) -> float:
        return float(self._clock())

    def _live(self, namespace: str, key: str, now: float) -> Record | None:
        """The record at ``key`` if it exists and has not expired (expired ones are dropped)."""
        space = self._data.namespaces.get(namespace)
        if space is None:
            return None
        record = space.records.get(key)
        if record is not None and record.expires_at is not None and record.expires_at <= now:
            space.remove(key)
            return None
        return record

    # --- records ---------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Record | None:
        """The live record at ``key`` in ``namespace``, or None."""
        self._check_open()
        check_name(namespace, what="namespace")
        check_name(key)
        return self._live(namespace, key, self._now())

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        """Write ``value``; the record's version is one more than the live one's (or 1)."""
        self._check_open()
        _validate_put(namespace, key, value, if_version, ttl)
        result = await self.commit(
            [Put(namespace=namespace, key=key, value=value, if_version=if_version, ttl=ttl)]
        )
        return result.records[0]

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Remove ``key``; True if a live record was there."""
        self._check_open()
        _validate_delete(namespace, key, if_version)
        result = await self.commit([Delete(namespace=namespace, key=key, if_version=if_version)])
        return result.deleted[0]

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Live records in key order, starting with ``prefix``, after ``start_after``."""
        self._check_open()
        check_name(namespace, what="namespace")
        count = check_scan(prefix, start_after, limit)
        space = self._data.namespaces.get(namespace)
        if space is None or count == 0:
            return []
        now = self._now()
        found: list[Record] = []
        expired: list[str] = []
        for key in space.walk(prefix, start_after):
            if not key.startswith(prefix):
                break
            record = space.records[key]
            if record.expires_at is not None and record.expires_at <= now:
                expired.append(key)
                continue
            found.append(record)
            if count is not None and len(found) >= count:
                break
        for key in expired:
            space.remove(key)
        return found

    # --- streams ---------------------------------------------------------------

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        """Add ``payload`` to ``stream``; its number is one more than the last (or 1)."""
        self._check_open()
        _validate_append(stream, payload)
        result = await self.commit([Append(stream=stream, payload=payload)])
        return result.entries[0]

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        """Entries of ``stream`` numbered above ``after``, in order, at most ``limit``."""
        self._check_open()
        check_name(stream, what="stream")
        count = check_read(after, limit)
        entries = self._data.streams.get(stream, [])
        # Sequence numbers are gapless from 1, so entry n sits at index n - 1.
        chosen = entries[after:]
        return chosen if count is None else chosen[:count]

    async def stream_names(self) -> list[str]:
        """The names of every stream that has entries, sorted (for ``taskloom doctor``)."""
        self._check_open()
        return sorted(name for name, entries in self._data.streams.items() if entries)

    async def drop_stream(self, stream: str) -> bool:
        """Remove every entry of ``stream``; its next append is 1 again (``StreamDropping``)."""
        self._check_open()
        check_name(stream, what="stream")
        return bool(self._data.streams.pop(stream, None))

    # --- batches ---------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Apply ``ops`` in order, all or nothing.

        Everything is validated first, then the batch is planned on an overlay that
        later operations read through; only when the whole plan succeeded is the
        overlay written into the store, so a failure leaves nothing behind.
        """
        self._check_open()
        batch = list(ops)
        for op in batch:
            _validate(op)
        now = self._now()
        overlay: dict[tuple[str, str], Record | None] = {}
        appended: dict[str, list[StreamEntry]] = {}
        records: list[Record] = []
        entries: list[StreamEntry] = []
        deleted: list[bool] = []

        def current(namespace: str, key: str) -> Record | None:
            if (namespace, key) in overlay:
                return overlay[(namespace, key)]
            return self._live(namespace, key, now)

        def require(namespace: str, key: str, expected: int | None) -> Record | None:
            record = current(namespace, key)
            actual = 0 if record is None else record.version
            if expected is not None and expected != actual:
                raise _conflict(namespace, key, expected, actual)
            return record

        for op in batch:
            if isinstance(op, Put):
                where = (op.namespace, op.key)  # require(), written out: one per checkpoint
                old = overlay[where] if where in overlay else self._live(op.namespace, op.key, now)
                if op.if_version is not None:
                    actual = 0 if old is None else old.version
                    if op.if_version != actual:
                        raise _conflict(op.namespace, op.key, op.if_version, actual)
                record = Record(
                    namespace=op.namespace,
                    key=op.key,
                    value=op.value,
                    version=1 if old is None else old.version + 1,
                    updated_at=now,
                    expires_at=None if op.ttl is None else now + op.ttl,
                )
                overlay[where] = record
                records.append(record)
            elif isinstance(op, Delete):
                old = require(op.namespace, op.key, op.if_version)
                overlay[(op.namespace, op.key)] = None
                deleted.append(old is not None)
            elif isinstance(op, Append):
                pending = appended.setdefault(op.stream, [])
                seq = len(self._data.streams.get(op.stream, ())) + len(pending) + 1
                entry = StreamEntry(stream=op.stream, seq=seq, payload=op.payload, appended_at=now)
                pending.append(entry)
                entries.append(entry)
            else:
                require(op.namespace, op.key, op.version)

        for (namespace, key), maybe in overlay.items():
            if maybe is None:
                space = self._data.namespaces.get(namespace)
                if space is not None:
                    space.remove(key)
            else:
                self._data.namespaces.setdefault(namespace, _Namespace()).set(maybe)
        for stream, new in appended.items():
            self._data.streams.setdefault(stream, []).extend(new)
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))

    async def aclose(self) -> None:
        """Close this adapter (idempotent); the data stays for ``reopen`` adapters."""
        self._closed = True


_NAMESPACES_SEEN: set[str] = set()
"""Namespaces ``check_name`` accepted (a few: every write names one of them, and a name
that passed once always passes), so a write checks only its key."""


def _validate_put(
    namespace: object, key: object, value: object, if_version: object, ttl: object
) -> None:
    if type(namespace) is not str or namespace not in _NAMESPACES_SEEN:
        check_name(namespace, what="namespace")
        if len(_NAMESPACES_SEEN) < 64:
            _NAMESPACES_SEEN.add(namespace)  # type: ignore[arg-type]
    check_name(key)
    check_value(value)
    if if_version is not None:  # (both checks accept None: no call for it per write)
        check_if_version(if_version)
    if ttl is not None:
        check_ttl(ttl)


def _validate_delete(namespace: object, key: object, if_version: object) -> None:
    check_name(namespace, what="namespace")
    check_name(key)
    check_if_version(if_version)


def _validate_append(stream: object, payload: object) -> None:
    check_name(stream, what="stream")
    check_value(payload, what="payload")


def _validate(op: object) -> None:
    """Raise the error a single call with ``op``'s arguments would raise."""
    if isinstance(op, Put):
        _validate_put(op.namespace, op.key, op.value, op.if_version, op.ttl)
    elif isinstance(op, Delete):
        _validate_delete(op.namespace, op.key, op.if_version)
    elif isinstance(op, Append):
        _validate_append(op.stream, op.payload)
    elif isinstance(op, Check):
        check_name(op.namespace, what="namespace")
        check_name(op.key)
        check_if_version(op.version)
    else:
        raise UsageError(
            f"commit takes Put, Delete, Append and Check operations, got {type(op).__name__}"
        )
