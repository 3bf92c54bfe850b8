"""Broken storage adapters, each wrapping a working MemoryStorage and changing one
behaviour: the first set, one per invariant (``broken_storage_more`` has the rest).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from storage_wrappers import PassThroughStorage

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    MAX_VALUE_BYTES,
    Append,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Put,
    Record,
    StreamEntry,
)


class WrappedStorage(PassThroughStorage):
    """Passes every call to a working MemoryStorage; subclasses break one thing."""

    inner: MemoryStorage

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)


class TimestampRounded(WrappedStorage):
    """ST1: ``get`` returns ``updated_at`` rounded to milliseconds (a lossy column type)."""

    async def get(self, namespace: str, key: str) -> Record | None:
        record = await self.inner.get(namespace, key)
        if record is None:
            return None
        return attrs.evolve(record, updated_at=round(record.updated_at, 3) + 0.0001)


class VersionNotIncreasing(WrappedStorage):
    """ST2: an overwrite replaces the record and starts its version at 1 again."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        if if_version is None:
            await self.inner.delete(namespace, key)
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)


class MissedCasCheck(WrappedStorage):
    """ST3: ``put`` forgets to pass ``if_version`` on, so every write wins."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        return await self.inner.put(namespace, key, value, ttl=ttl)


class DeleteAlwaysTrue(WrappedStorage):
    """ST4: ``delete`` reports True whether or not the key existed."""

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        await self.inner.delete(namespace, key, if_version=if_version)
        return True


class TtlIgnored(WrappedStorage):
    """ST5: the TTL is dropped, so records never expire."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        return await self.inner.put(namespace, key, value, if_version=if_version)


class ScanOutOfOrder(WrappedStorage):
    """ST6: ``scan`` returns its page newest-key first."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        found = await self.inner.scan(
            namespace, prefix=prefix, start_after=start_after, limit=limit
        )
        return found[::-1]


class NamespaceLeak(WrappedStorage):
    """ST7: every namespace is stored in one, so equal keys of two namespaces collide."""

    SHARED = "shared"

    def _as(self, record: Record | None, namespace: str) -> Record | None:
        return None if record is None else attrs.evolve(record, namespace=namespace)

    async def get(self, namespace: str, key: str) -> Record | None:
        await self.inner.get(namespace, key)  # still validates the namespace
        return self._as(await self.inner.get(self.SHARED, key), namespace)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        await self.inner.get(namespace, key)
        record = await self.inner.put(self.SHARED, key, value, if_version=if_version, ttl=ttl)
        return attrs.evolve(record, namespace=namespace)

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        await self.inner.get(namespace, key)
        return await self.inner.delete(self.SHARED, key, if_version=if_version)

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        await self.inner.scan(namespace)
        found = await self.inner.scan(
            self.SHARED, prefix=prefix, start_after=start_after, limit=limit
        )
        return [attrs.evolve(r, namespace=namespace) for r in found]


class StreamGap(WrappedStorage):
    """ST8: sequence numbers go 2, 4, 6 (an off-by-one counter that steps twice)."""

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        entry = await self.inner.append(stream, payload)
        return attrs.evolve(entry, seq=entry.seq * 2)

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        found = await self.inner.read(stream, after=after // 2, limit=limit)
        return [attrs.evolve(e, seq=e.seq * 2) for e in found]


class StreamReusesNumbers(WrappedStorage):
    """ST8: sequence numbers go 1, 1, 2, 2 (a counter read before the previous write landed)."""

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        entry = await self.inner.append(stream, payload)
        return attrs.evolve(entry, seq=(entry.seq + 1) // 2)

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        found = await self.inner.read(stream, limit=None)
        mapped = [attrs.evolve(e, seq=(e.seq + 1) // 2) for e in found]
        mapped = [e for e in mapped if e.seq > after]
        return mapped if limit is None else mapped[:limit]


class PartialCommit(WrappedStorage):
    """ST9: ``commit`` applies operations one by one and stops at the first failure."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        records: list[Record] = []
        entries: list[StreamEntry] = []
        deleted: list[bool] = []
        for op in ops:
            if isinstance(op, Put):
                records.append(
                    await self.inner.put(
                        op.namespace, op.key, op.value, if_version=op.if_version, ttl=op.ttl
                    )
                )
            elif isinstance(op, Delete):
                deleted.append(
                    await self.inner.delete(op.namespace, op.key, if_version=op.if_version)
                )
            elif isinstance(op, Append):
                entries.append(await self.inner.append(op.stream, op.payload))
            elif isinstance(op, Check):
                current = await self.inner.get(op.namespace, op.key)
                actual = 0 if current is None else current.version
                if actual != op.version:
                    raise ConflictError("check failed", expected=op.version, actual=actual)
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))


class EmptyKeyAccepted(WrappedStorage):
    """ST10: an empty key is quietly stored under a placeholder instead of refused."""

    @staticmethod
    def _fix(key: str) -> str:
        return key or "\x01empty"

    async def get(self, namespace: str, key: str) -> Record | None:
        return await self.inner.get(namespace, self._fix(key))

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        return await self.inner.put(
            namespace, self._fix(key), value, if_version=if_version, ttl=ttl
        )


class OversizedTruncated(WrappedStorage):
    """ST10: a value over the limit is silently cut to the limit instead of refused."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        value = value[:MAX_VALUE_BYTES]
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)


class LosesLastWrite(WrappedStorage):
    """ST11: the last ``put`` is still in a buffer when the adapter closes, and is lost."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.last: tuple[str, str] | None = None

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        record = await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)
        self.last = (namespace, key)
        return record

    async def aclose(self) -> None:
        last, self.last = self.last, None
        if last is not None:
            await self.inner.delete(*last)
        await self.inner.aclose()


class WorksAfterClose(WrappedStorage):
    """ST12: ``aclose`` does nothing, so a closed adapter keeps answering."""

    async def aclose(self) -> None:
        return None


BROKEN_STORAGE: dict[str, tuple[type[WrappedStorage], str]] = {
    "timestamp rounded on read": (TimestampRounded, "st1"),
    "version does not increase": (VersionNotIncreasing, "st2"),
    "missed CAS check": (MissedCasCheck, "st3"),
    "delete always True": (DeleteAlwaysTrue, "st4"),
    "TTL ignored": (TtlIgnored, "st5"),
    "scan out of order": (ScanOutOfOrder, "st6"),
    "namespace leak": (NamespaceLeak, "st7"),
    "stream with a gap": (StreamGap, "st8"),
    "stream reuses numbers": (StreamReusesNumbers, "st8"),
    "partly applied commit": (PartialCommit, "st9"),
    "empty key accepted": (EmptyKeyAccepted, "st10"),
    "oversized value truncated": (OversizedTruncated, "st10"),
    "lost write after reopen": (LosesLastWrite, "st11"),
    "works after close": (WorksAfterClose, "st12"),
}
"""Each broken storage adapter and the invariant whose tests must catch it."""
