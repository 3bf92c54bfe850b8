"""One pass-through StorageAdapter for the tests: forwards every call to ``inner``.

Broken adapters (``tests/contracts``), counting and flaky stores (``tests/sdk``)
subclass it and override only what they change, instead of each spelling out the
eight methods of the protocol again.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskloom.contracts import CommitResult, Op, Record, StorageAdapter, StreamEntry


class PassThroughStorage:
    """A ``StorageAdapter`` that does exactly what ``inner`` does."""

    def __init__(self, inner: StorageAdapter) -> None:
        self.inner = inner

    async def get(self, namespace: str, key: str) -> Record | None:
        return await self.inner.get(namespace, key)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        return await self.inner.delete(namespace, key, if_version=if_version)

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        return await self.inner.scan(namespace, prefix=prefix, start_after=start_after, limit=limit)

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        return await self.inner.append(stream, payload)

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        return await self.inner.read(stream, after=after, limit=limit)

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        return await self.inner.commit(ops)

    async def aclose(self) -> None:
        await self.inner.aclose()
