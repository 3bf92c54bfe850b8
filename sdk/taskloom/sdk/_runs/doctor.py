"""Checking a run store's records against each other: damaged records and orphans.

The adapter checks its own files (``SelfChecking.verify``); this checks what the
run store keeps across namespaces, through the ``StorageAdapter`` protocol only:

- a run record that does not decode (reported: ``taskloom delete RUN`` removes it);
- an index entry without its run (repaired: the index is derived data);
- a run without its index entry (repaired: rebuilt from the record);
- a deletion a crash interrupted, i.e. a tombstone on a store that drops streams
  (repaired: the deletion the user asked for is finished);
- cache entries of a run that no longer exists (repaired: a cache loses nothing);
- leases and fences of runs that no longer exist (repaired once the lease expired);
- checkpoints of a run that no longer exists (reported: ``taskloom delete RUN``);
- the event stream of a run that no longer exists, on an adapter that can list its
  streams (reported: ``taskloom events`` still shows it, ``taskloom delete RUN`` removes it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

from taskloom.contracts import (
    DecodeError,
    Delete,
    Put,
    Record,
    StorageAdapter,
    StorageFinding,
    StreamDropping,
)
from taskloom.sdk._runs.codec import decode, encode
from taskloom.sdk._runs.records import (
    NS_CACHE,
    NS_CACHE_OWNERS,
    NS_FENCES,
    NS_LEASES,
    NS_RUNS,
    NS_RUNS_BY_TIME,
    NS_STEPS,
    NS_TOMBSTONES,
    LeaseRecord,
    RunRecord,
    index_entry,
    index_key,
)

__all__ = ["check_runs"]

_PAGE = 1000


@runtime_checkable
class ListsStreams(Protocol):
    """An adapter that can name its streams (memory, SQLite and file stores can)."""

    async def stream_names(self) -> list[str]: ...


async def _all(storage: StorageAdapter, namespace: str) -> AsyncIterator[Record]:
    after: str | None = None
    while True:
        page = await storage.scan(namespace, start_after=after, limit=_PAGE)
        for record in page:
            yield record
        if len(page) < _PAGE:
            return
        after = page[-1].key


async def check_runs(
    storage: StorageAdapter,
    *,
    repair: bool,
    clock: Callable[[], float],
    finish_delete: Callable[[str], Awaitable[bool]] | None = None,
) -> list[StorageFinding]:
    """Every inconsistency between the run store's namespaces; repair what loses nothing.

    ``finish_delete`` (``RunStore.finish_delete``) completes an interrupted deletion.
    """
    found: list[StorageFinding] = []

    def add(where: str, problem: str, repaired: bool = False) -> None:
        found.append(StorageFinding(where=where, problem=problem, repaired=repaired))

    runs: dict[str, Record] = {}
    async for stored_run in _all(storage, NS_RUNS):
        runs[stored_run.key] = stored_run
    indexed: set[str] = set()
    async for entry in _all(storage, NS_RUNS_BY_TIME):
        run_id = entry.key.partition("/")[2]
        indexed.add(run_id)
        if run_id not in runs:
            if repair:
                await storage.delete(NS_RUNS_BY_TIME, entry.key, if_version=entry.version)
            add(f"{NS_RUNS_BY_TIME}/{entry.key}", "an index entry of a run that is gone", repair)
    for run_id, stored in runs.items():
        try:
            run = decode(stored.value, RunRecord, where=f"{NS_RUNS}/{run_id}")
        except DecodeError as exc:
            add(f"{NS_RUNS}/{run_id}", f"{exc} (`taskloom delete {run_id}` removes the run)")
            continue
        if run_id not in indexed:
            if repair:
                await storage.commit(
                    [
                        Put(
                            namespace=NS_RUNS_BY_TIME,
                            key=index_key(run_id, run.created_at),
                            value=encode(index_entry(run)),
                        )
                    ]
                )
            add(f"{NS_RUNS}/{run_id}", "the run is missing from the time index", repair)
    if isinstance(storage, StreamDropping):
        async for tomb in _all(storage, NS_TOMBSTONES):
            fixable = repair and finish_delete is not None
            if repair and finish_delete is not None:
                await finish_delete(tomb.key)
            add(
                f"{NS_TOMBSTONES}/{tomb.key}",
                "a deletion interrupted by a crash (events or checkpoints left)",
                fixable,
            )
    async for owner in _all(storage, NS_CACHE_OWNERS):
        run_id, _, cache_key = owner.key.partition("/")
        if run_id in runs:
            continue
        if repair:
            await storage.commit(
                [
                    Delete(namespace=NS_CACHE, key=cache_key),
                    Delete(namespace=NS_CACHE_OWNERS, key=owner.key),
                ]
            )
        add(f"{NS_CACHE_OWNERS}/{owner.key}", "a cache entry of a run that is gone", repair)
    now = clock()
    async for lease in _all(storage, NS_LEASES):
        if lease.key in runs:
            continue
        try:
            live = decode(lease.value, LeaseRecord, where=f"{NS_LEASES}/{lease.key}")
            expired = live.expires_at <= now
        except DecodeError:
            expired = True
        fixable = repair and expired
        if fixable:
            await storage.delete(NS_LEASES, lease.key, if_version=lease.version)
        add(f"{NS_LEASES}/{lease.key}", "a lease of a run that is gone", fixable)
    async for fence in _all(storage, NS_FENCES):
        if fence.key in runs:
            continue
        if repair:
            await storage.delete(NS_FENCES, fence.key, if_version=fence.version)
        add(f"{NS_FENCES}/{fence.key}", "a fence record of a run that is gone", repair)
    orphans: dict[str, int] = {}
    async for step in _all(storage, NS_STEPS):
        run_id = step.key.partition("/")[0]
        if run_id not in runs:
            orphans[run_id] = orphans.get(run_id, 0) + 1
    for run_id, count in orphans.items():
        add(
            f"{NS_STEPS}/{run_id}/",
            f"{count} checkpoint(s) of a run that is gone: `taskloom delete {run_id}` removes them",
        )
    if isinstance(storage, ListsStreams):
        for stream in await storage.stream_names():
            prefix, _, rest = stream.partition(":")
            run_id, _, suffix = rest.rpartition(":")
            if prefix != "run" or suffix != "events" or not run_id or run_id in runs:
                continue
            if await storage.get(NS_TOMBSTONES, run_id) is not None:
                continue  # a deleted run whose stream this store keeps, hidden by its tombstone
            add(
                f"stream {stream}",
                f"the events of a run that is gone: `taskloom delete {run_id}` removes them",
            )
    return found
