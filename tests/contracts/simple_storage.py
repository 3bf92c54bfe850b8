"""A simple third-party storage adapter, written from the README and the protocol alone.

``JsonFileStorage`` keeps everything in one JSON file that it rewrites (to a
temporary file, then ``os.replace``) after every write, under one lock: the
plainest adapter an outside author would write. The conformance tests use it
three ways: to measure how long the suite takes on such an adapter, as the
durable store behind the broken adapters that only a killed process exposes
(``BufferedUntilClose``, ``FlushesEveryFewWrites``), and as the passing control.

The module-level ``open_*`` functions are what the suites' ``crash_factory``
names: a fresh Python process imports them to write and then be killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

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


class JsonFileStorage:
    """Records and streams in one JSON file at ``location``, rewritten after each write."""

    def __init__(self, location: Path) -> None:
        self.path = Path(location)
        self.lock = asyncio.Lock()
        self.closed = False
        self.records: dict[str, dict[str, Record]] = {}
        self.streams: dict[str, list[StreamEntry]] = {}
        if self.path.exists():
            self._load(self.path.read_text(encoding="utf-8"))

    # the file -----------------------------------------------------------------------

    def _load(self, text: str) -> None:
        data = json.loads(text)
        self.records, self.streams = {}, {}
        for row in data["records"]:
            record = Record(
                namespace=row[0],
                key=row[1],
                value=bytes.fromhex(row[2]),
                version=row[3],
                updated_at=row[4],
                expires_at=row[5],
            )
            self.records.setdefault(record.namespace, {})[record.key] = record
        for row in data["entries"]:
            entry = StreamEntry(
                stream=row[0], seq=row[1], payload=bytes.fromhex(row[2]), appended_at=row[3]
            )
            self.streams.setdefault(entry.stream, []).append(entry)

    def _dump(self) -> str:
        rows = [
            [r.namespace, r.key, r.value.hex(), r.version, r.updated_at, r.expires_at]
            for space in self.records.values()
            for r in space.values()
        ]
        entries = [
            [e.stream, e.seq, e.payload.hex(), e.appended_at]
            for stream in self.streams.values()
            for e in stream
        ]
        return json.dumps({"records": rows, "entries": entries})

    def save(self) -> None:
        """Write the whole state to the file (called after every write)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(self._dump(), encoding="utf-8")
        os.replace(temporary, self.path)

    # helpers ------------------------------------------------------------------------

    def _open(self) -> None:
        if self.closed:
            raise UsageError("the storage is closed")

    def _live(self, namespace: str, key: str, now: float) -> Record | None:
        record = self.records.get(namespace, {}).get(key)
        if record is not None and record.expires_at is not None and record.expires_at <= now:
            return None
        return record

    def _version(self, namespace: str, key: str, now: float) -> int:
        record = self._live(namespace, key, now)
        return 0 if record is None else record.version

    def _put(self, op: Put, now: float) -> Record:
        current = self._version(op.namespace, op.key, now)
        record = Record(
            namespace=op.namespace,
            key=op.key,
            value=op.value,
            version=current + 1,
            updated_at=now,
            expires_at=None if op.ttl is None else now + op.ttl,
        )
        self.records.setdefault(op.namespace, {})[op.key] = record
        return record

    def _delete(self, namespace: str, key: str, now: float) -> bool:
        existed = self._live(namespace, key, now) is not None
        self.records.get(namespace, {}).pop(key, None)
        return existed

    def _append(self, stream: str, payload: bytes, now: float) -> StreamEntry:
        entries = self.streams.setdefault(stream, [])
        entry = StreamEntry(stream=stream, seq=len(entries) + 1, payload=payload, appended_at=now)
        entries.append(entry)
        return entry

    def _conflict(self, what: str, namespace: str, key: str, want: int, now: float) -> None:
        actual = self._version(namespace, key, now)
        if actual != want:
            raise ConflictError(
                f"{what} {namespace}/{key}: expected version {want}, found {actual}",
                key=key,
                expected=want,
                actual=actual,
            )

    # the protocol -------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Record | None:
        self._open()
        check_name(namespace, what="namespace")
        check_name(key)
        return self._live(namespace, key, time.time())

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        check_value(value)  # before Put(), whose own type check raises TypeError
        return (
            await self.commit(
                [Put(namespace=namespace, key=key, value=value, if_version=if_version, ttl=ttl)]
            )
        ).records[0]

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
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
        self._open()
        check_name(namespace, what="namespace")
        limit = check_scan(prefix, start_after, limit)
        now = time.time()
        found = []
        for key in sorted(self.records.get(namespace, {})):
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            record = self._live(namespace, key, now)
            if record is not None:
                found.append(record)
        return found if limit is None else found[:limit]

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        check_value(payload, what="payload")
        return (await self.commit([Append(stream=stream, payload=payload)])).entries[0]

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        self._open()
        check_name(stream, what="stream")
        limit = check_read(after, limit)
        found = self.streams.get(stream, [])[after:]
        return found if limit is None else found[:limit]

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        self._open()
        for op in ops:
            if isinstance(op, Append):
                check_name(op.stream, what="stream")
                check_value(op.payload, what="payload")
            else:
                check_name(op.namespace, what="namespace")
                check_name(op.key)
            if isinstance(op, Put):
                check_value(op.value)
                check_if_version(op.if_version)
                check_ttl(op.ttl)
        async with self.lock:
            before = self._dump()
            try:
                result = self._apply(ops, time.time())
            except ConflictError:
                self._load(before)
                raise
            if ops:
                self.save()
            return result

    def _apply(self, ops: Sequence[Op], now: float) -> CommitResult:
        records: list[Record] = []
        entries: list[StreamEntry] = []
        deleted: list[bool] = []
        for op in ops:
            if isinstance(op, Check):
                self._conflict("check", op.namespace, op.key, op.version, now)
            elif isinstance(op, Put):
                if op.if_version is not None:
                    self._conflict("put", op.namespace, op.key, op.if_version, now)
                records.append(self._put(op, now))
            elif isinstance(op, Delete):
                if op.if_version is not None:
                    self._conflict("delete", op.namespace, op.key, op.if_version, now)
                deleted.append(self._delete(op.namespace, op.key, now))
            else:
                entries.append(self._append(op.stream, op.payload, now))
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))

    async def aclose(self) -> None:
        self.closed = True

    async def __aenter__(self) -> JsonFileStorage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class BufferedUntilClose(JsonFileStorage):
    """ST11 (killed process): writes reach the file only in ``aclose``, so a kill loses them."""

    def save(self) -> None:
        return None  # the bug: nothing reaches the file until aclose

    async def aclose(self) -> None:
        if not self.closed:
            JsonFileStorage.save(self)
        await super().aclose()


class FlushesEveryFewWrites(JsonFileStorage):
    """ST11 (killed process): the file is rewritten every fourth write and on ``aclose``."""

    writes = 0

    def save(self) -> None:
        self.writes += 1
        if self.writes % 4 == 0:
            super().save()

    async def aclose(self) -> None:
        if not self.closed:
            JsonFileStorage.save(self)
        await super().aclose()


def open_json_file(location: Path) -> AbstractAsyncContextManager[Any]:
    """The factory a killed child process uses for ``JsonFileStorage``."""
    return JsonFileStorage(location)


def open_buffered_until_close(location: Path) -> AbstractAsyncContextManager[Any]:
    """The factory a killed child process uses for ``BufferedUntilClose``."""
    return BufferedUntilClose(location)


def open_flushes_every_few_writes(location: Path) -> AbstractAsyncContextManager[Any]:
    """The factory a killed child process uses for ``FlushesEveryFewWrites``."""
    return FlushesEveryFewWrites(location)


class ChattyJsonFileStorage(JsonFileStorage):
    """A working store that prints to stdout without ending its lines (a stray debug print)."""

    def save(self) -> None:
        print("saved", end="", flush=True)
        super().save()


def open_chatty(location: Path) -> AbstractAsyncContextManager[Any]:
    """The factory a killed child process uses for ``ChattyJsonFileStorage``."""
    return ChattyJsonFileStorage(location)


def open_failing(location: Path) -> AbstractAsyncContextManager[Any]:
    """A factory that cannot open anything, as a misconfigured child would."""
    raise RuntimeError(f"cannot open {location}: no database configured")
