"""The writing process of the SIGKILL durability tests (ST11); run by ``_storage_crash_suite``.

``main([FACTORY, LOCATION, MODE])`` (run as ``python -c``) opens the adapter
that ``FACTORY`` names at ``LOCATION``, runs ``script`` and prints one
acknowledgement line per write *after* the write returned, then
either idles (``MODE`` ``idle``) or keeps writing new keys and stream entries
(``MODE`` ``busy``) until the test kills it with SIGKILL. Every acknowledged
write must be there when the test reopens the location.

``FACTORY`` is JSON: ``{"module": ..., "file": ..., "attr": ...}``. ``attr`` (a
dotted path inside the module) names either a class, instantiated without
arguments, whose ``open_storage(location)`` is used (a conformance test class),
or a callable ``f(location)`` returning what ``open_storage`` returns. The module
is imported by name; if that fails and ``file`` is given, it is loaded from the file.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from taskloom.contracts import (
    Append,
    CommitResult,
    Delete,
    Op,
    Put,
    Record,
    StorageAdapter,
    StreamEntry,
)

ACK = "TASKLOOM-ACK "
"""Prefix of an acknowledgement line, so that anything else the adapter prints is ignored."""

Opener = Callable[[Path], AbstractAsyncContextManager[StorageAdapter]]


def record_ack(record: Record) -> dict[str, Any]:
    return {
        "record": [
            record.namespace,
            record.key,
            record.value.hex(),
            record.version,
            record.updated_at,
            record.expires_at,
        ]
    }


def entry_ack(entry: StreamEntry) -> dict[str, Any]:
    return {"entry": [entry.stream, entry.seq, entry.payload.hex(), entry.appended_at]}


def gone_ack(namespace: str, key: str) -> dict[str, Any]:
    return {"gone": [namespace, key]}


def record_of(row: list[Any]) -> Record:
    """The Record an acknowledgement line describes."""
    namespace, key, value, version, updated_at, expires_at = row
    return Record(
        namespace=namespace,
        key=key,
        value=bytes.fromhex(value),
        version=version,
        updated_at=float(updated_at),
        expires_at=None if expires_at is None else float(expires_at),
    )


def entry_of(row: list[Any]) -> StreamEntry:
    """The StreamEntry an acknowledgement line describes."""
    stream, seq, payload, appended_at = row
    return StreamEntry(
        stream=stream, seq=seq, payload=bytes.fromhex(payload), appended_at=float(appended_at)
    )


def _commit_acks(ops: list[Op], result: CommitResult) -> list[dict[str, Any]]:
    records, entries, deleted = iter(result.records), iter(result.entries), iter(result.deleted)
    acks: list[dict[str, Any]] = []
    for op in ops:
        if isinstance(op, Put):
            acks.append(record_ack(next(records)))
        elif isinstance(op, Append):
            acks.append(entry_ack(next(entries)))
        elif isinstance(op, Delete):
            next(deleted)
            acks.append(gone_ack(op.namespace, op.key))
    return acks


async def script(s: StorageAdapter) -> AsyncIterator[dict[str, Any]]:
    """The writes whose acknowledgements the idle test checks: every kind, and a mixed commit."""
    await s.put("ns", "a", b"1")
    yield record_ack(await s.put("ns", "a", b"2"))
    yield record_ack(await s.put("ns", "ttl", b"t", ttl=3600))
    yield record_ack(await s.put("other", "\u00e9/x", b"\x00\xff"))
    yield record_ack(await s.put("ns", "gone", b""))
    await s.delete("ns", "gone")
    yield gone_ack("ns", "gone")
    yield entry_ack(await s.append("s", b"first"))
    ops: list[Op] = [
        Put(namespace="ns", key="c", value=b"c"),
        Append(stream="s", payload=b"second"),
        Delete(namespace="ns", key="a"),
        Put(namespace="ns", key="a", value=b"again"),
    ]
    for ack in _commit_acks(ops, await s.commit(ops)):
        yield ack
    yield record_ack(await s.put("ns", "last", b"final"))


async def busy(s: StorageAdapter) -> AsyncIterator[dict[str, Any]]:
    """Writes without end (new keys and entries), for the test that kills mid-write."""
    n = 0
    while True:
        n += 1
        yield record_ack(await s.put("busy", f"k{n:06d}", b"%d" % n))
        yield entry_ack(await s.append("busy", b"%d" % n))


def resolve(factory: dict[str, Any]) -> Opener:
    """The ``open_storage``-like callable that ``factory`` names (see the module docstring)."""
    module_name, file, attr = factory["module"], factory.get("file"), factory["attr"]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if not file:
            raise
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part)
    if isinstance(target, type):
        opener: Opener = target().open_storage
        return opener
    return target  # type: ignore[no-any-return]


def _emit(ack: dict[str, Any]) -> None:
    # A newline first: the adapter may have printed a line it did not end.
    sys.stdout.write("\n" + ACK + json.dumps(ack) + "\n")
    sys.stdout.flush()


async def _main(opener: Opener, location: Path, mode: str) -> None:
    async with opener(location) as storage:
        async for ack in script(storage):
            _emit(ack)
        _emit({"ready": True})
        if mode == "busy":
            async for ack in busy(storage):
                _emit(ack)
        await asyncio.sleep(3600)  # idle, with the adapter open, until killed


def main(argv: list[str]) -> None:
    factory, location, mode = json.loads(argv[0]), Path(argv[1]), argv[2]
    asyncio.run(_main(resolve(factory), location, mode))
