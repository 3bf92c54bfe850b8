"""Deliberately broken adapters, each with one realistic bug, and a harness that runs a
conformance suite against them.

A suite that passes everything proves nothing: ``test_suites_catch_broken.py`` runs
the relevant tests of each suite against each of these and expects them to fail.
Every broken adapter wraps a working memory adapter and changes one behaviour, so
a failure can only come from that one bug.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import Phase, settings
from simple_storage import BufferedUntilClose, FlushesEveryFewWrites, JsonFileStorage

from taskloom.adapters.memory import MemorySecretStore, MemoryStorage
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import (
    MAX_VALUE_BYTES,
    Append,
    AuthenticationFailed,
    Check,
    CommitResult,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ConflictError,
    Delete,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    LLMExecutor,
    Op,
    ProviderUnavailable,
    Put,
    RateLimited,
    Record,
    Secret,
    SecretNotFound,
    SecretStore,
    StorageAdapter,
    StreamEntry,
)
from taskloom.contracts.testing import (
    ExecutorConformance,
    SecretStoreConformance,
    StorageConformance,
)

CODE = re.compile(r"[a-z]+\d+")


def codes_of(test_name: str) -> list[str]:
    """The invariant codes a test name starts with: ``test_st1_st2_x`` -> [st1, st2]."""
    codes = []
    for part in test_name.removeprefix("test_").split("_"):
        if not CODE.fullmatch(part):
            break
        codes.append(part)
    return codes


# --- storage -----------------------------------------------------------------------------


class WrappedStorage:
    """Passes every call to a working MemoryStorage; subclasses break one thing."""

    def __init__(self, inner: MemoryStorage) -> None:
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


def _fast_settings(base: settings) -> settings:
    """No shrinking and no example database: we only need to know that it fails."""
    return settings(base, phases=[Phase.explicit, Phase.generate], database=None, derandomize=True)


def storage_suite(wrapper: Callable[[MemoryStorage], StorageAdapter]) -> StorageConformance:
    """A StorageConformance whose adapter is ``wrapper`` around a MemoryStorage per location."""

    class Suite(StorageConformance):
        durable = True
        survives_kill = False  # a MemoryStorage cannot outlive a killed process

        def __init__(self) -> None:
            self.stores: dict[Path, MemoryStorage] = {}

        def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
            @asynccontextmanager
            async def opened() -> AsyncIterator[StorageAdapter]:
                previous = self.stores.get(location)
                inner = MemoryStorage() if previous is None else previous.reopen()
                self.stores[location] = inner
                adapter = wrapper(inner)
                try:
                    yield adapter
                finally:
                    await adapter.aclose()

            return opened()

        def hypothesis_settings(self) -> settings:
            return _fast_settings(super().hypothesis_settings())

    return Suite()


def file_storage_suite(cls: type[JsonFileStorage], factory: str) -> StorageConformance:
    """A StorageConformance on ``cls`` (a JSON file store); ``factory`` names its opener
    for the killed child process (``"simple_storage:open_..."``)."""

    class Suite(StorageConformance):
        durable = True
        crash_factory = factory

        def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
            return cls(location)

        def hypothesis_settings(self) -> settings:
            return _fast_settings(super().hypothesis_settings())

    return Suite()


BROKEN_DURABLE_STORAGE: dict[str, tuple[type[JsonFileStorage], str, str]] = {
    "writes only on aclose": (
        BufferedUntilClose,
        "simple_storage:open_buffered_until_close",
        "st11",
    ),
    "flushes every fourth write": (
        FlushesEveryFewWrites,
        "simple_storage:open_flushes_every_few_writes",
        "st11",
    ),
}
"""File-backed broken adapters that pass every reopen test and lose writes when killed."""


# --- secret stores -------------------------------------------------------------------


class WrappedSecrets:
    """Passes every call to a working MemorySecretStore; subclasses break one thing."""

    def __init__(self, inner: MemorySecretStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    async def get(self, name: str, /) -> Secret:
        return await self.inner.get(name)

    async def set(self, name: str, value: str | Secret, /) -> None:
        await self.inner.set(name, value)

    async def delete(self, name: str, /) -> bool:
        return await self.inner.delete(name)

    async def names(self) -> list[str]:
        return await self.inner.names()

    async def aclose(self) -> None:
        await self.inner.aclose()


class FirstSetWins(WrappedSecrets):
    """SS1: a second ``set`` of a name is ignored."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        if name not in await self.inner.names():
            await self.inner.set(name, value)


class MissingIsEmpty(WrappedSecrets):
    """SS2: a missing name reads as an empty secret instead of raising."""

    async def get(self, name: str, /) -> Secret:
        try:
            return await self.inner.get(name)
        except SecretNotFound:
            return Secret("")


class NamesUnsorted(WrappedSecrets):
    """SS3: ``names()`` comes back in reverse order."""

    async def names(self) -> list[str]:
        return sorted(await self.inner.names(), reverse=True)


class DeleteReturnsNothing(WrappedSecrets):
    """SS4: ``delete`` always reports False."""

    async def delete(self, name: str, /) -> bool:
        await self.inner.delete(name)
        return False


class LaxNames(WrappedSecrets):
    """SS5: names with spaces or slashes are quietly rewritten instead of refused."""

    @staticmethod
    def _fix(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:128] or "_"

    async def get(self, name: str, /) -> Secret:
        return await self.inner.get(self._fix(name))

    async def set(self, name: str, value: str | Secret, /) -> None:
        await self.inner.set(self._fix(name), value)

    async def delete(self, name: str, /) -> bool:
        return await self.inner.delete(self._fix(name))


class LeakyErrors(WrappedSecrets):
    """SS6: an invalid name's error quotes the value that was being set."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        try:
            await self.inner.set(name, value)
        except Exception as exc:
            shown = value.reveal() if isinstance(value, Secret) else value
            raise type(exc)(f"{exc} (while setting {shown!r})") from None


class ForgetsOnReopen(WrappedSecrets):
    """SS7: stands for a store that never flushes: reopening finds it empty."""


class WorksAfterCloseSecrets(WrappedSecrets):
    """SS8: ``aclose`` does nothing."""

    async def aclose(self) -> None:
        return None


class ReadOnlyThatWrites(WrappedSecrets):
    """SS9: declares itself read-only, but ``set`` and ``delete`` still work."""


BROKEN_SECRETS: dict[str, tuple[type[WrappedSecrets], str]] = {
    "second set ignored": (FirstSetWins, "ss1"),
    "missing name is empty": (MissingIsEmpty, "ss2"),
    "names unsorted": (NamesUnsorted, "ss3"),
    "delete reports False": (DeleteReturnsNothing, "ss4"),
    "invalid names rewritten": (LaxNames, "ss5"),
    "errors leak values": (LeakyErrors, "ss6"),
    "forgets on reopen": (ForgetsOnReopen, "ss7"),
    "works after close": (WorksAfterCloseSecrets, "ss8"),
    "read-only store writes": (ReadOnlyThatWrites, "ss9"),
}
"""Each broken secret store and the invariant whose tests must catch it."""


def secrets_suite(wrapper: type[WrappedSecrets]) -> SecretStoreConformance:
    """A SecretStoreConformance whose store is ``wrapper`` around a MemorySecretStore."""
    read_only = wrapper is ReadOnlyThatWrites
    remember = wrapper is not ForgetsOnReopen

    class Suite(SecretStoreConformance):
        durable = True
        writable = not read_only

        def __init__(self) -> None:
            self.stores: dict[Path, MemorySecretStore] = {}

        def open_store(
            self, location: Path, initial: Mapping[str, str] | None = None
        ) -> AbstractAsyncContextManager[SecretStore]:
            @asynccontextmanager
            async def opened() -> AsyncIterator[SecretStore]:
                previous = self.stores.get(location) if remember else None
                inner = MemorySecretStore(initial) if previous is None else previous.reopen()
                self.stores[location] = inner
                store = wrapper(inner)
                try:
                    yield store
                finally:
                    await store.aclose()

            return opened()

        def hypothesis_settings(self) -> settings:
            return _fast_settings(super().hypothesis_settings())

    return Suite()


# --- executors -------------------------------------------------------------------------


class ReturnsText(ScriptedExecutor):
    """EX1: ``complete`` returns the bare text instead of a CompletionResult."""

    async def complete(self, request: CompletionRequest, /) -> Any:
        return (await super().complete(request)).text


class IndexFromOne(ScriptedExecutor):
    """EX2: chunk indexes start at 1."""

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        async for chunk in super().stream(request):
            yield attrs.evolve(chunk, index=chunk.index + 1)


class UntypedRateLimit(ScriptedExecutor):
    """EX3: a rate limit escapes as a bare RuntimeError (an untranslated backend error)."""

    def _start(self, request: CompletionRequest) -> ExecutorError | None:
        failure = super()._start(request)
        if isinstance(failure, RateLimited):
            raise RuntimeError("HTTP 429")
        return failure


class SharedReplyBuffer(ScriptedExecutor):
    """EX4: the reply is kept on the executor across an await, so concurrent calls mix."""

    buffer = ""

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        result = await super().complete(request)
        self.buffer = result.text
        await asyncio.sleep(0.001)
        return attrs.evolve(result, text=self.buffer)


class StreamHoldsLock(ScriptedExecutor):
    """EX5: a stream takes a lock it releases only when it runs to the end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock = asyncio.Lock()

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        async with self.lock:
            return await super().complete(request)

    async def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        await self.lock.acquire()
        async for chunk in super().stream(request):
            yield chunk
        self.lock.release()


class WorksAfterCloseExecutor(ScriptedExecutor):
    """EX6: ``aclose`` does nothing."""

    async def aclose(self) -> None:
        return None


BROKEN_EXECUTORS: dict[str, tuple[type[ScriptedExecutor], str]] = {
    "returns bare text": (ReturnsText, "ex1"),
    "indexes from one": (IndexFromOne, "ex2"),
    "untyped rate limit": (UntypedRateLimit, "ex3"),
    "replies mixed under concurrency": (SharedReplyBuffer, "ex4"),
    "stream holds a lock after close": (StreamHoldsLock, "ex5"),
    "works after close": (WorksAfterCloseExecutor, "ex6"),
}
"""Each broken executor and the invariant whose tests must catch it."""


def executor_suite(cls: type[ScriptedExecutor]) -> ExecutorConformance:
    """An ExecutorConformance whose executors are instances of ``cls``."""
    failures: dict[str, ExecutorError] = {
        "rate_limited": RateLimited("slow down", retry_after=1.0),
        "timeout": ExecutorTimeout("slow"),
        "unavailable": ProviderUnavailable("down"),
        "invalid_request": InvalidRequest("bad"),
        "authentication": AuthenticationFailed("who"),
    }

    @asynccontextmanager
    async def opened(executor: ScriptedExecutor) -> AsyncIterator[LLMExecutor]:
        try:
            yield executor
        finally:
            await executor.aclose()

    class Suite(ExecutorConformance):
        timeout_s: ClassVar[float] = 1.0

        def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
            return opened(cls(chunk_size=4))

        def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
            return opened(cls(failures=itertools.repeat(failures[failure])))

    return Suite()


# --- the harness ---------------------------------------------------------------------


def _run_one(suite: object, name: str, tmp_path: Path) -> BaseException | str | None:
    method = getattr(suite, name)
    kwargs: dict[str, Any] = {}
    if "tmp_path" in inspect.signature(method).parameters:
        kwargs["tmp_path"] = tmp_path / name
        kwargs["tmp_path"].mkdir(parents=True)
    try:
        method(**kwargs)
    except pytest.skip.Exception:
        return "skipped"
    except (Exception, pytest.fail.Exception) as exc:
        return exc
    return None


def run_tests(suite: object, tmp_path: Path) -> dict[str, BaseException | None]:
    """Run every test of ``suite``, each in its own directory; return each test's exception
    (None when it passed); skipped tests are left out.

    Example tests run in threads (each has its own event loop), so that the suite's
    short TTL sleeps overlap; hypothesis tests run one at a time in this thread.
    """
    names = sorted(n for n in dir(suite) if n.startswith("test_"))
    stateful = [n for n in names if n.endswith("_against_model")]
    examples = [n for n in names if n not in stateful]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {n: pool.submit(_run_one, suite, n, tmp_path) for n in examples}
        outcomes = {n: _run_one(suite, n, tmp_path) for n in stateful}
        outcomes.update({n: f.result() for n, f in futures.items()})
    return {n: o for n, o in outcomes.items() if not isinstance(o, str)}
