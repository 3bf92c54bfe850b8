"""Cancelling a run from any process: ``cancel_run``.

The mechanism is a mark on the run's lease record (``RunStore.request_cancel``):

- **A live holder** (a process running the run) sees the mark at its next lease
  renewal -- within a third of its lease TTL, 10 s with the default 30 s -- starts
  no new step, cancels the calls in flight, records the run ``cancelled`` with one
  outcome event and releases the lease. ``cancel_run`` waits for that record.
- **A holder that is gone** (killed, its lease not yet expired) never renews again:
  if no renewal comes within a little more than one renewal interval, or the lease
  expires, ``cancel_run`` takes the run over as below.
- **Nobody holds the run** (it crashed, or was never started): ``cancel_run`` takes
  the lease itself, so no resume can start meanwhile, records the run cancelled with
  one outcome event, and releases the lease.

So the run's history ends with exactly one outcome event, and once ``cancel_run``
returns nobody holds the run: ``resume`` continues it at once. A run that finished
before the request reached it keeps its outcome (``CancelOutcome.cancelled`` is
False). The mark is part of the lease, so fencing built on the lease (every write
checked against it) covers it too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import attrs

from taskloom.contracts import RunCancelledEvent, RunHeld
from taskloom.sdk._runs.records import FINISHED_STATUSES, LeaseRecord, RunRecord
from taskloom.sdk._runs.spend import spent_before
from taskloom.sdk._runs.store import RunStore

__all__ = ["CancelOutcome", "cancel_run"]

POLL_S = 0.05
"""How often ``cancel_run`` looks at the run while its holder stops."""

_TAKEOVER_TTL_S = 30.0
_ROUNDS = 4

_GONE_AFTER = 0.6
"""A holder is gone when it has not renewed within this share of what was left of its
lease when cancel asked. Renewals come every ttl/3 and at most ttl/3 after the last
one the lease has >= 2/3 of its ttl left, so 0.6 of it is always > one interval."""


@attrs.frozen(kw_only=True)
class CancelOutcome:
    """What ``cancel_run`` did."""

    record: RunRecord
    """The run's record afterwards."""
    cancelled: bool
    """False: the run had already finished (the record says how) and was left alone."""
    stopped_holder: str | None = None
    """The process that was running the run and stopped itself, if one did."""


async def cancel_run(
    store: RunStore,
    run_id: str,
    *,
    poll_s: float = POLL_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> CancelOutcome:
    """Cancel run ``run_id`` wherever it runs; return once nobody holds it (see module)."""
    me = f"cancel-{uuid.uuid4().hex[:12]}"
    for _ in range(_ROUNDS):
        record = await store.load_run(run_id)
        if record.status in FINISHED_STATUSES:
            return CancelOutcome(record=record, cancelled=False)
        lease = await store.request_cancel(run_id)
        if lease is not None:
            ended = await _wait_for_holder(store, run_id, lease, poll_s=poll_s, sleep=sleep)
            if ended is not None:
                return CancelOutcome(
                    record=ended,
                    cancelled=ended.status == "cancelled",
                    stopped_holder=lease.holder,
                )
            await store.revoke_lease(run_id, holder=lease.holder)  # it is gone: take over
        try:
            await store.acquire_lease(run_id, me, ttl_s=_TAKEOVER_TTL_S)
        except RunHeld:
            continue  # a resume took the run meanwhile: ask it to stop
        try:
            return await _record_cancelled(store, run_id)
        finally:
            await store.release_lease(run_id, me)
    raise RunHeld(
        f"run {run_id!r} kept being taken by other processes while cancelling it; "
        f"try `taskloom cancel {run_id}` again"
    )


async def _wait_for_holder(
    store: RunStore,
    run_id: str,
    lease: LeaseRecord,
    *,
    poll_s: float,
    sleep: Callable[[float], Awaitable[None]],
) -> RunRecord | None:
    """Wait until the holder recorded an outcome (return the record) or is gone (None)."""
    asked = lease.cancel_requested_at if lease.cancel_requested_at is not None else store.clock()
    gone_at = asked + _GONE_AFTER * max(lease.expires_at - asked, 0.0)
    renewed = False
    while True:
        record = await store.load_run(run_id)
        if record.status in FINISHED_STATUSES:
            return record
        current = await store.lease(run_id)
        if current is None or current.holder != lease.holder:
            # The holder may have recorded its outcome since the record was read: a worker
            # gives its lease back in the outcome's own commit.
            record = await store.load_run(run_id)
            if record.status in FINISHED_STATUSES:
                return record
            return None  # released without an outcome, or taken over: look again
        renewed = renewed or current.expires_at > lease.expires_at
        now = store.clock()
        if now >= current.expires_at or (not renewed and now >= gone_at):
            return None
        await sleep(poll_s)


async def _record_cancelled(store: RunStore, run_id: str) -> CancelOutcome:
    """Under our own lease: mark the run cancelled, with its one outcome event."""
    record = await store.load_run(run_id)
    if record.status in FINISHED_STATUSES:
        return CancelOutcome(record=record, cancelled=False)
    now = store.clock()
    started = record.started_at if record.started_at is not None else now
    usage, by_executor = await spent_before(store, record)  # a crashed holder's steps count
    done = attrs.evolve(
        record, status="cancelled", finished_at=now, usage=usage, usage_by_executor=by_executor
    )
    outcome = RunCancelledEvent(
        run_id=run_id, at=now, duration_s=max(now - started, 0.0), usage=usage
    )
    await (await store.queue_finish(done, outcome))
    return CancelOutcome(record=done, cancelled=True)
