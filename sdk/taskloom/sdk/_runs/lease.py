"""Leases: one holder per run, and ``LeaseKeeper`` to hold one while a run goes.

The lease record lives in the run store (``leases`` / run id, written with a
compare-and-set on its version); this module holds what is built on top: the
keeper that renews it every ttl/3 and stops the run if it is lost, and the small
helpers the run store's lease methods share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from taskloom.contracts import RunHeld, StorageError, UsageError
from taskloom.sdk._runs.records import LeaseRecord

if TYPE_CHECKING:
    from taskloom.sdk._runs.store import RunStore

logger = logging.getLogger("taskloom.runstore")


def check_ttl(ttl_s: object) -> None:
    """Refuse a TTL that is not a positive, finite number of seconds."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not (0 < ttl_s < 1e12):
        raise UsageError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")


def when(ts: float, *, now: float | None = None) -> str:
    """``ts`` (epoch seconds) as local wall-clock time a person can read, with how far off."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts)).strip()
    delta = ts - now
    if abs(delta) < 1:
        return f"{stamp} (now)"
    return f"{stamp} (in {delta:.0f} s)" if delta > 0 else f"{stamp} ({-delta:.0f} s ago)"


def held_error(run_id: str, lease: LeaseRecord, *, now: float | None = None) -> RunHeld:
    """The error for a run that ``lease``'s holder has."""
    return RunHeld(
        f"run {run_id!r} is held by {lease.holder!r} until {when(lease.expires_at, now=now)}; "
        f"wait for it to finish, or stop it: `taskloom cancel {run_id}` stops it within one "
        f"lease renewal (and takes the run over if that process is gone), and "
        f"`taskloom resume {run_id}` then continues it at once",
        holder=lease.holder,
        expires_at=lease.expires_at,
    )


def extended(lease: LeaseRecord, *, expires_at: float) -> LeaseRecord:
    """A copy of ``lease`` with a new expiry (a cancel request on it stays)."""
    return attrs.evolve(lease, expires_at=expires_at)


class LeaseKeeper:
    """Hold a run's lease while a block runs: acquire, renew every ttl/3, release.

    If a renewal finds the lease lost (another process took the run over after a
    stall longer than the TTL), the block must stop: by default the task that
    entered is cancelled and the ``async with`` raises ``RunHeld``; pass
    ``on_lost`` to handle it otherwise. A renewal that fails on a storage error
    is retried at the next tick; the lease stays ours until it expires.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        holder: str,
        *,
        ttl_s: float = 30.0,
        on_lost: Callable[[RunHeld], None] | None = None,
    ) -> None:
        check_ttl(ttl_s)
        self._store = store
        self._run_id = run_id
        self._holder = holder
        self._ttl = ttl_s
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[Any] | None = None
        self.lost: RunHeld | None = None
        """Set when a renewal found the lease taken."""
        self.renewals = 0
        """How many renewals succeeded."""

    async def __aenter__(self) -> LeaseKeeper:
        await self._store.acquire_lease(self._run_id, self._holder, ttl_s=self._ttl)
        self._owner = asyncio.current_task()
        self._task = asyncio.create_task(self._renew(), name=f"taskloom-lease-{self._run_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait never cancels ``task`` for us and lets our own cancellation through.
            await asyncio.wait([task])
        if self.lost is None:
            try:
                await self._store.release_lease(self._run_id, self._holder)
            except StorageError:
                logger.warning("could not release the lease of run %s; it expires", self._run_id)
        if (
            self.lost is not None
            and self._on_lost is None
            and isinstance(exc, asyncio.CancelledError)
            and self._owner is not None
            and self._owner.uncancel() == 0
        ):
            raise self.lost from None
        return False

    async def _renew(self) -> None:
        interval = self._ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._store.renew_lease(self._run_id, self._holder, ttl_s=self._ttl)
            except RunHeld as exc:
                self.lost = exc
                if self._on_lost is not None:
                    self._on_lost(exc)
                elif self._owner is not None:
                    self._owner.cancel()
                return
            except StorageError:
                continue  # transient: the lease is still ours until it expires
            self.renewals += 1
