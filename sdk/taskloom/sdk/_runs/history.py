"""Run history: listing by status, pipeline and time, and retention.

Listing walks the ``runs_by_time`` index, whose keys sort newest first (inverted
microseconds) and whose entries carry status and pipeline name. A listing with a
limit therefore reads index pages until it has enough matches and loads only the
run records it returns, however many runs the store holds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from taskloom.contracts import DecodeError, Record, StorageAdapter, UsageError
from taskloom.sdk._runs.codec import decode
from taskloom.sdk._runs.records import (
    FINISHED_STATUSES,
    NS_RUNS,
    NS_RUNS_BY_TIME,
    RUN_STATUSES,
    RunIndexEntry,
    RunRecord,
    RunStatus,
    index_key,
    inverted_time,
)

INDEX_PAGE = 500
"""Index entries read per ``scan`` call."""


@attrs.frozen(kw_only=True)
class DamagedRun:
    """A run whose stored record (or index entry) does not decode: its id and why.

    ``taskloom runs`` lists it as damaged instead of failing for the whole store;
    ``RunStore.delete_run`` removes it.
    """

    run_id: str
    error: DecodeError
    index_key: str | None = None
    """Its key in the run index (where a listing of it stands), when it was listed."""


class RunHistory:
    """Listing and retention over the run index; deletion is delegated to the run store."""

    def __init__(
        self,
        storage: StorageAdapter,
        *,
        clock: Callable[[], float],
        delete_runs: Callable[[list[str]], Awaitable[int]],
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._delete_runs = delete_runs

    async def _index(self, start_after: str | None = None) -> AsyncIterator[Record]:
        while True:
            page = await self._storage.scan(
                NS_RUNS_BY_TIME, start_after=start_after, limit=INDEX_PAGE
            )
            for stored in page:
                yield stored
            if len(page) < INDEX_PAGE:
                return
            start_after = page[-1].key

    async def list_runs(
        self,
        *,
        status: RunStatus | None,
        pipeline: str | None,
        since: float | None,
        until: float | None,
        limit: int | None,
    ) -> list[RunRecord]:
        """Matching runs, newest first; see ``RunStore.list_runs``.

        A run whose record (or index entry) does not decode raises its DecodeError.
        """
        found = await self.entries(
            status=status, pipeline=pipeline, since=since, until=until, limit=limit
        )
        runs: list[RunRecord] = []
        for item in found:
            if isinstance(item, DamagedRun):
                raise item.error
            runs.append(item)
        return runs

    async def entries(
        self,
        *,
        status: RunStatus | None,
        pipeline: str | None,
        since: float | None,
        until: float | None,
        limit: int | None,
    ) -> list[RunRecord | DamagedRun]:
        """Like ``list_runs``, with runs that do not decode as ``DamagedRun`` in their place.

        A damaged index entry cannot say its status or pipeline, so it is listed
        only when neither filter is given.
        """
        if status is not None and status not in RUN_STATUSES:
            raise UsageError(f"status must be one of {list(RUN_STATUSES)}, got {status!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise UsageError(f"limit must be an int or None, got {limit!r}")
        if limit is not None and limit <= 0:
            return []
        # Keys of runs created after ``until`` sort before this one (newer is smaller).
        start_after = f"{inverted_time(until):017d}" if until is not None else None
        oldest = inverted_time(since) if since is not None else None
        found: list[RunRecord | DamagedRun] = []
        async for stored in self._index(start_after):
            inverted, _, run_id = stored.key.partition("/")
            if oldest is not None and int(inverted) > oldest:
                break  # everything from here on was created before ``since``
            try:
                entry = decode(stored.value, RunIndexEntry, where=f"{NS_RUNS_BY_TIME}/{stored.key}")
            except DecodeError as exc:
                if status is None and pipeline is None:
                    found.append(DamagedRun(run_id=run_id, error=exc, index_key=stored.key))
            else:
                if status is not None and entry.status != status:
                    continue
                if pipeline is not None and entry.pipeline_name != pipeline:
                    continue
                record = await self._storage.get(NS_RUNS, run_id)
                if record is None:
                    continue  # deleted between the index read and this one
                try:
                    found.append(decode(record.value, RunRecord, where=f"{NS_RUNS}/{run_id}"))
                except DecodeError as exc:
                    found.append(DamagedRun(run_id=run_id, error=exc, index_key=stored.key))
            if limit is not None and len(found) >= limit:
                break
        return found

    async def index_key_of(self, run_id: str, stored_run: bytes) -> str | None:
        """The index key of a run, even when its record no longer decodes.

        Deleting a damaged run must still work, so this falls back to the raw
        ``created_at`` and, failing that, to a search of the index.
        """
        try:
            return index_key(
                run_id, decode(stored_run, RunRecord, where=f"runs/{run_id}").created_at
            )
        except DecodeError:
            pass
        try:
            created = json.loads(stored_run).get("created_at")
        except (ValueError, UnicodeDecodeError, AttributeError):
            created = None
        if isinstance(created, int | float) and not isinstance(created, bool):
            key = index_key(run_id, float(created))
            if await self._storage.get(NS_RUNS_BY_TIME, key) is not None:
                return key
        suffix = f"/{run_id}"
        async for stored in self._index():
            if stored.key.endswith(suffix):
                return stored.key
        return None

    async def prune(self, *, older_than_s: float | None, keep_last: int | None) -> int:
        """Delete runs outside the retention policy; see ``RunStore.prune``."""
        cutoff = self._clock() - older_than_s if older_than_s is not None else None
        finished_seen = 0
        victims: list[str] = []
        async for stored in self._index():
            try:
                entry = decode(stored.value, RunIndexEntry, where=f"{NS_RUNS_BY_TIME}/{stored.key}")
            except DecodeError:
                continue  # its age is unknown: kept, and listed as damaged by ``runs``
            too_old = cutoff is not None and entry.created_at < cutoff
            if entry.status in FINISHED_STATUSES:
                finished_seen += 1
                beyond = keep_last is not None and finished_seen > keep_last
                if too_old or beyond:
                    victims.append(entry.run_id)
            elif too_old:
                victims.append(entry.run_id)
        # A run whose lease is live is skipped: never pull a run from under its holder.
        return await self._delete_runs(victims)
