"""The storage contract: namespaced versioned records plus append-only streams.

``StorageAdapter`` is structural: an adapter never inherits from taskloom. Its
invariants, numbered, are what ``taskloom.contracts.testing.StorageConformance``
checks one by one (each test is named after the invariant it checks).

An adapter checks its arguments with the helpers here, before it touches its
backend: ``check_name`` (names: ``InvalidKey``), ``check_value`` (bytes within
``MAX_VALUE_BYTES``: ``ValueTooLarge``), ``check_ttl``, ``check_if_version`` and
``check_scan``/``check_read`` (the paging arguments: ``UsageError``). Each returns
the value it accepted, so every adapter refuses exactly the same inputs with the
same errors (ST10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from taskloom.contracts._errors import InvalidKey, UsageError, ValueTooLarge
from taskloom.contracts._quick import covers, explain

MAX_KEY_BYTES = 1024
"""Largest key, namespace or stream name, in UTF-8 bytes."""

MAX_VALUE_BYTES = 4 * 1024 * 1024
"""Largest record value or stream payload, in bytes."""

_v = attrs.validators


def _opt_float(value: object) -> object:
    """Normalize an int to float (``ttl=60``); leave everything else to the validator."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_name(name: object, *, what: str = "key") -> str:
    """Return ``name`` if it is a valid key, namespace or stream name; else raise InvalidKey.

    Valid: a non-empty ``str`` of at most MAX_KEY_BYTES UTF-8 bytes, with no NUL
    and no lone surrogate. Everything else in Unicode is allowed: adapters must
    encode names so that none can escape their location or collide.
    """
    if not isinstance(name, str):
        raise InvalidKey(f"{what} must be text, got {type(name).__name__}")
    if not name:
        raise InvalidKey(f"{what} must not be empty")
    if "\x00" in name:
        raise InvalidKey(f"{what} {name[:40]!r} contains NUL, which is not allowed")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} {name[:40]!r} is not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(
            f"{what} is {size} bytes of UTF-8; the limit is {MAX_KEY_BYTES}: use a shorter {what}"
        )
    return name


def check_value(value: object, *, what: str = "value") -> bytes:
    """Return ``value`` if it is bytes within MAX_VALUE_BYTES; else raise."""
    if not isinstance(value, bytes):
        raise UsageError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"{what} is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}: "
            "store large data elsewhere and keep a reference",
            size=len(value),
            limit=MAX_VALUE_BYTES,
        )
    return value


def check_ttl(ttl: object) -> float | None:
    """Return ``ttl`` if it is None or a positive finite number of seconds."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not (0 < ttl < 1e12):
        raise UsageError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    return float(ttl)


def check_if_version(if_version: object) -> int | None:
    """Return ``if_version`` if it is None or an int >= 0."""
    if if_version is None:
        return None
    if isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < 0:
        raise UsageError(f"if_version must be None or an int >= 0, got {if_version!r}")
    return if_version


def check_limit(limit: object) -> int | None:
    """Return ``limit`` if it is None or an int >= 0 (``scan`` and ``read``)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise UsageError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


def check_scan(prefix: object, start_after: object, limit: object) -> int | None:
    """Check the paging arguments of ``scan``; return the limit."""
    if not isinstance(prefix, str):
        raise UsageError(f"prefix must be text, got {type(prefix).__name__}")
    if start_after is not None and not isinstance(start_after, str):
        raise UsageError(f"start_after must be text or None, got {type(start_after).__name__}")
    return check_limit(limit)


def check_read(after: object, limit: object) -> int | None:
    """Check the paging arguments of ``read``; return the limit."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise UsageError(f"after must be an int >= 0, got {after!r}")
    return check_limit(limit)


_RECORD_CHECKS = {
    "namespace": _v.instance_of(str),
    "key": _v.instance_of(str),
    "value": _v.instance_of(bytes),
    "version": _v.and_(_v.instance_of(int), _v.ge(1)),
    "updated_at": _v.instance_of(float),
    "expires_at": _v.optional(_v.instance_of(float)),
}


@attrs.frozen(kw_only=True)
class Record:
    """One stored record. ``version`` starts at 1 and grows by 1 per write of the key."""

    namespace: str
    key: str
    value: bytes
    version: int
    updated_at: float
    expires_at: float | None = None

    def __attrs_post_init__(self) -> None:  # one test per record, see _quick
        version, expires_at = self.version, self.expires_at
        if not (
            type(self.namespace) is str
            and type(self.key) is str
            and type(self.value) is bytes
            and type(version) is int
            and version >= 1
            and type(self.updated_at) is float
            and (expires_at is None or type(expires_at) is float)
        ):
            explain(self, _RECORD_CHECKS)


covers(Record, _RECORD_CHECKS)


@attrs.frozen(kw_only=True)
class StreamEntry:
    """One entry of an append-only stream; ``seq`` starts at 1 and has no gaps."""

    stream: str = attrs.field(validator=_v.instance_of(str))
    seq: int = attrs.field(validator=[_v.instance_of(int), _v.ge(1)])
    payload: bytes = attrs.field(validator=_v.instance_of(bytes))
    appended_at: float = attrs.field(validator=_v.instance_of(float))


_PUT_CHECKS = {
    "namespace": _v.instance_of(str),
    "key": _v.instance_of(str),
    "value": _v.instance_of(bytes),
    "if_version": _v.optional(_v.instance_of(int)),
    "ttl": _v.optional(_v.instance_of(float)),
}


@attrs.frozen(kw_only=True)
class Put:
    """A write operation for ``commit``: like ``put``."""

    namespace: str
    key: str
    value: bytes
    if_version: int | None = None
    ttl: float | None = attrs.field(default=None, converter=_opt_float)

    def __attrs_post_init__(self) -> None:  # one test per write, see _quick
        if_version, ttl = self.if_version, self.ttl
        if not (
            type(self.namespace) is str
            and type(self.key) is str
            and type(self.value) is bytes
            and (if_version is None or type(if_version) is int)
            and (ttl is None or type(ttl) is float)
        ):
            explain(self, _PUT_CHECKS)


covers(Put, _PUT_CHECKS)


@attrs.frozen(kw_only=True)
class Delete:
    """A write operation for ``commit``: like ``delete``."""

    namespace: str = attrs.field(validator=_v.instance_of(str))
    key: str = attrs.field(validator=_v.instance_of(str))
    if_version: int | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(int)))


@attrs.frozen(kw_only=True)
class Append:
    """A write operation for ``commit``: like ``append``."""

    stream: str = attrs.field(validator=_v.instance_of(str))
    payload: bytes = attrs.field(validator=_v.instance_of(bytes))


@attrs.frozen(kw_only=True)
class Check:
    """A version check for ``commit``: the key must be at ``version`` (0: must not exist)."""

    namespace: str = attrs.field(validator=_v.instance_of(str))
    key: str = attrs.field(validator=_v.instance_of(str))
    version: int = attrs.field(validator=[_v.instance_of(int), _v.ge(0)])


Op = Put | Delete | Append | Check
"""One operation of a ``commit`` batch."""


@attrs.frozen(kw_only=True)
class CommitResult:
    """What a ``commit`` did, in batch order: ``records`` has one Record per Put (the
    record as written), ``entries`` one StreamEntry per Append, and ``deleted`` one
    bool per Delete (True if the key existed, as ``delete`` returns). Checks add nothing.
    """

    records: tuple[Record, ...] = ()
    entries: tuple[StreamEntry, ...] = ()
    deleted: tuple[bool, ...] = ()


@runtime_checkable
class StorageAdapter(Protocol):
    """Namespaced key/value records with versions and TTL, plus append-only streams.

    Invariants (each one checked by ``StorageConformance``):

    ST1  ``get`` after ``put`` returns the record put: same value, its version,
         ``updated_at`` and ``expires_at``; ``get`` of a missing key returns None.
    ST2  A key's version starts at 1 and grows by exactly 1 with each ``put``;
         after ``delete`` (or expiry) the next ``put`` starts again at 1.
    ST3  ``put``/``delete`` with ``if_version`` write only if the key is at that
         version (0: must not exist); otherwise ``ConflictError`` and nothing changes.
    ST4  ``delete`` returns True if the key existed; deleting a missing key is a
         no-op that returns False.
    ST5  A record whose TTL has passed is invisible to ``get`` and ``scan`` and
         counts as missing for version checks.
    ST6  ``scan`` returns records in key order (Unicode code points), only those
         starting with ``prefix`` and strictly after ``start_after``, at most
         ``limit`` (0: none; expired records do not count); paging with
         ``start_after`` visits every record exactly once. The list returned is the
         caller's: changing it changes nothing stored.
    ST7  Namespaces are isolated: no operation in one namespace sees or changes
         another; streams are isolated from each other and from records.
    ST8  ``append`` returns sequence numbers that start at 1 and grow by 1 per
         stream with no gaps or reuse; ``read`` returns entries in order, only
         those after ``after``, at most ``limit``, in a list that is the caller's.
    ST9  ``commit`` is all or nothing: if any check or operation fails nothing is
         applied (``ConflictError`` for a version mismatch); otherwise all apply, in
         order (a Check sees the puts and deletes before it in the batch), and the
         result lists the records written, the entries appended and, for each
         Delete, whether its key existed. Concurrent calls are atomic: each behaves
         as if it ran alone, before or after the others.
    ST10 Invalid names raise ``InvalidKey`` and values over ``MAX_VALUE_BYTES``
         raise ``ValueTooLarge``; other invalid arguments (a negative ``limit``,
         ``after`` or ``if_version``, a TTL that is not a positive number, a value
         that is not bytes) raise ``UsageError``; a failed call stores nothing.
    ST11 A write that returned is durable: a new adapter opened on the same
         location sees it, also when the process that wrote it was killed
         (SIGKILL) right after the call returned, without ``aclose()`` (for
         adapters that declare themselves durable).
    ST12 After ``aclose()`` every method raises ``UsageError``; ``aclose()`` is
         idempotent.
    """

    async def get(self, namespace: str, key: str) -> Record | None:
        """The record at ``namespace``/``key``, or None (ST1)."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        """Write a record, checking ``if_version`` (0: must not exist); return it (ST2, ST3)."""

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Delete a record, checking ``if_version``; True if one was deleted (ST4)."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Live records of ``namespace`` by key, after ``start_after``, at most ``limit``."""

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        """Append to ``stream``; sequence numbers start at 1 and have no gaps."""

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        """Entries of ``stream`` with ``seq > after``, in order, at most ``limit``."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Apply every op atomically, all or nothing; a failed check raises ``ConflictError``."""

    async def aclose(self) -> None:
        """Flush and release the location (idempotent); later calls raise ``UsageError``."""


@runtime_checkable
class StreamDropping(Protocol):
    """An optional capability of a ``StorageAdapter``: remove a whole stream.

    Streams are append-only, so without this a deleted run's events would hold
    their space for ever. The run store uses it when the adapter offers it
    (``isinstance(storage, StreamDropping)``) and keeps a tombstone otherwise.

    Invariants:

    SD1  After ``drop_stream(s)`` returned, ``read(s)`` returns nothing and the
         next ``append`` to ``s`` gets sequence number 1 (durably, like ST11).
    SD2  ``drop_stream`` returns True if the stream had entries, else False;
         other streams and all records are unchanged.
    """

    async def drop_stream(self, stream: str) -> bool:
        """Remove a whole stream and its entries; dropping a missing stream is a no-op."""


@attrs.frozen(kw_only=True)
class StorageFinding:
    """One problem a store's self-check found: where, what (and what to do), and whether
    the check repaired it (only ever without losing data)."""

    where: str = attrs.field(validator=_v.instance_of(str))
    problem: str = attrs.field(validator=_v.instance_of(str))
    repaired: bool = attrs.field(default=False, validator=_v.instance_of(bool))


@runtime_checkable
class SelfChecking(Protocol):
    """An optional capability of a ``StorageAdapter``: verify its own files.

    ``verify`` reports every problem it finds (damaged files, failed checksums,
    leftovers of crashes). With ``repair=True`` it also repairs what it can
    repair without losing acknowledged data, and marks those findings repaired;
    anything else it only reports. ``taskloom doctor`` calls it.
    """

    async def verify(self, *, repair: bool = False) -> list[StorageFinding]:
        """Report (and with ``repair=True`` repair without loss) problems of the store."""
