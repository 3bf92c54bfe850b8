"""More broken storage adapters: single records, ST1-ST5 (``broken_storage_more`` has
ST6-ST12). Each wraps a working MemoryStorage and changes one behaviour."""

from __future__ import annotations

import asyncio

import attrs
from broken_storage import WrappedStorage

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import ConflictError, Record


class ExpiresAtRelative(WrappedStorage):
    """ST1: ``expires_at`` holds the TTL itself instead of the time it runs out."""

    @staticmethod
    def _relative(record: Record) -> Record:
        if record.expires_at is None:
            return record
        return attrs.evolve(record, expires_at=record.expires_at - record.updated_at)

    async def get(self, namespace: str, key: str) -> Record | None:
        record = await self.inner.get(namespace, key)
        return None if record is None else self._relative(record)

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
        return self._relative(record)


class TrailingNulStripped(WrappedStorage):
    """ST1: values come back with trailing NUL bytes cut (a C-string column)."""

    async def get(self, namespace: str, key: str) -> Record | None:
        record = await self.inner.get(namespace, key)
        return None if record is None else attrs.evolve(record, value=record.value.rstrip(b"\0"))


class UpdatedAtInMilliseconds(WrappedStorage):
    """ST1: ``updated_at`` is epoch milliseconds, not seconds."""

    async def get(self, namespace: str, key: str) -> Record | None:
        record = await self.inner.get(namespace, key)
        return None if record is None else attrs.evolve(record, updated_at=record.updated_at * 1e3)

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
        return attrs.evolve(record, updated_at=record.updated_at * 1e3)


class VersionContinuesAfterDelete(WrappedStorage):
    """ST2: a deleted key's next put continues its old version count (a kept counter)."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.offset: dict[tuple[str, str], int] = {}

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
        return attrs.evolve(record, version=record.version + self.offset.get((namespace, key), 0))

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        record = await self.inner.get(namespace, key)
        existed = await self.inner.delete(namespace, key, if_version=if_version)
        if existed and record is not None:
            self.offset[(namespace, key)] = record.version
        return existed


class VersionContinuesAfterExpiry(WrappedStorage):
    """ST2: an expired key's next put continues its old version count."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.last: dict[tuple[str, str], Record] = {}

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
        before = self.last.get((namespace, key))
        if record.version == 1 and before is not None and before.expires_at is not None:
            record = attrs.evolve(record, version=before.version + 1)
        self.last[(namespace, key)] = record
        return record


class IfVersionZeroIgnored(WrappedStorage):
    """ST3: ``if if_version:`` treats 0 like None, so "must not exist" is never checked."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        return await self.inner.put(namespace, key, value, if_version=if_version or None, ttl=ttl)


class DeleteIgnoresIfVersion(WrappedStorage):
    """ST3: ``delete`` drops ``if_version``, so a stale delete removes a newer record."""

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        return await self.inner.delete(namespace, key)


class CheckThenWriteAcrossAwait(WrappedStorage):
    """ST3 (atomicity): ``put`` reads the version, awaits, then writes unconditionally."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        if if_version is not None:
            current = await self.inner.get(namespace, key)
            actual = 0 if current is None else current.version
            if actual != if_version:
                raise ConflictError("stale", key=key, expected=if_version, actual=actual)
            await asyncio.sleep(0)  # a round trip to the backend
        return await self.inner.put(namespace, key, value, ttl=ttl)


class LockKeptAfterConflict(WrappedStorage):
    """ST3 (never hang): a conflicting ``put`` returns without releasing its lock."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.lock = asyncio.Lock()

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        await self.lock.acquire()
        record = await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)
        self.lock.release()  # the bug: skipped when put raises ConflictError
        return record


class DeleteMissingRaises(WrappedStorage):
    """ST4: deleting a missing key raises KeyError instead of returning False."""

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        if not await self.inner.delete(namespace, key, if_version=if_version):
            raise KeyError(key)
        return True


class DeleteReturnsCount(WrappedStorage):
    """ST4: ``delete`` returns the number of rows deleted (1 or 0), not a bool."""

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        return int(await self.inner.delete(namespace, key, if_version=if_version))  # type: ignore[return-value]


class ExpiredStillScanned(WrappedStorage):
    """ST5: ``get`` hides expired records but ``scan`` still lists them."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.with_ttl: dict[tuple[str, str], Record] = {}

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
        if ttl is None:
            self.with_ttl.pop((namespace, key), None)
        else:
            self.with_ttl[(namespace, key)] = record
        return record

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        found = {r.key: r for r in await self.inner.scan(namespace, prefix=prefix)}
        for (space, key), record in self.with_ttl.items():
            if space == namespace and key.startswith(prefix):
                found.setdefault(key, record)
        keys = [k for k in sorted(found) if start_after is None or k > start_after]
        return [found[k] for k in keys][:limit]


class ExpiredCountsAsExisting(WrappedStorage):
    """ST5: an expired record still blocks ``if_version=0`` (it was never purged)."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.ever: set[tuple[str, str]] = set()

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        if if_version == 0 and (namespace, key) in self.ever:
            raise ConflictError("exists", key=key, expected=0, actual=1)
        record = await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)
        self.ever.add((namespace, key))
        return record


class PutKeepsOldExpiry(WrappedStorage):
    """ST5: a put without a TTL keeps the expiry the record had."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        before = await self.inner.get(namespace, key)
        if ttl is None and before is not None and before.expires_at is not None:
            ttl = max(before.expires_at - before.updated_at, 1e-3)
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)


BROKEN_RECORDS: dict[str, tuple[type[WrappedStorage], str]] = {
    "expires_at is the TTL": (ExpiresAtRelative, "st1"),
    "trailing NUL bytes stripped": (TrailingNulStripped, "st1"),
    "updated_at in milliseconds": (UpdatedAtInMilliseconds, "st1"),
    "version continues after delete": (VersionContinuesAfterDelete, "st2"),
    "version continues after expiry": (VersionContinuesAfterExpiry, "st2"),
    "if_version=0 ignored": (IfVersionZeroIgnored, "st3"),
    "delete ignores if_version": (DeleteIgnoresIfVersion, "st3"),
    "check then write across an await": (CheckThenWriteAcrossAwait, "st3"),
    "lock kept after a conflict (hangs)": (LockKeptAfterConflict, "st3"),
    "delete of a missing key raises": (DeleteMissingRaises, "st4"),
    "delete returns a count": (DeleteReturnsCount, "st4"),
    "expired records still scanned": (ExpiredStillScanned, "st5"),
    "expired record blocks if_version=0": (ExpiredCountsAsExisting, "st5"),
    "put without TTL keeps the expiry": (PutKeepsOldExpiry, "st5"),
}
"""Each broken storage adapter here and the invariant whose tests must catch it."""
