"""FileStorage: the asyncio face of the file store in ``_core``.

Blocking file I/O never runs on the event loop. Writes go to one dedicated
writer thread through a queue: whatever queued up while the previous batch ran
becomes the next batch, planned in order (``_batch``) and applied under one
exclusive lock with parallel file fsyncs and one fsync per changed directory,
so many concurrent writers share the cost of making their writes durable.
Reads run in the default thread pool in parallel, each under the shared lock.
``OSError`` becomes ``StorageUnavailable`` in one place (``_fs_io.unavailable``),
when a thread's outcome reaches the loop.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from taskloom.adapters.filesystem._batch import Batch
from taskloom.adapters.filesystem._core import NeedsRecovery, Store
from taskloom.adapters.filesystem._io import unavailable
from taskloom.contracts import (
    Append,
    Check,
    CommitResult,
    Delete,
    Op,
    Put,
    Record,
    StorageFinding,
    StreamEntry,
    UsageError,
    check_if_version,
    check_name,
    check_read,
    check_scan,
    check_ttl,
    check_value,
)

T = TypeVar("T")

DEFAULT_SEGMENT_BYTES = 1024 * 1024
"""A stream rolls to a new segment file once its last segment reaches this size."""

_NEW, _OPEN, _CLOSED = "new", "open", "closed"


class FileStorage:
    """A ``StorageAdapter`` in one directory, shared safely by several processes.

    ``async with FileStorage(root) as storage:`` or ``await FileStorage.open(root)``.
    A new directory is created and marked as a taskloom store; an existing
    one must be a taskloom store (else ``StorageCorrupted``, nothing touched).
    ``fsync=False`` trades durability against power loss for speed (tests);
    a write that returned survives a killed process either way.
    Keys, namespaces and stream names may be any text up to 1024 UTF-8 bytes.

    Undefined outcomes, stated: a write whose caller is cancelled may still be
    applied. A write that raises ``StorageUnavailable`` (disk full, read-only,
    I/O error) may or may not have been applied: a full disk usually fails
    while temporary files are written, before anything changed, but a failure
    partway through a batch, or after its journal was written (the next write
    or open completes a journaled batch), leaves some or all of it applied.
    Treat it like a timeout: read back before retrying a non-idempotent write.
    A commit is still all or nothing, and earlier data is never damaged.
    """

    durable = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        lock_timeout: float = 30.0,
    ) -> None:
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int):
            raise UsageError(f"segment_bytes must be an int, got {segment_bytes!r}")
        if segment_bytes < 1:
            raise UsageError(f"segment_bytes must be at least 1, got {segment_bytes}")
        if not lock_timeout > 0:
            raise UsageError(f"lock_timeout must be a positive number, got {lock_timeout!r}")
        self._root = Path(os.path.abspath(os.fspath(root)))
        self._store = Store(
            self._root,
            clock=clock,
            fsync=bool(fsync),
            segment_bytes=segment_bytes,
            lock_timeout=float(lock_timeout),
        )
        self._state = _NEW
        self._opening: asyncio.Lock | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Callable[[Batch], object], asyncio.Future[Any] | None]] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def root(self) -> Path:
        """The directory this store lives in."""
        return self._root

    def __repr__(self) -> str:
        return f"FileStorage({str(self._root)!r})"

    # --- lifecycle ---------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        root: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        lock_timeout: float = 30.0,
    ) -> FileStorage:
        """Open (creating if needed) the store at ``root``; close it with ``aclose``."""
        storage = cls(
            root, clock=clock, fsync=fsync, segment_bytes=segment_bytes, lock_timeout=lock_timeout
        )
        await storage._ensure_open()
        return storage

    async def __aenter__(self) -> FileStorage:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _ensure_open(self) -> None:
        if self._state == _OPEN:
            return
        self._check_usable()
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._state == _OPEN:
                return
            self._check_usable()
            writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskloom-fs-writer")
            try:
                await self._run(writer, self._store.open)
            except BaseException:
                writer.shutdown(wait=False)
                await asyncio.to_thread(self._store.close)
                raise
            self._writer = writer
            self._state = _OPEN

    def _check_usable(self) -> None:
        if self._state == _CLOSED:
            raise UsageError(
                f"FileStorage at {self._root} is closed: open a new one to keep using the store"
            )

    async def aclose(self) -> None:
        """Finish queued writes, then release the lock files; calling it again does nothing."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        try:
            if self._drain is not None:
                await asyncio.shield(self._drain)
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                await asyncio.to_thread(writer.shutdown, wait=True)
            await asyncio.to_thread(self._store.close)

    def __del__(self) -> None:
        if getattr(self, "_state", _CLOSED) == _OPEN:
            warnings.warn(
                f"{self!r} was never closed: use 'async with' or await aclose()",
                ResourceWarning,
                stacklevel=1,
            )

    # --- plumbing ------------------------------------------------------------------

    async def _run(self, executor: ThreadPoolExecutor | None, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread; translate OSError here, at the one boundary."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn)
        except OSError as exc:
            raise unavailable(self._root, exc) from exc

    async def _read(self, fn: Callable[[], T]) -> T:
        """Run a read under the shared lock, rolling a crashed writer's journal forward first."""
        await self._ensure_open()
        store = self._store

        def locked() -> T:
            with store.reading():
                return fn()

        for _ in range(5):
            try:
                return await self._run(None, locked)
            except NeedsRecovery:
                await self._write(_nothing)
        return await self._run(None, locked)

    async def _write(self, fn: Callable[[Batch], T]) -> T:
        """Queue a write for the writer thread and wait until it is durable."""
        await self._ensure_open()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(fn, future)
        return await future

    def _enqueue(self, fn: Callable[[Batch], object], future: asyncio.Future[Any] | None) -> None:
        self._pending.append((fn, future))
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_queue())

    async def _drain_queue(self) -> None:
        """Hand everything queued to the writer thread as one batch, until the queue is empty."""
        batch: list[tuple[Callable[[Batch], object], asyncio.Future[Any] | None]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                loop = asyncio.get_running_loop()
                try:
                    if self._writer is None:
                        raise UsageError(f"FileStorage at {self._root} is closed")
                    outcomes = await loop.run_in_executor(
                        self._writer, self._store.run_batch, [fn for fn, _ in batch]
                    )
                except Exception as exc:
                    error = unavailable(self._root, exc) if isinstance(exc, OSError) else exc
                    for _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future is None or future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    elif isinstance(value, OSError):
                        future.set_exception(unavailable(self._root, value))
                    else:
                        future.set_exception(
                            value if isinstance(value, BaseException) else RuntimeError(value)
                        )
        except BaseException as exc:
            for _, future in [*batch, *self._pending]:
                if future is None or future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            self._pending = []
            raise
        finally:
            self._drain = None

    def _purge_later(self, namespace: str, keys: list[str]) -> None:
        """Remove expired records in the background; nobody waits for it."""
        if keys and self._state == _OPEN:
            self._enqueue(lambda batch: batch.purge(namespace, keys), None)

    async def purge_expired(self) -> int:
        """Delete the files of every expired record now; return how many were removed.

        Expired records are invisible at once and their files are removed when
        a read meets them; this sweeps the rest, so a long-lived store whose
        records expire unread does not only grow. It reads under the shared
        lock and deletes in one write batch that checks each key again.
        """
        self._check_usable()
        store = self._store
        found = await self._read(store.expired)
        removed = 0
        for namespace, keys in found.items():
            removed += await self._write(functools.partial(_purge, namespace, keys))
        return removed

    # --- the StorageAdapter protocol -----------------------------------------------

    async def get(self, namespace: str, key: str) -> Record | None:
        """The live record at (namespace, key), or None."""
        self._check_usable()
        check_name(namespace, what="namespace")
        check_name(key)
        store = self._store
        record, expired = await self._read(lambda: store.get(namespace, key))
        if expired:
            self._purge_later(namespace, [key])
        return record

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        """Write a record; ``if_version`` makes it a compare-and-set (0: must not exist)."""
        self._check_usable()
        check_name(namespace, what="namespace")
        check_name(key)
        check_value(value)
        expected = check_if_version(if_version)
        seconds = check_ttl(ttl)
        return await self._write(
            lambda batch: batch.put(namespace, key, value, if_version=expected, ttl=seconds)
        )

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Delete a record; True if it existed."""
        self._check_usable()
        check_name(namespace, what="namespace")
        check_name(key)
        expected = check_if_version(if_version)
        return await self._write(lambda batch: batch.delete(namespace, key, if_version=expected))

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Live records of ``namespace`` in key order (see ST6)."""
        self._check_usable()
        check_name(namespace, what="namespace")
        count = check_scan(prefix, start_after, limit)
        store = self._store
        records, expired = await self._read(
            lambda: store.scan(namespace, prefix=prefix, start_after=start_after, limit=count)
        )
        self._purge_later(namespace, expired)
        return records

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        """Append ``payload`` to ``stream``; the entry's seq is the next number, no gaps."""
        self._check_usable()
        check_name(stream, what="stream")
        check_value(payload, what="payload")
        return await self._write(lambda batch: batch.append(stream, payload))

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        """Entries of ``stream`` with seq > ``after``, in order, at most ``limit``."""
        self._check_usable()
        check_name(stream, what="stream")
        count = check_read(after, limit)
        store = self._store
        return await self._read(lambda: store.read(stream, after=after, limit=count))

    async def verify(self, *, repair: bool = False) -> list[StorageFinding]:
        """Check every record and segment checksum and the store's leftovers (``SelfChecking``).

        ``repair`` fixes only what loses nothing: a pending journal, a torn tail,
        temporary files and empty directories.
        """
        self._check_usable()
        await self._ensure_open()
        await self._write(_nothing)
        store = self._store
        return await self._run(self._writer, lambda: store.verify(repair=bool(repair)))

    async def vacuum(self) -> int:
        """Give back the space of emptied layout directories (see ``Store.vacuum``).

        ``taskloom prune`` and ``delete`` call it, as they call SQLite's ``vacuum``.
        Returns how many directories were replaced by fresh ones.
        """
        self._check_usable()
        await self._ensure_open()
        await self._write(_nothing)
        store = self._store
        return await self._run(self._writer, store.vacuum)

    async def stream_names(self) -> list[str]:
        """The names of every stream that has entries, sorted (for ``taskloom doctor``)."""
        self._check_usable()
        store = self._store
        return await self._read(store.stream_names)

    async def drop_stream(self, stream: str) -> bool:
        """Remove ``stream``'s entries and files; the next append is 1 (``StreamDropping``).

        Runs on the writer thread, in order with the queued writes before it.
        """
        self._check_usable()
        check_name(stream, what="stream")
        await self._ensure_open()
        await self._write(_nothing)  # what was queued before goes first
        store = self._store
        return await self._run(self._writer, lambda: store.drop_stream(stream))

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Apply ``ops`` all or nothing (see ST9); journaled when more than one file changes."""
        self._check_usable()
        batch = list(ops)
        for op in batch:
            _check_op(op)
        if not batch:
            await self._ensure_open()
            return CommitResult()
        return await self._write(lambda plan: plan.commit(batch))


def _purge(namespace: str, keys: list[str], batch: Batch) -> int:
    return batch.purge(namespace, keys)


def _nothing(batch: Batch) -> None:
    """A write that changes nothing: running it makes the writer roll a journal forward."""


def _check_op(op: object) -> None:
    """Validate one commit op up front, so an invalid batch stores nothing."""
    if isinstance(op, Put):
        check_name(op.namespace, what="namespace")
        check_name(op.key)
        check_value(op.value)
        check_if_version(op.if_version)
        check_ttl(op.ttl)
    elif isinstance(op, Delete):
        check_name(op.namespace, what="namespace")
        check_name(op.key)
        check_if_version(op.if_version)
    elif isinstance(op, Check):
        check_name(op.namespace, what="namespace")
        check_name(op.key)
    elif isinstance(op, Append):
        check_name(op.stream, what="stream")
        check_value(op.payload, what="payload")
    else:
        raise UsageError(f"commit takes Put, Delete, Append and Check ops, got {op!r}")
