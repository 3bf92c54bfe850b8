"""Claiming queued runs and runs whose lease expired; giving them back.

A claim is one atomic commit: the queue entry is deleted at the version read, the
run's lease is written with ``if_version=0`` (nobody holds it), and -- for a queue
with limits -- one of its concurrency slots is taken and its pace record advanced,
each with a version check. Adapters that implement ``ClaimingStorage`` do the
choosing natively (``FOR UPDATE SKIP LOCKED``); every other adapter goes through
``claim_by_cas``. Either way, two workers never claim one run, and a queue never
has more claimed runs than slots.

A run whose lease expired (its holder crashed or froze) is claimed by rewriting
the lease at the version read; its fence moves when the new holder acquires it
for the drive, so nothing of the old holder lands afterwards. Each claim counts
on the run's ticket; a run claimed ``max_claims`` times that never finished has
taken down every worker that ran it and is failed as a poison run instead.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Sequence

import attrs

from taskloom.contracts import (
    ClaimedRecord,
    ClaimingStorage,
    ConflictError,
    Delete,
    ErrorInfo,
    LeaseLost,
    Op,
    Put,
    Record,
    RunFailed,
    StorageAdapter,
    TaskloomError,
    claim_by_cas,
)
from taskloom.sdk._queue.records import (
    DEFAULT_QUEUE,
    NS_PACE,
    NS_QUEUE,
    NS_SLOTS,
    NS_TICKETS,
    QueueDefinition,
    QueueEntry,
    QueuePace,
    QueueSlot,
    QueueTicket,
    entry_key,
    slot_key,
)
from taskloom.sdk._runs.codec import decode, encode
from taskloom.sdk._runs.records import (
    FINISHED_STATUSES,
    NS_FENCES,
    NS_LEASES,
    NS_RUNS,
    NS_RUNS_BY_TIME,
    Fence,
    LeaseRecord,
    RunRecord,
    index_entry,
    index_key,
)
from taskloom.sdk._runs.store import RunStore

logger = logging.getLogger("taskloom.queue")

_RETRIES = 8
LEASE_SCAN_PAGE = 500


@attrs.frozen(kw_only=True)
class Claim:
    """A run a holder just claimed: run it (``engine.resume``), then ``finish_claim``."""

    run_id: str
    queue: str
    slot: str | None
    """The ``queue_slots`` key the run holds, if any."""
    claims: int
    """How many times the run has been claimed, this claim included."""
    recovered: bool
    """Whether it was claimed because an earlier holder's lease expired."""


_NATIVE: weakref.WeakKeyDictionary[StorageAdapter, bool] = weakref.WeakKeyDictionary()
"""Whether an adapter claims natively, per adapter: a check against a runtime protocol
costs tens of microseconds, and a worker asks once per claim."""


def _claimer(storage: StorageAdapter) -> ClaimingStorage | None:
    try:
        native = _NATIVE.get(storage)
    except TypeError:  # not weakly referenceable (or not hashable): ask every time
        native = None
    if native is None:
        native = isinstance(storage, ClaimingStorage)
        with contextlib.suppress(TypeError):
            _NATIVE[storage] = native
    return storage if native else None  # type: ignore[return-value]


async def claim_queued(
    store: RunStore, holder: str, queue: QueueDefinition, *, ttl_s: float
) -> Claim | None:
    """Claim the next run of ``queue`` for ``holder``, within its limits; None if there
    is none to claim now (empty, every slot taken, or the rate limit says wait)."""
    got = await claim_queued_many(store, holder, queue, ttl_s=ttl_s, limit=1)
    return got[0] if got else None


async def claim_queued_many(
    store: RunStore, holder: str, queue: QueueDefinition, *, ttl_s: float, limit: int
) -> list[Claim]:
    """Claim up to ``limit`` runs of ``queue`` for ``holder`` in one call, oldest of the
    highest priority first; fewer (or none) when fewer can be claimed now.

    A queue without limits claims them together (one transaction on an adapter that
    claims natively); a queue with a concurrency or rate limit claims one run per call,
    each checked against its limits."""
    if queue.concurrency is not None or queue.starts_per_minute is not None:
        limit = 1
    storage = store.storage
    name = queue.name
    now = store.clock()
    extra: list[Op] = []
    if queue.starts_per_minute is not None:
        pace = await storage.get(NS_PACE, name)
        next_at = decode(pace.value, QueuePace, where=f"{NS_PACE}/{name}").next_at if pace else 0.0
        if next_at > now:
            return []
        upcoming = QueuePace(next_at=max(now, next_at) + 60.0 / queue.starts_per_minute)
        extra.append(
            Put(
                namespace=NS_PACE,
                key=name,
                value=encode(upcoming),
                if_version=pace.version if pace is not None else 0,
            )
        )
    slot: tuple[str, int] | None = None  # key and the version it must be at
    if queue.concurrency is not None:
        slot = await _free_slot(store, queue)
        if slot is None:
            return []

    entries: dict[str, QueueEntry] = {}  # decoded once, by queue key

    def ops_for(record: Record) -> Sequence[Op] | None:
        try:
            entry = decode(record.value, QueueEntry, where=f"{NS_QUEUE}/{record.key}")
        except TaskloomError as exc:
            logger.warning("queue entry %s is damaged and skipped: %s", record.key, exc)
            return None
        entries[record.key] = entry
        run_id = entry.run_id
        lease = LeaseRecord(run_id=run_id, holder=holder, acquired_at=now, expires_at=now + ttl_s)
        key, version = slot if slot is not None else (f"{name}/~{run_id}", 0)
        ticket = QueueTicket(
            run_id=run_id,
            queue=name,
            priority=entry.priority,
            submitted_at=entry.submitted_at,
            claims=entry.claims + 1,
            slot=_index(key),
            holder=holder,
            idempotency_key=entry.idempotency_key,
        )
        mark = QueueSlot(run_id=run_id, holder=holder, claimed_at=now)
        fence = Fence(run_id=run_id, holder=holder, acquired_at=now)
        # One commit makes the run this holder's: the lease (nobody may hold it), the
        # fence (so a former holder's writes in flight fail), the ticket, the slot.
        return [
            Put(namespace=NS_LEASES, key=run_id, value=encode(lease), if_version=0),
            Put(namespace=NS_FENCES, key=run_id, value=encode(fence)),
            Put(namespace=NS_TICKETS, key=run_id, value=encode(ticket)),
            Put(namespace=NS_SLOTS, key=key, value=encode(mark), if_version=version),
            *extra,
        ]

    native = _claimer(storage)
    got: list[ClaimedRecord]
    if native is not None:
        got = await native.claim(NS_QUEUE, prefix=f"{name}/", limit=limit, ops_for=ops_for)
    else:
        got = await claim_by_cas(storage, NS_QUEUE, prefix=f"{name}/", limit=limit, ops_for=ops_for)
    claims: list[Claim] = []
    for claimed in got:
        entry = entries.get(claimed.record.key) or decode(
            claimed.record.value, QueueEntry, where=f"{NS_QUEUE}/{claimed.record.key}"
        )
        key = slot[0] if slot is not None else f"{name}/~{entry.run_id}"
        fence_record = next(
            (
                r
                for r in claimed.result.records
                if r.namespace == NS_FENCES and r.key == entry.run_id
            ),
            None,
        )
        if fence_record is not None:
            store.adopt_lease(
                entry.run_id,
                holder,
                ttl_s=ttl_s,
                fence=fence_record.version,
                expires_at=now + ttl_s,
            )
        claims.append(
            Claim(
                run_id=entry.run_id, queue=name, slot=key, claims=entry.claims + 1, recovered=False
            )
        )
    return claims


async def _free_slot(store: RunStore, queue: QueueDefinition) -> tuple[str, int] | None:
    """A slot of ``queue`` to take: a free index (version 0) or one whose run ended
    without giving it back (at its version); None when all are in use."""
    assert queue.concurrency is not None
    storage = store.storage
    taken = await storage.scan(NS_SLOTS, prefix=f"{queue.name}/")
    used = {record.key for record in taken}
    if len(taken) < queue.concurrency:
        for index in range(queue.concurrency):
            key = slot_key(queue.name, index)
            if key not in used:
                return key, 0
    for record in taken:
        mark = decode(record.value, QueueSlot, where=f"{NS_SLOTS}/{record.key}")
        run = await storage.get(NS_RUNS, mark.run_id)
        if run is None:
            return record.key, record.version
        status = decode(run.value, RunRecord, where=f"{NS_RUNS}/{mark.run_id}").status
        if status in FINISHED_STATUSES:
            return record.key, record.version
    return None


async def _count_claim(
    store: RunStore, run_id: str, queue: str, holder: str, slot: str | None, priority: int
) -> int:
    """Count one more claim of ``run_id`` on its ticket (made if missing); return the count."""
    storage = store.storage
    for _ in range(_RETRIES):
        stored = await storage.get(NS_TICKETS, run_id)
        if stored is None:
            ticket = QueueTicket(
                run_id=run_id, queue=queue, priority=priority, submitted_at=store.clock()
            )
            version = 0
        else:
            ticket = decode(stored.value, QueueTicket, where=f"{NS_TICKETS}/{run_id}")
            version = stored.version
        counted = attrs.evolve(ticket, claims=ticket.claims + 1, holder=holder, slot=_index(slot))
        try:
            await storage.put(NS_TICKETS, run_id, encode(counted), if_version=version)
        except ConflictError:
            continue
        return counted.claims
    raise ConflictError(f"run {run_id!r}: its queue ticket kept changing while it was claimed")


def _index(slot: str | None) -> int | None:
    if slot is None:
        return None
    tail = slot.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


async def claim_expired(
    store: RunStore, holder: str, queues: Sequence[str], *, ttl_s: float
) -> Claim | None:
    """Claim a run whose lease expired (its holder crashed or froze), if one of ``queues``
    owns it (a run submitted to no queue belongs to ``default``); None if there is none.

    Leases of runs that ended or were deleted are cleaned up on the way.
    """
    storage = store.storage
    start_after: str | None = None
    while True:
        page = await storage.scan(NS_LEASES, start_after=start_after, limit=LEASE_SCAN_PAGE)
        for stored in page:
            claim = await _take_expired(store, holder, queues, stored, ttl_s=ttl_s)
            if claim is not None:
                return claim
        if len(page) < LEASE_SCAN_PAGE:
            return None
        start_after = page[-1].key


async def _take_expired(
    store: RunStore, holder: str, queues: Sequence[str], stored: Record, *, ttl_s: float
) -> Claim | None:
    storage = store.storage
    run_id = stored.key
    lease = decode(stored.value, LeaseRecord, where=f"{NS_LEASES}/{run_id}")
    now = store.clock()
    if lease.expires_at > now:
        return None
    run = await storage.get(NS_RUNS, run_id)
    if (
        run is None
        or decode(run.value, RunRecord, where=f"{NS_RUNS}/{run_id}").status in FINISHED_STATUSES
    ):
        # a leftover of a run that ended (or was deleted): nobody will release it
        with contextlib.suppress(ConflictError):
            await storage.delete(NS_LEASES, run_id, if_version=stored.version)
        return None
    ticket_stored = await storage.get(NS_TICKETS, run_id)
    ticket = (
        decode(ticket_stored.value, QueueTicket, where=f"{NS_TICKETS}/{run_id}")
        if ticket_stored is not None
        else None
    )
    queue = ticket.queue if ticket is not None else DEFAULT_QUEUE
    if queue not in queues:
        return None
    taken = LeaseRecord(run_id=run_id, holder=holder, acquired_at=now, expires_at=now + ttl_s)
    fence = Fence(run_id=run_id, holder=holder, acquired_at=now)
    try:
        # the lease and the fence in one commit: from here on, nothing the former holder
        # still has in flight can land
        result = await storage.commit(
            [
                Put(
                    namespace=NS_LEASES,
                    key=run_id,
                    value=encode(taken),
                    if_version=stored.version,
                ),
                Put(namespace=NS_FENCES, key=run_id, value=encode(fence)),
            ]
        )
    except ConflictError:
        return None  # renewed by its holder, or another worker was faster
    fenced = next((r for r in result.records if r.namespace == NS_FENCES), None)
    if fenced is not None:
        store.adopt_lease(run_id, holder, ttl_s=ttl_s, fence=fenced.version, expires_at=now + ttl_s)
    slot = None
    if ticket is not None and ticket.slot is not None:
        slot = slot_key(queue, ticket.slot)
    elif ticket is not None:
        slot = f"{queue}/~{run_id}"
    claims = await _count_claim(
        store, run_id, queue, holder, slot, ticket.priority if ticket is not None else 0
    )
    return Claim(run_id=run_id, queue=queue, slot=slot, claims=claims, recovered=True)


async def release_slot(store: RunStore, claim: Claim) -> None:
    """Give the claim's concurrency slot back (if it still names the claim's run)."""
    if claim.slot is None:
        return
    storage = store.storage
    if claim.slot.endswith(f"/~{claim.run_id}"):
        await storage.delete(NS_SLOTS, claim.slot)  # named after the run: only it has it
        return
    stored = await storage.get(NS_SLOTS, claim.slot)
    if stored is None:
        return
    mark = decode(stored.value, QueueSlot, where=f"{NS_SLOTS}/{claim.slot}")
    if mark.run_id != claim.run_id:
        return
    with contextlib.suppress(ConflictError):  # taken over meanwhile: no longer ours
        await storage.delete(NS_SLOTS, claim.slot, if_version=stored.version)


async def drop_claim(store: RunStore, claim: Claim, holder: str) -> None:
    """Forget a claimed run that was deleted while queued: its lease, ticket and slot."""
    await store.release_lease(claim.run_id, holder)
    store.end_run(claim.run_id)
    await release_slot(store, claim)
    with contextlib.suppress(ConflictError):
        await store.storage.delete(NS_TICKETS, claim.run_id)


async def requeue(store: RunStore, claim: Claim, holder: str) -> bool:
    """Put a claimed run back on its queue (a worker shutting down gives it up).

    One commit moves the run's fence (so no write of the run still in flight here can
    land after it), sets the run back to ``queued``, adds its queue entry and gives
    its slot back; the caller then stops the run's drive, which releases the lease.
    False if the run is no longer ours (another holder took it over) or ended.
    """
    storage = store.storage
    for _ in range(_RETRIES):
        stored = await storage.get(NS_RUNS, claim.run_id)
        if stored is None:
            return False
        record = decode(stored.value, RunRecord, where=f"{NS_RUNS}/{claim.run_id}")
        if record.status in FINISHED_STATUSES:
            return False
        lease_stored = await storage.get(NS_LEASES, claim.run_id)
        if lease_stored is None:
            return False
        lease = decode(lease_stored.value, LeaseRecord, where=f"{NS_LEASES}/{claim.run_id}")
        if lease.holder != holder:
            return False
        fence = await storage.get(NS_FENCES, claim.run_id)
        ticket_stored = await storage.get(NS_TICKETS, claim.run_id)
        ticket = (
            decode(ticket_stored.value, QueueTicket, where=f"{NS_TICKETS}/{claim.run_id}")
            if ticket_stored is not None
            else QueueTicket(run_id=claim.run_id, queue=claim.queue, submitted_at=record.created_at)
        )
        now = store.clock()
        queued = attrs.evolve(record, status="queued")
        entry = QueueEntry(
            run_id=claim.run_id,
            queue=ticket.queue,
            priority=ticket.priority,
            submitted_at=ticket.submitted_at,
            claims=ticket.claims,
            idempotency_key=ticket.idempotency_key,
        )
        ops: list[Op] = [
            Put(
                namespace=NS_FENCES,
                key=claim.run_id,
                value=encode(
                    Fence(run_id=claim.run_id, holder=f"queue:{ticket.queue}", acquired_at=now)
                ),
                if_version=fence.version if fence is not None else 0,
            ),
            Put(
                namespace=NS_RUNS, key=claim.run_id, value=encode(queued), if_version=stored.version
            ),
            Put(
                namespace=NS_RUNS_BY_TIME,
                key=index_key(claim.run_id, record.created_at),
                value=encode(index_entry(queued)),
            ),
            Put(
                namespace=NS_QUEUE,
                key=entry_key(ticket.queue, ticket.priority, ticket.submitted_at, claim.run_id),
                value=encode(entry),
            ),
        ]
        if claim.slot is not None:
            slot = await storage.get(NS_SLOTS, claim.slot)
            if (
                slot is not None
                and decode(slot.value, QueueSlot, where=f"{NS_SLOTS}/{claim.slot}").run_id
                == claim.run_id
            ):
                ops.append(Delete(namespace=NS_SLOTS, key=claim.slot, if_version=slot.version))
        try:
            await storage.commit(ops)
        except ConflictError:
            continue
        return True
    return False


async def fail_poison(
    store: RunStore, claim: Claim, holder: str, *, ttl_s: float, max_claims: int
) -> None:
    """Fail a run that was claimed ``claim.claims`` times and never finished, saying why."""
    run_id = claim.run_id
    await store.acquire_lease(run_id, holder, ttl_s=ttl_s)
    try:
        record = await store.load_run(run_id)
        now = store.clock()
        info = ErrorInfo(
            type="PoisonRun",
            message=(
                f"run {run_id} was claimed {claim.claims - 1} times (the limit is {max_claims}) "
                "and every worker that ran it stopped without finishing it (crashed, killed "
                "or out of memory); it is failed so that it stops taking workers down: find "
                "the cause in the workers' logs, then resume it by hand"
            ),
        )
        failed = attrs.evolve(record, status="failed", finished_at=now, error=info)
        write = await store.queue_finish(failed, RunFailed(run_id=run_id, at=now, error=info))
        await write
    except LeaseLost:
        return
    finally:
        await store.release_lease(run_id, holder)
        store.end_run(run_id)
