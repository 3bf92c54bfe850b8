"""More broken storage adapters: listing and streams, ST6-ST8 (``broken_storage_records``
has ST1-ST5, ``broken_storage_batches`` ST9-ST12). Each wraps a working MemoryStorage
and changes one behaviour."""

from __future__ import annotations

import asyncio
import re

import attrs
from broken_storage import WrappedStorage

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    Record,
    StreamEntry,
)


class PrefixAsLikePattern(WrappedStorage):
    """ST6: ``prefix`` goes into SQL LIKE unescaped, so ``_`` and ``%`` are wildcards."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        pattern = re.compile(
            "".join("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in prefix),
            re.S,
        )
        found = await self.inner.scan(namespace, start_after=start_after)
        return [r for r in found if pattern.match(r.key)][:limit]


class InclusiveStartAfter(WrappedStorage):
    """ST6: ``start_after`` is inclusive (``>=``), so paging repeats the last key forever."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        found = await self.inner.scan(namespace, prefix=prefix)
        return [r for r in found if start_after is None or r.key >= start_after][:limit]


class ExpiredCountAgainstLimit(WrappedStorage):
    """ST6: ``limit`` is applied before expired records are filtered out (short pages)."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.keys: dict[str, set[str]] = {}

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
        self.keys.setdefault(namespace, set()).add(key)
        return record

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        rows = sorted(
            k
            for k in self.keys.get(namespace, set())
            if k.startswith(prefix) and (start_after is None or k > start_after)
        )[:limit]
        live = {r.key: r for r in await self.inner.scan(namespace, prefix=prefix)}
        return [live[k] for k in rows if k in live]


class LimitZeroMeansAll(WrappedStorage):
    """ST6: ``if limit:`` treats ``limit=0`` as no limit."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        return await self.inner.scan(
            namespace, prefix=prefix, start_after=start_after, limit=limit or None
        )


class ScanHandsOutItsIndex(WrappedStorage):
    """ST6 (ownership): ``scan`` returns its cached list itself, which the caller can change."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.cache: dict[str, list[Record]] = {}

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        self.cache.pop(namespace, None)
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        if prefix or start_after is not None or limit is not None:
            return await self.inner.scan(
                namespace, prefix=prefix, start_after=start_after, limit=limit
            )
        if namespace not in self.cache:
            self.cache[namespace] = await self.inner.scan(namespace)
        return self.cache[namespace]


class ScanInUtf16Order(WrappedStorage):
    """ST6: keys are ordered by their UTF-16 code units (a JavaScript or Java collation)."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        found = await self.inner.scan(namespace, prefix=prefix, start_after=start_after)
        return sorted(found, key=lambda r: r.key.encode("utf-16-be"))[:limit]


class CaseInsensitiveKeys(WrappedStorage):
    """ST7: keys are case-folded (a case-insensitive collation), so ``a`` and ``A`` collide."""

    async def get(self, namespace: str, key: str) -> Record | None:
        record = await self.inner.get(namespace, key.casefold())
        return None if record is None else attrs.evolve(record, key=key)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        folded = key.casefold()
        record = await self.inner.put(namespace, folded, value, if_version=if_version, ttl=ttl)
        return attrs.evolve(record, key=key)


class PathJoinedNames(WrappedStorage):
    """ST7: records live at ``namespace/key`` in one table, so ``(a, b/c)`` is ``(a/b, c)``."""

    TABLE = "all"

    async def get(self, namespace: str, key: str) -> Record | None:
        await self.inner.get(namespace, key)
        record = await self.inner.get(self.TABLE, f"{namespace}/{key}")
        return None if record is None else attrs.evolve(record, namespace=namespace, key=key)

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
        record = await self.inner.put(
            self.TABLE, f"{namespace}/{key}", value, if_version=if_version, ttl=ttl
        )
        return attrs.evolve(record, namespace=namespace, key=key)


class ReadAfterInclusive(WrappedStorage):
    """ST8: ``read(after=n)`` starts at entry n instead of n + 1."""

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        return await self.inner.read(stream, after=max(after - 1, 0), limit=limit)


class ReadHandsOutItsLog(WrappedStorage):
    """ST8 (ownership): ``read`` returns its cached list of entries itself."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.cache: dict[str, list[StreamEntry]] = {}

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        self.cache.pop(stream, None)
        return await self.inner.append(stream, payload)

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        if after or limit is not None:
            return await self.inner.read(stream, after=after, limit=limit)
        if stream not in self.cache:
            self.cache[stream] = await self.inner.read(stream)
        return self.cache[stream]


class AppendCountsThenWrites(WrappedStorage):
    """ST8 (atomicity): ``append`` counts the entries, awaits, then numbers its own."""

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        count = len(await self.inner.read(stream))
        await asyncio.sleep(0)  # a round trip to the backend
        entry = await self.inner.append(stream, payload)
        return attrs.evolve(entry, seq=count + 1)


BROKEN_MORE: dict[str, tuple[type[WrappedStorage], str]] = {
    "prefix as a LIKE pattern": (PrefixAsLikePattern, "st6"),
    "start_after inclusive (paging never ends)": (InclusiveStartAfter, "st6"),
    "expired records count against limit": (ExpiredCountAgainstLimit, "st6"),
    "limit=0 means no limit": (LimitZeroMeansAll, "st6"),
    "scan hands out its cached list": (ScanHandsOutItsIndex, "st6"),
    "scan in UTF-16 order": (ScanInUtf16Order, "st6"),
    "case-insensitive keys": (CaseInsensitiveKeys, "st7"),
    "names joined with a slash": (PathJoinedNames, "st7"),
    "read after is inclusive": (ReadAfterInclusive, "st8"),
    "read hands out its cached list": (ReadHandsOutItsLog, "st8"),
    "append counts then writes": (AppendCountsThenWrites, "st8"),
}
"""Each broken storage adapter here and the invariant whose tests must catch it."""
