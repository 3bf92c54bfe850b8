"""The durable run store: run records, step checkpoints, events, leases and the response cache.

The engine writes through this class only, and only through the ``StorageAdapter``
protocol, so every adapter (memory, SQLite, files, a third party's) gets durable
runs for free. Three ideas carry the design:

- **What changed, not snapshots.** A run record plus one small record per finished
  step or map item; a checkpoint never rewrites the whole run state (the growth
  LangGraph users complain about).
- **Group commit.** ``record_step`` and ``record_event`` only queue operations; one
  flusher writes everything queued in one ``commit`` (see ``taskloom.sdk._runs.batch``), so
  500 map items finishing together cost one storage round trip, not 500.
- **Leases, not locks.** A run is advanced by one holder at a time; the lease has a
  TTL by the store's (injectable) clock and is renewed while the run goes, so a
  holder that died is taken over once its lease expires.
- **Fencing.** Acquiring a lease also rewrites the run's fence record; every write
  the holder then makes for the run (checkpoints, events, record, outcome) carries a
  version check of that fence in the same commit. A holder that stalled past its
  TTL and was taken over can never write again: its next write fails with
  ``LeaseLost``, and ``check_lease`` (called before every executor call) refuses
  once the lease may have expired and a renewal finds it taken.

The interface with the engine is ``notes/runstore_interface.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import attrs
import rfc8785

from taskloom.contracts import (
    MAX_VALUE_BYTES,
    Append,
    Check,
    CompletionRequest,
    CompletionResult,
    ConflictError,
    Delete,
    Event,
    LeaseLost,
    Op,
    Put,
    Record,
    RunHeld,
    RunNotFound,
    StorageAdapter,
    StorageError,
    StreamDropping,
    TaskloomError,
    UsageError,
    check_name,
    check_value,
)
from taskloom.contracts.serde import converter
from taskloom.sdk._pipeline.compact import pipeline_digest
from taskloom.sdk._runs.batch import GroupCommitWriter
from taskloom.sdk._runs.codec import decode, encode
from taskloom.sdk._runs.events import ENTRY_BYTES, EventLog
from taskloom.sdk._runs.history import DamagedRun, RunHistory
from taskloom.sdk._runs.lease import LeaseKeeper, check_ttl, extended, held_error
from taskloom.sdk._runs.records import (
    FINISHED_STATUSES,
    NS_CACHE,
    NS_CACHE_OWNERS,
    NS_FENCES,
    NS_LEASES,
    NS_RUNS,
    NS_RUNS_BY_TIME,
    NS_STEPS,
    NS_TOMBSTONES,
    CacheEntry,
    Fence,
    LeaseRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    Tombstone,
    events_stream,
    index_entry,
    index_key,
    step_key,
)

__all__ = [
    "EncodedStep",
    "LeaseKeeper",
    "RunStore",
    "cache_key",
    "is_cacheable",
    "pipeline_digest",
]

EncodedStep = tuple[str, str, int | None, bytes]
"""A checkpoint ready to queue: run id, step id, map item (or None), its encoded record."""

SCAN_PAGE = 1000
"""Records read per ``scan`` call when walking a run's steps."""

_ONE_SCAN_PER_RUN = 16
"""Up to this many runs, prune deletes each alone; beyond, in one pass per namespace."""

_LEASE_RACE_RETRIES = 8

MIN_PREFIX = 6
"""The fewest characters of a run id that ``resolve_run_id`` takes as a prefix."""

LEASE_MARGIN_S = 1.0
"""Before an executor call, a lease that expires within this (or a tenth of its TTL,
if less) is renewed first: past its expiry another process may have the run."""


class _Held:
    """A lease this store acquired: holder, TTL, the fence check, the known expiry."""

    __slots__ = ("check", "expires_at", "holder", "margin", "ttl")

    def __init__(self, holder: str, ttl: float, check: Check, expires_at: float) -> None:
        self.holder = holder
        self.ttl = ttl
        self.check = check
        self.expires_at = expires_at
        self.margin = min(LEASE_MARGIN_S, ttl / 10)


def cache_key(executor_id: str, request: CompletionRequest) -> str:
    """Digest of the executor id and the canonical request: equal requests share a reply.

    RFC 8785 canonical JSON makes the digest independent of key order and float
    spelling, so the key is stable across processes and taskloom versions that
    keep the request's fields.
    """
    body = {"executor": executor_id, "request": converter.unstructure(request)}
    try:
        canonical = rfc8785.dumps(body)
    except rfc8785.CanonicalizationError:
        # a number canonical JSON cannot carry exactly (a seed beyond 2**53, NaN):
        # key it by its text instead, so such a request still gets a stable key; the
        # marker keeps it from ever matching a request that holds those texts itself
        canonical = rfc8785.dumps({"numbers_as_text": True, **_numbers_as_text(body)})
    return hashlib.sha256(canonical).hexdigest()


def _numbers_as_text(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _numbers_as_text(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_numbers_as_text(v) for v in data]
    if isinstance(data, int | float) and not isinstance(data, bool):
        return repr(data)
    return data


def is_cacheable(request: CompletionRequest, *, nondeterministic: bool = False) -> bool:
    """Whether a reply to ``request`` may be cached.

    Only deterministic requests (temperature 0 or a seed) are, unless the pipeline
    opts in with ``cache_nondeterministic``: caching a sampled reply would silently
    turn a random choice into a fixed one.
    """
    return nondeterministic or request.deterministic


class RunStore:
    """Durable state of runs over any ``StorageAdapter``.

    The store does not own the adapter: ``aclose`` writes what is queued and stops
    the flusher but leaves the adapter open for whoever passed it in.
    """

    def __init__(self, storage: StorageAdapter, *, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock
        self._held: dict[str, _Held] = {}
        """Runs whose lease this store acquired (and has not released)."""
        self._lost: dict[str, LeaseLost] = {}
        """Runs whose lease was lost while held here: their writes are refused."""
        self._renewing: dict[str, asyncio.Future[LeaseRecord]] = {}
        self._adopted: set[str] = set()
        self._lost_watchers: dict[str, Callable[[LeaseLost], None]] = {}
        """Runs whose lease and fence a claim just wrote (``adopt_lease``)."""
        self._with_outcome: dict[str, tuple[Op, ...]] = {}
        """Operations to commit with a run's outcome (``with_outcome``)."""
        self._outcome_landed: set[str] = set()
        """Runs whose outcome committed with their ``with_outcome`` operations."""
        self._released: set[str] = set()
        """Runs whose lease was deleted in their outcome's commit (``with_outcome``)."""
        self._events = EventLog(storage, fence=self._fence_check)
        self._writer = GroupCommitWriter(
            storage,
            collect=self._events.collect,
            has_pending=self._events.has_pending,
            fenced=self._fenced,
            unfenced=self._unfenced,
        )
        self._history = RunHistory(storage, clock=clock, delete_runs=self._delete_runs)
        self._closed = False

    @property
    def storage(self) -> StorageAdapter:
        """The adapter this store writes to."""
        return self._storage

    @property
    def clock(self) -> Callable[[], float]:
        """The clock leases and retention are measured by."""
        return self._clock

    @property
    def commits(self) -> int:
        """How many batched commits the group-commit writer has made."""
        return self._writer.commits

    async def __aenter__(self) -> RunStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write everything queued, then refuse further use. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._writer.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("the run store is closed; create a new RunStore to use it")

    # --- run records --------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> None:
        """Store a new run; ``ConflictError`` if a run with that id exists.

        The run record and its time-index entry go in one commit. An id of a deleted
        run is refused: its event stream still holds the old run's events.
        """
        self._check_open()
        check_name(record.run_id, what="run id")
        if await self._storage.get(NS_TOMBSTONES, record.run_id) is not None:
            raise UsageError(
                f"run id {record.run_id!r} belonged to a deleted run whose event stream "
                "cannot be erased; use a new run id (uuid4().hex)"
            )
        value = check_value(encode(record), what=f"run record {record.run_id}")
        self._refuse_lost(record.run_id)
        ops: list[Op] = [
            Put(namespace=NS_RUNS, key=record.run_id, value=value, if_version=0),
            Put(
                namespace=NS_RUNS_BY_TIME,
                key=index_key(record.run_id, record.created_at),
                value=encode(index_entry(record)),
            ),
        ]
        check = self._fence_check(record.run_id)
        if check is not None:
            ops.append(check)
        try:
            await self._storage.commit(ops)
        except ConflictError:
            await self._raise_if_lost(record.run_id)
            raise
        self._events.new_run(record.run_id)

    async def load_run(self, run_id: str) -> RunRecord:
        """The run's record; ``RunNotFound`` if there is none, ``DecodeError`` naming it."""
        self._check_open()
        check_name(run_id, what="run id")
        stored = await self._storage.get(NS_RUNS, run_id)
        if stored is None:
            raise RunNotFound(
                f"no run {run_id!r} in this store; list runs with `taskloom runs` "
                "(it may have been deleted by retention)"
            )
        return decode(stored.value, RunRecord, where=f"{NS_RUNS}/{run_id}")

    async def resolve_run_id(self, text: str) -> str:
        """The id of the run ``text`` names: its whole id, or a unique prefix of at least
        ``MIN_PREFIX`` characters. ``RunNotFound`` if none matches, ``UsageError`` (listing
        some) if several do."""
        self._check_open()
        check_name(text, what="run id")
        if await self._storage.get(NS_RUNS, text) is not None:
            return text
        if len(text) >= MIN_PREFIX:
            matches = await self._storage.scan(NS_RUNS, prefix=text, limit=6)
            if len(matches) == 1:
                return matches[0].key
            if matches:
                shown = ", ".join(m.key for m in matches[:5])
                raise UsageError(
                    f"run id prefix {text!r} matches several runs ({shown}"
                    f"{', ...' if len(matches) > 5 else ''}); give more characters"
                )
        hint = "" if len(text) >= MIN_PREFIX else f" (a prefix needs {MIN_PREFIX}+ characters)"
        raise RunNotFound(
            f"no run {text!r} in this store{hint}; list runs with `taskloom runs` "
            "(it may have been deleted by retention)"
        )

    async def update_run(self, record: RunRecord) -> None:
        """Write the run's new status, timings, output or usage; durable on return.

        It goes through the group-commit queue behind every step and event queued
        before it, so once a run is marked finished its history is complete.
        """
        await self.queue_update_run(record)

    def queue_update_run(self, record: RunRecord) -> asyncio.Future[None]:
        """Queue ``update_run``'s write now and return the future of its commit: events
        the caller records before awaiting it go in the same commit (a run's start and
        its RunStarted event). A bad record raises here, before anything is queued."""
        self._check_open()
        check_name(record.run_id, what="run id")
        value = check_value(encode(record), what=f"run record {record.run_id}")
        self._refuse_lost(record.run_id)
        ops: list[Op] = [
            Put(namespace=NS_RUNS, key=record.run_id, value=value),
            Put(
                namespace=NS_RUNS_BY_TIME,
                key=index_key(record.run_id, record.created_at),
                value=encode(index_entry(record)),
            ),
        ]
        check = self._fence_check(record.run_id)
        if check is not None:
            ops.append(check)
        return self._writer.submit(ops, run=record.run_id)

    async def queue_finish(self, record: RunRecord, outcome: Event) -> asyncio.Future[None]:
        """Queue a finished run's record and its outcome event as one commit; return the
        future that resolves when it is durable (or holds why it failed).

        Both are checked before anything is queued (a record too large or not JSON
        raises here, and nothing of it is written). The outcome goes into the stream
        entry that also holds the run's still-queued events, as part of the record's
        own write: if that commit fails, neither lands and the outcome is not kept for
        a retry (the queued events go back on the queue). The write goes ahead whether
        or not anyone awaits the future; awaiting it is how a caller learns it landed.
        """
        self._check_open()
        run_id = record.run_id
        check_name(run_id, what="run id")
        value = check_value(encode(record), what=f"run record {run_id}")
        index_value = encode(index_entry(record))
        text = self._events.encode(outcome)
        self._refuse_lost(run_id)
        if self._events.queued_size(run_id) + len(text) > ENTRY_BYTES:
            await self._writer.flush()  # a large backlog goes in entries of its own first
            error = self._events.error_of(run_id)
            if error is not None:
                raise error
        append, first, texts = await self._events.take_last(run_id, text)
        ops: list[Op] = [
            Put(namespace=NS_RUNS, key=run_id, value=value),
            Put(
                namespace=NS_RUNS_BY_TIME,
                key=index_key(run_id, record.created_at),
                value=index_value,
            ),
            append,
        ]
        extra = self._with_outcome.pop(run_id, ())
        check = self._fence_check(run_id)
        if check is not None:
            ops += extra  # (unfenced, they could undo what another holder did: never then)
            ops.append(check)
        else:
            extra = ()
        try:
            write = self._writer.submit(ops, run=run_id)
        except BaseException:
            self._events.settle_last(run_id, first, texts, written=False)
            raise

        def settled(future: asyncio.Future[None]) -> None:
            landed = not future.cancelled() and future.exception() is None
            self._events.settle_last(run_id, first, texts, written=landed)
            if landed and extra:
                self._outcome_landed.add(run_id)
                if any(
                    isinstance(op, Delete) and op.namespace == NS_LEASES and op.key == run_id
                    for op in extra
                ):
                    self._released.add(run_id)

        write.add_done_callback(settled)
        return write

    def with_outcome(self, run_id: str, ops: Sequence[Put | Delete]) -> None:
        """Commit ``ops`` together with the run's outcome, if this process records one
        (``queue_finish``) while it holds the run's lease, instead of in transactions of
        their own afterwards: a run queue gives back what a claim took this way (the
        claim's slot, and the lease itself: ``Delete`` of ``leases``/run id, which the
        outcome's fence check makes safe; ``release_lease`` then has nothing left to do
        and renewals stop quietly). Only operations that cannot fail a check belong here
        (no ``if_version``): the outcome must never fail for them. ``outcome_landed``
        then says whether they were committed."""
        for op in ops:
            if not isinstance(op, Put | Delete):
                raise UsageError(
                    f"operations committed with a run's outcome are Put or Delete, got {op!r}"
                )
            if op.if_version is not None:
                raise UsageError("operations committed with a run's outcome take no if_version")
        self._with_outcome[run_id] = tuple(ops)

    def lease_released(self, run_id: str) -> bool:
        """Whether the run's lease was given back in its outcome's commit (``with_outcome``)."""
        return run_id in self._released

    def outcome_landed(self, run_id: str) -> bool:
        """Whether the run's outcome committed with its ``with_outcome`` operations (asked
        once: the answer is forgotten)."""
        if run_id in self._outcome_landed:
            self._outcome_landed.discard(run_id)
            return True
        return False

    # --- checkpoints ----------------------------------------------------------------

    async def record_step(self, record: StepRecord) -> None:
        """Checkpoint one finished step or map item; returns when it is durable.

        Concurrent calls share one commit. Size and key are checked here, before
        queueing, so one bad record fails its own caller and not a whole batch.
        """
        await self.queue_step(record)

    def queue_step(self, record: StepRecord) -> asyncio.Future[None]:
        """Queue one checkpoint now; the future resolves when it is durable.

        Writes are committed in the order they were queued (a later batch is never
        committed before an earlier one), so once a checkpoint is durable, every
        checkpoint queued before it is too. A bad record (too large, a bad key)
        raises here, before anything is queued. Awaiting the future is optional for
        durability -- the write is queued either way -- but it is how a failed
        commit reaches the caller: the future then holds the storage error. After a
        checkpoint of this run failed, this one fails too (see ``mend_checkpoints``).
        """
        if self._closed:
            self._check_open()
        check_name(step_key(record.run_id, record.step_id, record.item), what="step key")
        return self.queue_encoded_step((record.run_id, record.step_id, record.item, encode(record)))

    def queue_encoded_step(self, step: EncodedStep) -> asyncio.Future[None]:
        """``queue_step`` of a checkpoint already encoded (``codec.encode_step``, or
        ``encode`` of its record): the run id, step id, map item and the bytes."""
        if self._closed:
            self._check_open()
        run_id, step_id, item, value = step
        key = check_name(step_key(run_id, step_id, item), what="step key")
        if type(value) is not bytes or len(value) > MAX_VALUE_BYTES:  # (its message costs)
            check_value(value, what=f"checkpoint of step {step_id!r} item {item}")
        held = self._held.get(run_id)
        put = Put(namespace=NS_STEPS, key=key, value=value)
        return self._writer.submit([put] if held is None else [put, held.check], chain=run_id)

    def mend_checkpoints(self, run_id: str) -> None:
        """Let the run's checkpoints through again after an earlier failure.

        Once a checkpoint of a run fails, later checkpoints of that run fail too
        rather than being committed (so none is ever durable after a lost checkpoint
        of a step it needs). The engine mends a run when it starts or resumes it,
        and forgets the failure when the run's drive ends.
        """
        self._writer.mend(run_id)

    def stop_checkpoints(self, run_id: str, error: TaskloomError) -> None:
        """Refuse the run's queued and later checkpoints with ``error`` (its lease was lost:
        another process runs it now) until the run starts again here."""
        self._writer.break_chain(run_id, error)

    async def finished_steps(self, run_id: str) -> dict[tuple[str, int | None], StepRecord]:
        """Every checkpoint of the run, by (step id, map item or None).

        A checkpoint that cannot be decoded raises ``DecodeError`` naming it: a
        resume must never take a damaged record for "not done yet" and pay again.
        """
        self._check_open()
        check_name(run_id, what="run id")
        done: dict[tuple[str, int | None], StepRecord] = {}
        async for stored in self._scan(NS_STEPS, f"{run_id}/"):
            step = decode(stored.value, StepRecord, where=f"{NS_STEPS}/{stored.key}")
            if step.run_id != run_id:
                raise StorageError(
                    f"checkpoint {NS_STEPS}/{stored.key} names run {step.run_id!r}, not "
                    f"{run_id!r}; the store is inconsistent: delete the run and start again"
                )
            done[(step.step_id, step.item)] = step
        return done

    async def _scan(self, namespace: str, prefix: str) -> AsyncIterator[Record]:
        start_after: str | None = None
        while True:
            page = await self._storage.scan(
                namespace, prefix=prefix, start_after=start_after, limit=SCAN_PAGE
            )
            for stored in page:
                yield stored
            if len(page) < SCAN_PAGE:
                return
            start_after = page[-1].key

    # --- events -------------------------------------------------------------------

    def record_event(self, event: Event) -> None:
        """Queue an event for the run's stream; the engine does not wait for it.

        The events of a run recorded between two commits go into the next commit as
        one stream entry (an :class:`EventBatch`), beside the checkpoints of that
        batch. If the commit fails they are retried, and the failure is raised by
        ``flush`` (and ``aclose``), never dropped silently.
        """
        if self._closed:
            self._check_open()
        if self._lost and event.run_id in self._lost:
            return  # the run is another process's now: nothing of this one's may land
        if self._events.add(event) or not self._writer.flushing_here():
            self._writer.notify()  # else a batch of the run's events is already due

    async def flush(self) -> None:
        """Wait until every queued checkpoint and event is durable; raise what failed."""
        self._check_open()
        await self._writer.flush()
        error = self._events.error_of()
        if error is not None:
            raise error

    async def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, Event]]:
        """The run's events with their numbers (gapless from 1), oldest first.

        Events still queued in this process are flushed first so the history is
        complete. A deleted run (tombstoned) has no events, even though its stream
        entries stay in an append-only store.
        """
        self._check_open()
        check_name(run_id, what="run id")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise UsageError(f"after must be an int >= 0, got {after!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise UsageError(f"limit must be an int or None, got {limit!r}")
        await self._writer.flush()
        error = self._events.error_of(run_id)
        if error is not None:
            raise error  # this run's queued events cannot be written: its history is partial
        if await self._storage.get(NS_TOMBSTONES, run_id) is not None:
            return []
        if limit is not None and limit <= 0:
            return []
        return await self._events.read(run_id, after=after, limit=limit)

    # --- leases ---------------------------------------------------------------------

    async def acquire_lease(self, run_id: str, holder: str, *, ttl_s: float = 30.0) -> None:
        """Become the run's only holder for ``ttl_s``; ``RunHeld`` if another live holder is.

        A lease whose holder is ``holder`` already is refreshed; an expired one is
        taken over. The lease and the run's fence are written in one commit with
        compare-and-set on both versions, so of two processes racing for a free run
        exactly one wins, and the loser's (or a former holder's) writes of the run
        fail from then on (``LeaseLost``).
        """
        self._check_open()
        check_ttl(ttl_s)
        check_name(run_id, what="run id")
        if self._adopted and run_id in self._adopted:
            self._adopted.discard(run_id)
            held = self._held.get(run_id)
            if held is not None and held.holder == holder and self.check_lease(run_id):
                return  # just claimed with its fence (``adopt_lease``): nothing to write
        self._events.forget(run_id)  # another process may have written its events meanwhile
        for _ in range(_LEASE_RACE_RETRIES):
            stored = await self._storage.get(NS_LEASES, run_id)
            fence = await self._storage.get(NS_FENCES, run_id)
            now = self._clock()
            version = 0
            if stored is not None:
                lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
                if lease.holder != holder and lease.expires_at > now:
                    raise held_error(run_id, lease, now=now)
                version = stored.version
            new = LeaseRecord(run_id=run_id, holder=holder, acquired_at=now, expires_at=now + ttl_s)
            mark = Fence(run_id=run_id, holder=holder, acquired_at=now)
            try:
                result = await self._storage.commit(
                    [
                        Put(namespace=NS_LEASES, key=run_id, value=encode(new), if_version=version),
                        Put(
                            namespace=NS_FENCES,
                            key=run_id,
                            value=encode(mark),
                            if_version=0 if fence is None else fence.version,
                        ),
                    ]
                )
            except ConflictError:
                continue  # someone wrote the lease between our read and write: look again
            self._hold(run_id, holder, ttl_s, result.records[1].version, now + ttl_s)
            return
        raise RunHeld(
            f"run {run_id!r}: the lease kept changing while acquiring it; another process "
            "is competing for this run: try again later",
        )

    def adopt_lease(
        self, run_id: str, holder: str, *, ttl_s: float, fence: int, expires_at: float
    ) -> None:
        """Hold a lease that ``holder`` wrote together with the run's fence (at version
        ``fence``) in a commit of its own -- a run queue's claim -- so the next
        ``acquire_lease`` by ``holder`` writes nothing and fencing starts at once."""
        self._check_open()
        check_ttl(ttl_s)
        self._events.forget(run_id)  # another process may have written its events meanwhile
        self._hold(run_id, holder, ttl_s, fence, expires_at)
        self._adopted.add(run_id)

    def never_started(self, run_id: str) -> None:
        """The caller holds the run's lease and read its record saying it never started:
        its event stream is empty, so its first event is number 1 (no read to learn it)."""
        if run_id in self._held:
            self._events.new_run(run_id)

    def _hold(self, run_id: str, holder: str, ttl_s: float, fence: int, expires: float) -> None:
        check = Check(namespace=NS_FENCES, key=run_id, version=fence)
        self._held[run_id] = _Held(holder, ttl_s, check, expires)
        self._lost.pop(run_id, None)
        self._writer.mend(run_id)

    async def renew_lease(self, run_id: str, holder: str, *, ttl_s: float = 30.0) -> LeaseRecord:
        """Extend ``holder``'s lease by ``ttl_s`` from now and return it; ``RunHeld`` if it
        was lost (``LeaseLost`` when this store held it: its writes of the run fail from
        then on). A returned lease with ``cancel_requested_at`` set means: stop the run
        (``request_cancel``).

        Renewals of one run from this store are coalesced: callers that ask while one
        is in flight wait for it (so a stalled process waking up with many calls due
        reads the lease once, not once per call).
        """
        self._check_open()
        check_ttl(ttl_s)
        check_name(run_id, what="run id")
        lost = self._lost.get(run_id)
        if lost is not None:
            raise lost
        if run_id in self._released:
            raise RunHeld(f"run {run_id!r} ended: its lease was given back with its outcome")
        running = self._renewing.get(run_id)
        if running is not None:
            return await asyncio.shield(running)
        future = self._renewing[run_id] = asyncio.get_running_loop().create_future()
        try:
            renewed = await self._renew(run_id, holder, ttl_s)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # seen: each waiter has it raised
            else:
                future.cancel()
            raise
        else:
            future.set_result(renewed)
        finally:
            del self._renewing[run_id]
        return renewed

    async def _renew(self, run_id: str, holder: str, ttl_s: float) -> LeaseRecord:
        stored = await self._storage.get(NS_LEASES, run_id)
        if stored is None:
            raise self._mark_lost(
                run_id,
                holder,
                f"run {run_id!r}: the lease of {holder!r} is gone (released, revoked or the "
                "run was deleted); stop working on the run",
            )
        lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
        if lease.holder != holder:
            raise self._mark_lost(run_id, holder, str(held_error(run_id, lease)), lease)
        now = self._clock()
        new = extended(lease, expires_at=now + ttl_s)
        try:
            await self._storage.put(NS_LEASES, run_id, encode(new), if_version=stored.version)
        except ConflictError:
            current = await self._storage.get(NS_LEASES, run_id)
            if current is None:
                raise self._mark_lost(
                    run_id, holder, f"run {run_id!r}: the lease of {holder!r} is gone"
                ) from None
            taken = decode(current.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
            if taken.holder == holder:  # a cancel request landed between our read and write
                return await self._renew(run_id, holder, ttl_s)
            raise self._mark_lost(run_id, holder, str(held_error(run_id, taken)), taken) from None
        held = self._held.get(run_id)
        if held is not None and held.holder == holder:
            held.expires_at = now + ttl_s
        return new

    def _mark_lost(
        self, run_id: str, holder: str, message: str, lease: LeaseRecord | None = None
    ) -> RunHeld:
        """The error for a lease ``holder`` no longer has; if this store held it, the run's
        writes are refused from now on and its queued events dropped."""
        held = self._held.get(run_id)
        if held is None or held.holder != holder or run_id in self._released:
            # (released with its outcome while this renewal was under way: not lost)
            if lease is None:
                return RunHeld(message)
            return held_error(run_id, lease)
        error = LeaseLost(
            f"{message} (this process lost the run's lease: another process runs it now, "
            "so nothing more of this one's is written)",
            holder=lease.holder if lease is not None else "",
            expires_at=lease.expires_at if lease is not None else 0.0,
        )
        self._lose(run_id, error)
        return error

    def _lose(self, run_id: str, error: LeaseLost, *, notify: bool = True) -> None:
        self._held.pop(run_id, None)
        self._lost[run_id] = error
        self._events.drop(run_id)
        self._writer.break_chain(run_id, error)
        watcher = self._lost_watchers.pop(run_id, None)
        if watcher is not None and notify:
            watcher(error)

    def watch_lost(self, run_id: str, callback: Callable[[LeaseLost], None]) -> None:
        """Call ``callback`` once if the run's lease is found lost here -- by a renewal or
        by a write that failed its fence check -- so the run stops at once, calls in
        flight included, not at its next renewal."""
        self._lost_watchers[run_id] = callback

    def unwatch_lost(self, run_id: str) -> None:
        """Stop watching the run (its drive ended)."""
        self._lost_watchers.pop(run_id, None)

    def check_lease(self, run_id: str) -> bool:
        """Whether a write or call for the run may go ahead without asking storage first.

        Raises ``LeaseLost`` if the run's lease was lost here. True when the run holds
        no lease here (nothing to fence) or its lease is known to be ours for longer
        than the margin; False when it must be renewed first (``ensure_lease``).
        """
        if self._lost:
            lost = self._lost.get(run_id)
            if lost is not None:
                raise lost
        held = self._held.get(run_id)
        return held is None or self._clock() < held.expires_at - held.margin

    async def ensure_lease(self, run_id: str) -> None:
        """Before starting an executor call: make sure this process still holds the run.

        If the lease may have expired (this process stalled), it is renewed first; a
        renewal that finds it taken raises ``LeaseLost`` and no call is started.
        """
        if self.check_lease(run_id):
            return
        held = self._held.get(run_id)
        if held is None:
            return
        await self.renew_lease(run_id, held.holder, ttl_s=held.ttl)

    def abandon_run(self, run_id: str) -> None:
        """Stop writing the run from here (a worker gives it back): its queued writes are
        dropped and later ones refused with ``LeaseLost``, as if the lease were lost."""
        if run_id in self._held or run_id not in self._lost:
            self._lose(
                run_id,
                LeaseLost(
                    f"run {run_id!r} was given back to its queue by this process; another "
                    "worker resumes it"
                ),
                notify=False,  # the giver stops the drive itself, which releases the lease
            )

    def lost_lease(self, run_id: str) -> LeaseLost | None:
        """Why this store may no longer write the run (its lease was lost here), or None."""
        return self._lost.get(run_id)

    def _fence_check(self, run_id: str) -> Check | None:
        held = self._held.get(run_id)
        return held.check if held is not None else None

    def _refuse_lost(self, run_id: str) -> None:
        if self._lost:
            lost = self._lost.get(run_id)
            if lost is not None:
                raise lost

    async def _raise_if_lost(self, run_id: str) -> None:
        """After a conflict on a direct commit: raise ``LeaseLost`` if the fence moved."""
        lost = await self._fenced([check] if (check := self._fence_check(run_id)) else [])
        if run_id in lost:
            raise lost[run_id]

    async def _fenced(self, ops: Sequence[Op]) -> dict[str, TaskloomError]:
        """The runs of ``ops`` whose fence moved (their lease is another's now)."""
        lost: dict[str, TaskloomError] = {}
        seen: set[str] = set()
        for op in ops:
            if type(op) is not Check or op.namespace != NS_FENCES or op.key in seen:
                continue
            seen.add(op.key)
            current = await self._storage.get(NS_FENCES, op.key)
            if current is not None and current.version == op.version:
                continue
            holder = ""
            if current is not None:
                holder = decode(current.value, Fence, where=f"{NS_FENCES}/{op.key}").holder
            error = LeaseLost(
                f"run {op.key!r} was taken over by {holder or 'another process'}: this "
                "process lost its lease, and its writes of the run are refused",
                holder=holder,
            )
            self._lose(op.key, error)
            lost[op.key] = error
        return lost

    @staticmethod
    def _unfenced(ops: Sequence[Op], lost: frozenset[str]) -> list[Op]:
        streams = {events_stream(run_id) for run_id in lost}
        kept: list[Op] = []
        for op in ops:
            kind = type(op)
            if kind is Append and op.stream in streams:  # type: ignore[union-attr]
                continue
            if kind is Check and op.namespace == NS_FENCES and op.key in lost:  # type: ignore[union-attr]
                continue
            kept.append(op)
        return kept

    def end_run(self, run_id: str) -> None:
        """The run's drive in this process ended: release what was kept of it.

        A long-lived process (a worker) runs millions of runs; nothing per run may
        stay behind once it ends here.
        """
        self._held.pop(run_id, None)
        self._lost.pop(run_id, None)
        self._adopted.discard(run_id)
        self._lost_watchers.pop(run_id, None)
        self._with_outcome.pop(run_id, None)
        self._released.discard(run_id)
        self._writer.mend(run_id)
        self._events.release(run_id)

    async def release_lease(self, run_id: str, holder: str) -> None:
        """Give the run up; a lease held by someone else is left alone."""
        self._check_open()
        check_name(run_id, what="run id")
        held = self._held.get(run_id)
        if held is not None and held.holder == holder:
            del self._held[run_id]
            if run_id in self._released:
                self._released.discard(run_id)
                return  # deleted in the commit of its outcome
        stored = await self._storage.get(NS_LEASES, run_id)
        if stored is None:
            return
        lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
        if lease.holder != holder:
            return
        try:
            await self._storage.delete(NS_LEASES, run_id, if_version=stored.version)
        except ConflictError:
            return  # taken over meanwhile: it is no longer ours to release

    async def revoke_lease(self, run_id: str, *, holder: str | None = None) -> LeaseRecord | None:
        """Take the run's lease away (only from ``holder``, if given); return the lease
        that was there, or None if there was none (or another holder has it).

        Its holder finds the lease gone at its next renewal and stops (``RunHeld``)
        without recording an outcome: this is a takeover. To stop a run so that it
        records itself cancelled, use ``request_cancel``.
        """
        self._check_open()
        check_name(run_id, what="run id")
        stored = await self._storage.get(NS_LEASES, run_id)
        if stored is None:
            return None
        lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
        if holder is not None and lease.holder != holder:
            return None
        try:
            await self._storage.delete(NS_LEASES, run_id, if_version=stored.version)
        except ConflictError:
            # renewed meanwhile: take the new one
            return await self.revoke_lease(run_id, holder=holder)
        return lease

    async def request_cancel(self, run_id: str) -> LeaseRecord | None:
        """Ask the run's live holder to stop; return its lease, or None if none is live.

        The request is a mark on the lease record (``cancel_requested_at``, written
        with a compare-and-set; the run's fence is left alone), so it reaches the
        holder with its next renewal -- within a third of its lease TTL -- wherever
        that process runs. The holder then starts no new step, cancels those in
        flight, records the run cancelled (one outcome event) and releases the lease.
        ``taskloom.sdk._runs.cancel`` builds the whole cancel on this, including runs
        nobody holds.
        """
        self._check_open()
        check_name(run_id, what="run id")
        for _ in range(_LEASE_RACE_RETRIES):
            stored = await self._storage.get(NS_LEASES, run_id)
            if stored is None:
                return None
            lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
            now = self._clock()
            if lease.expires_at <= now:
                return None
            if lease.cancel_requested_at is not None:
                return lease
            marked = attrs.evolve(lease, cancel_requested_at=now)
            try:
                await self._storage.put(
                    NS_LEASES, run_id, encode(marked), if_version=stored.version
                )
            except ConflictError:
                continue  # renewed or taken meanwhile: mark the new one
            return marked
        raise RunHeld(
            f"run {run_id!r}: the lease kept changing while asking its holder to stop; try again",
        )

    async def runs_held_by(self, holder: str) -> list[str]:
        """Ids of the unfinished runs whose lease (live or expired) names ``holder``."""
        self._check_open()
        found: list[str] = []
        start_after: str | None = None
        while True:
            page = await self._storage.scan(NS_LEASES, start_after=start_after, limit=SCAN_PAGE)
            for stored in page:
                lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{stored.key}")
                if lease.holder != holder:
                    continue
                run = await self._storage.get(NS_RUNS, stored.key)
                if run is None:
                    continue
                status = decode(run.value, RunRecord, where=f"{NS_RUNS}/{stored.key}").status
                if status not in FINISHED_STATUSES:
                    found.append(stored.key)
            if len(page) < SCAN_PAGE:
                return found
            start_after = page[-1].key

    async def lease(self, run_id: str) -> LeaseRecord | None:
        """The run's current lease, live or expired, or None."""
        self._check_open()
        stored = await self._storage.get(NS_LEASES, run_id)
        if stored is None:
            return None
        return decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")

    # --- response cache ---------------------------------------------------------------

    async def cache_get(self, key: str) -> CompletionResult | None:
        """A cached reply, or None when absent or expired (the storage TTL)."""
        self._check_open()
        stored = await self._storage.get(NS_CACHE, check_name(key, what="cache key"))
        if stored is None:
            return None
        return decode(stored.value, CacheEntry, where=f"{NS_CACHE}/{key}").result

    async def cache_put(
        self,
        key: str,
        result: CompletionResult,
        *,
        ttl_s: float | None,
        run_id: str | None = None,
    ) -> None:
        """Cache ``result`` under ``key`` for ``ttl_s`` seconds (None: until deleted).

        With ``run_id`` the entry belongs to that run: deleting or pruning the run
        removes it (an entry another run wrote again later goes too; that run
        merely misses the cache next time).
        """
        self._check_open()
        if ttl_s is not None:
            check_ttl(ttl_s)
        entry = CacheEntry(result=result, stored_at=self._clock())
        ops = [
            Put(
                namespace=NS_CACHE,
                key=check_name(key, what="cache key"),
                value=encode(entry),
                ttl=ttl_s,
            )
        ]
        if run_id is not None:
            owner = check_name(f"{run_id}/{key}", what="cache owner key")
            ops.append(Put(namespace=NS_CACHE_OWNERS, key=owner, value=b"", ttl=ttl_s))
        await self._storage.commit(ops)

    # --- history and retention ------------------------------------------------------

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs newest first, filtered by status, pipeline name and creation time.

        The time index holds status and pipeline name, so a limited listing reads
        only the run records it returns.
        """
        self._check_open()
        return await self._history.list_runs(
            status=status, pipeline=pipeline, since=since, until=until, limit=limit
        )

    async def list_entries(
        self,
        *,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord | DamagedRun]:
        """Like ``list_runs``, but a run whose record does not decode is a ``DamagedRun``.

        ``list_runs`` raises for such a run; this lets a listing go on and name it.
        """
        self._check_open()
        return await self._history.entries(
            status=status, pipeline=pipeline, since=since, until=until, limit=limit
        )

    async def delete_run(self, run_id: str) -> bool:
        """Delete everything of the run; True if anything of it existed.

        That is its record, index entry, lease, checkpoints, the cache entries it
        wrote and, when the storage can drop streams (``StreamDropping``), its
        event stream. A store that cannot keeps a tombstone instead, which hides
        the stream from ``events`` and keeps the id from being reused. A run
        whose lease is live is refused with ``RunHeld``.
        """
        self._check_open()
        check_name(run_id, what="run id")
        await self._writer.flush()
        existed = await self._remove_record(run_id)
        return await self.finish_delete(run_id) or existed

    async def _remove_record(self, run_id: str) -> bool:
        """Delete the run's record, index entry, lease and fence and write its tombstone,
        in one commit; ``RunHeld`` if its lease is live. True if the run existed."""
        lease_stored = await self._storage.get(NS_LEASES, run_id)
        if lease_stored is not None:
            lease = decode(lease_stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
            now = self._clock()
            if lease.expires_at > now:
                raise held_error(run_id, lease, now=now)
        stored = await self._storage.get(NS_RUNS, run_id)
        existed = stored is not None
        ops: list[Put | Delete] = []
        if stored is not None:
            ops.append(Delete(namespace=NS_RUNS, key=run_id, if_version=stored.version))
        # Without a record (or with one that does not decode) the index is searched.
        index = await self._history.index_key_of(run_id, stored.value if stored else b"")
        if index is not None:
            existed = True
            ops.append(Delete(namespace=NS_RUNS_BY_TIME, key=index))
        tomb = Tombstone(run_id=run_id, deleted_at=self._clock())
        ops.append(Put(namespace=NS_TOMBSTONES, key=run_id, value=encode(tomb)))
        if lease_stored is not None:
            ops.append(Delete(namespace=NS_LEASES, key=run_id))
        if await self._storage.get(NS_FENCES, run_id) is not None:
            ops.append(Delete(namespace=NS_FENCES, key=run_id))
        # The record goes first and atomically with the tombstone: if the process dies
        # while the rest is being deleted, delete_run or prune finishes the job.
        await self._storage.commit(ops)
        return existed

    async def _delete_runs(self, run_ids: list[str]) -> int:
        """Delete many runs (``prune``); one whose lease is live is skipped. How many existed.

        Beyond a few runs, their checkpoints and cache entries are found in one pass
        over each namespace rather than one scan per run: on the file store a scan
        lists the whole namespace, so per-run scans made pruning quadratic.
        """
        if len(run_ids) <= _ONE_SCAN_PER_RUN:
            deleted = 0
            for run_id in run_ids:
                try:
                    deleted += bool(await self.delete_run(run_id))
                except RunHeld:
                    continue  # a live holder is working on it: never pull a run from under it
            return deleted
        await self._writer.flush()
        tombstoned: set[str] = set()
        deleted = 0
        for run_id in run_ids:
            try:
                deleted += bool(await self._remove_record(run_id))
            except RunHeld:
                continue
            tombstoned.add(run_id)
        ops: list[Put | Delete] = []
        async for key in self._keys_under(NS_STEPS, ""):
            if key.partition("/")[0] in tombstoned:
                ops.append(Delete(namespace=NS_STEPS, key=key))
        async for owner in self._keys_under(NS_CACHE_OWNERS, ""):
            run_id, _, cache = owner.partition("/")
            if run_id in tombstoned:
                ops.append(Delete(namespace=NS_CACHE, key=cache))
                ops.append(Delete(namespace=NS_CACHE_OWNERS, key=owner))
        for start in range(0, len(ops), SCAN_PAGE):
            await self._storage.commit(ops[start : start + SCAN_PAGE])
        if isinstance(self._storage, StreamDropping):
            for run_id in sorted(tombstoned):
                self._events.forget(run_id)
                await self._storage.drop_stream(events_stream(run_id))
                await self._storage.delete(NS_TOMBSTONES, run_id)
        return deleted

    async def finish_delete(self, run_id: str) -> bool:
        """Delete what a run left besides its record (checkpoints, cache entries, events).

        ``delete_run`` calls it after removing the record; ``prune`` and ``taskloom
        doctor --repair`` call it for a deletion a crash interrupted. True if any existed.
        Checkpoints and cache entries go in as few commits as pages of them are read.
        """
        prefix = f"{run_id}/"
        ops: list[Put | Delete] = []
        async for stored_step in self._keys_under(NS_STEPS, prefix):
            ops.append(Delete(namespace=NS_STEPS, key=stored_step))
        existed = bool(ops)
        async for owner in self._keys_under(NS_CACHE_OWNERS, prefix):
            ops.append(Delete(namespace=NS_CACHE, key=owner[len(prefix) :]))
            ops.append(Delete(namespace=NS_CACHE_OWNERS, key=owner))
        for start in range(0, len(ops), SCAN_PAGE):
            await self._storage.commit(ops[start : start + SCAN_PAGE])
        if isinstance(self._storage, StreamDropping):
            self._events.forget(run_id)
            if await self._storage.drop_stream(events_stream(run_id)):
                existed = True
            await self._storage.delete(NS_TOMBSTONES, run_id)
        return existed

    async def _keys_under(self, namespace: str, prefix: str) -> AsyncIterator[str]:
        """Every key of ``namespace`` starting with ``prefix``, page by page."""
        after: str | None = None
        while True:
            page = await self._storage.scan(
                namespace, prefix=prefix, start_after=after, limit=SCAN_PAGE
            )
            for stored in page:
                yield stored.key
            if len(page) < SCAN_PAGE:
                return
            after = page[-1].key

    async def _finish_interrupted_deletes(self) -> None:
        """Finish every deletion a crash interrupted (only stores that drop streams keep none)."""
        if not isinstance(self._storage, StreamDropping):
            return
        while True:
            page = await self._storage.scan(NS_TOMBSTONES, limit=SCAN_PAGE)
            if not page:
                return
            for tomb in page:
                await self.finish_delete(tomb.key)

    async def prune(
        self, *, older_than_s: float | None = None, keep_last: int | None = None
    ) -> int:
        """Apply a retention policy; return how many runs were deleted.

        A run is deleted when it was created more than ``older_than_s`` ago, or when
        it is not among the ``keep_last`` newest finished runs: each limit given
        bounds the store. Runs still pending or running are kept unless they are
        older than ``older_than_s`` with no live lease (a crashed run nobody resumed);
        ``keep_last`` never removes them. Runs with a live lease are never deleted.
        """
        self._check_open()
        if older_than_s is None and keep_last is None:
            raise UsageError("prune needs older_than_s, keep_last or both")
        if older_than_s is not None and (
            isinstance(older_than_s, bool)
            or not isinstance(older_than_s, int | float)
            or older_than_s < 0
        ):
            raise UsageError(f"older_than_s must be a number >= 0, got {older_than_s!r}")
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
        ):
            raise UsageError(f"keep_last must be an int >= 0, got {keep_last!r}")
        deleted = await self._history.prune(older_than_s=older_than_s, keep_last=keep_last)
        await self._finish_interrupted_deletes()
        return deleted
