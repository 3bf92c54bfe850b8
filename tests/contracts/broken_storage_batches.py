"""More broken storage adapters: batches, input and lifetime, ST9-ST12
(``broken_storage_more`` has ST6-ST8). Each wraps a working MemoryStorage and
changes one behaviour."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import attrs
from broken_storage import WrappedStorage

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Record,
    UsageError,
    ValueTooLarge,
)


class DeletesAppliedLast(WrappedStorage):
    """ST9: ``commit`` runs every Delete after the other operations (two SQL statements)."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        reordered = [op for op in ops if not isinstance(op, Delete)]
        reordered += [op for op in ops if isinstance(op, Delete)]
        return await self.inner.commit(reordered)


class ChecksBeforeTheBatch(WrappedStorage):
    """ST9: every Check is run against the state before the batch, not the batch so far."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        for op in ops:
            if isinstance(op, Check):
                await self.inner.commit([op])
        return await self.inner.commit([op for op in ops if not isinstance(op, Check)])


class DeletedListsOnlyHits(WrappedStorage):
    """ST9: ``CommitResult.deleted`` lists only the deletes that removed something."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        result = await self.inner.commit(ops)
        return attrs.evolve(result, deleted=tuple(d for d in result.deleted if d))


class ChecksThenAppliesAcrossAwait(WrappedStorage):
    """ST9 (atomicity): ``commit`` runs its checks, awaits, then applies the rest."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        checks = [op for op in ops if isinstance(op, Check)]
        if checks:
            await self.inner.commit(checks)
            await asyncio.sleep(0)  # a round trip to the backend
        return await self.inner.commit([op for op in ops if not isinstance(op, Check)])


class NegativeLimitSlices(WrappedStorage):
    """ST10: a negative ``limit`` is used as a slice (``[:-1]``) instead of refused."""

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        found = await self.inner.scan(namespace, prefix=prefix, start_after=start_after)
        return found[:limit]


class NonPositiveTtlMeansForever(WrappedStorage):
    """ST10: ``ttl=0`` or a negative TTL stores a record that never expires."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        if ttl is not None and not ttl > 0:
            ttl = None
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)


class LargestValueRefused(WrappedStorage):
    """ST10: the size check is off by one (``>=``), so a value of exactly the limit fails."""

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        if isinstance(value, bytes) and len(value) >= MAX_VALUE_BYTES:
            raise ValueTooLarge("too large", size=len(value), limit=MAX_VALUE_BYTES)
        return await self.inner.put(namespace, key, value, if_version=if_version, ttl=ttl)


class NameLengthInCharacters(WrappedStorage):
    """ST10: names are measured in characters, so 513 x "é" (1026 bytes) is accepted."""

    @staticmethod
    def _fit(name: str) -> str:
        if len(name) <= MAX_KEY_BYTES < len(name.encode("utf-8", "surrogatepass")):
            return "long-" + hashlib.sha256(name.encode()).hexdigest()
        return name

    async def get(self, namespace: str, key: str) -> Record | None:
        return await self.inner.get(self._fit(namespace), self._fit(key))

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
            self._fit(namespace), self._fit(key), value, if_version=if_version, ttl=ttl
        )


class CheckNamesNotValidated(WrappedStorage):
    """ST10: a Check with an invalid name is skipped instead of refused."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        kept = []
        for op in ops:
            if isinstance(op, Check):
                try:
                    await self.inner.get(op.namespace, op.key)
                except Exception:
                    continue
            kept.append(op)
        return await self.inner.commit(kept)


class SecondAcloseRaises(WrappedStorage):
    """ST12: closing twice raises (the pool is closed twice)."""

    closed = False

    async def aclose(self) -> None:
        if self.closed:
            raise UsageError("already closed")
        self.closed = True
        await self.inner.aclose()


class CommitWorksAfterClose(WrappedStorage):
    """ST12: ``commit`` goes through a second connection that ``aclose`` forgets."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.second = inner.reopen()

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        return await self.second.commit(ops)


class AppliedBeforeFailedCheck(WrappedStorage):
    """ST9: a failed Check raises ``ConflictError`` only after applying the ops before it."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        done: list[Op] = []
        for op in ops:
            if isinstance(op, Check):
                try:
                    await self.inner.commit([*done, op])
                except ConflictError:
                    await self.inner.commit(done)
                    raise
        return await self.inner.commit(ops)


class AppliesTheBatchLater(WrappedStorage):
    """ST9 (ownership): ``commit`` keeps the caller's list and applies it on the next call."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.pending: list[Sequence[Op]] = []

    async def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for ops in pending:
            await self.inner.commit(ops)

    async def get(self, namespace: str, key: str) -> Record | None:
        await self._flush()
        return await self.inner.get(namespace, key)

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        await self._flush()
        result = await self.inner.reopen().commit(list(ops))  # a dry run for the result
        self.pending.append(ops)
        return result


class CommitNeedsAList(WrappedStorage):
    """ST9 (arguments): ``commit`` concatenates ``ops + [...]``, so a tuple raises TypeError."""

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        return await self.inner.commit(ops + [])  # type: ignore[operator]  # noqa: RUF005


BROKEN_BATCHES: dict[str, tuple[type[WrappedStorage], str]] = {
    "deletes applied last": (DeletesAppliedLast, "st9"),
    "checks see the state before the batch": (ChecksBeforeTheBatch, "st9"),
    "deleted lists only hits": (DeletedListsOnlyHits, "st9"),
    "checks then applies across an await": (ChecksThenAppliesAcrossAwait, "st9"),
    "ops before a failed check applied": (AppliedBeforeFailedCheck, "st9"),
    "negative limit slices": (NegativeLimitSlices, "st10"),
    "TTL of zero means forever": (NonPositiveTtlMeansForever, "st10"),
    "largest value refused": (LargestValueRefused, "st10"),
    "name length in characters": (NameLengthInCharacters, "st10"),
    "invalid Check names skipped": (CheckNamesNotValidated, "st10"),
    "second aclose raises": (SecondAcloseRaises, "st12"),
    "batch applied on the next call": (AppliesTheBatchLater, "st9"),
    "commit needs a list": (CommitNeedsAList, "st9"),
    "commit works after close": (CommitWorksAfterClose, "st12"),
}
"""Each broken storage adapter here and the invariant whose tests must catch it."""
