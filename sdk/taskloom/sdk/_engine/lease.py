"""Holding a run's lease while the engine advances it.

Built only on the run store's lease calls (``acquire_lease``, ``renew_lease``,
``release_lease``, see ``notes/runstore_interface.md``): acquire on entry
(``RunHeld`` if another live holder has the run), renew every third of the TTL
in a background task, release on exit. If a renewal finds the lease taken (this
process stalled past the TTL and another one took the run over), the task that
holds the lease is cancelled and the ``async with`` raises ``RunHeld``: two
processes must never advance one run. A renewal that fails on a storage error is
retried at the next tick; the lease stays ours until it expires.

A renewal that finds a cancel request on the lease (``RunStore.request_cancel``,
from ``taskloom cancel`` in any process) sets ``cancel_requested`` and cancels the
holding task the same way: the run records itself cancelled, then the lease is
released. So a cancel reaches a running run within one renewal interval (ttl/3).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from taskloom.contracts import RunHeld, StorageError
from taskloom.sdk._runs.store import RunStore

logger = logging.getLogger("taskloom.engine")


class HeldLease:
    """``async with HeldLease(store, run_id, holder, ttl_s=...)``: hold the run while inside."""

    def __init__(self, store: RunStore, run_id: str, holder: str, *, ttl_s: float) -> None:
        self._store = store
        self._run_id = run_id
        self._holder = holder
        self._ttl = ttl_s
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[Any] | None = None
        self.lost: RunHeld | None = None
        self.cancel_requested = False
        """Set once the lease carried a cancel request: the run must end cancelled."""

    async def __aenter__(self) -> HeldLease:
        await self._store.acquire_lease(self._run_id, self._holder, ttl_s=self._ttl)
        self._owner = asyncio.current_task()
        # a write that fails its fence check stops the run at once, calls in flight too
        self._store.watch_lost(self._run_id, self._lost_now)
        self._task = asyncio.get_running_loop().create_task(
            self._renew(), name=f"taskloom-lease-{self._run_id}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._store.unwatch_lost(self._run_id)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # never cancels us, lets our own cancellation through
        if self.lost is None:
            try:
                await self._store.release_lease(self._run_id, self._holder)
            except StorageError:
                logger.warning("could not release the lease of run %s; it expires", self._run_id)
        elif (
            isinstance(exc, asyncio.CancelledError)
            and self._owner is not None
            and self._owner.uncancel() == 0
        ):
            raise self.lost from None  # we cancelled our owner because the lease was lost

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                lease = await self._store.renew_lease(self._run_id, self._holder, ttl_s=self._ttl)
            except RunHeld as exc:
                if self._store.lease_released(self._run_id):
                    return  # given back in the commit of the run's outcome: nothing to renew
                if self.lost is None:  # (else the store told us already, and we cancelled)
                    self.lost = exc
                    # another process runs it now: this one's pending checkpoints must not land
                    self._store.stop_checkpoints(self._run_id, exc)
                    if self._owner is not None:
                        self._owner.cancel()
                return
            except StorageError:
                logger.warning("renewing the lease of run %s failed; retrying", self._run_id)
                continue
            if lease.cancel_requested_at is not None:
                self._cancel()  # (renewals go on: the lease is ours until the outcome is written)

    async def cancel_requested_now(self) -> bool:
        """Look at the lease now (before a run records success): was a cancel requested?"""
        if not self.cancel_requested:
            lease = await self._store.lease(self._run_id)
            if lease is not None and lease.holder == self._holder:
                self.cancel_requested = lease.cancel_requested_at is not None
        return self.cancel_requested

    def _lost_now(self, exc: RunHeld) -> None:
        """The store found the lease lost (a write failed its fence check): stop the run."""
        if self.lost is None:
            self.lost = exc
            if self._owner is not None:
                self._owner.cancel()

    def _cancel(self) -> None:
        if not self.cancel_requested:
            self.cancel_requested = True
            if self._owner is not None:
                self._owner.cancel()
