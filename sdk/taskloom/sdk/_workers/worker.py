"""``Worker``: claim runs from the store's queues, run them, give them back on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import attrs

from taskloom.contracts import (
    Delete,
    Put,
    RunCancelled,
    RunHeld,
    RunNotFound,
    StepFailed,
    StorageError,
    TaskloomError,
    UsageError,
    WakeableStorage,
)
from taskloom.sdk._engine.engine import Engine
from taskloom.sdk._queue.claim import (
    Claim,
    claim_expired,
    claim_queued_many,
    drop_claim,
    fail_poison,
    release_slot,
    requeue,
)
from taskloom.sdk._queue.records import DEFAULT_QUEUE, NS_QUEUE, NS_SLOTS, QueueDefinition
from taskloom.sdk._queue.submit import check_queue_name, queue_definition
from taskloom.sdk._runs.records import FINISHED_STATUSES, NS_LEASES
from taskloom.sdk._runs.store import RunStore

logger = logging.getLogger("taskloom.worker")

BACKOFF_S: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits after consecutive storage failures while claiming (the last one repeats)."""

DEFINITION_TTL_S = 1.0
"""How long a worker uses a queue definition it read before reading it again."""

CLAIM_BATCH = 4
"""Most runs one claim takes (fewer if the worker has less room). Claiming several in one
transaction saves a commit per run; claiming all the room at once makes the runs start,
wait and finish in step, so none of their CPU work overlaps another's wait: with 16 runs
of 50 ms, 16 at once took ~10% longer than 4 at a time, one at a time ~40% more CPU."""


@attrs.define
class WorkerStats:
    """What a worker did so far."""

    claimed: int = 0
    recovered: int = 0
    """Claims of runs whose earlier holder's lease expired."""
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    """Runs another holder took over while this worker ran them."""
    requeued: int = 0
    poisoned: int = 0
    storage_errors: int = 0
    last_error: str | None = None


async def _announced(storage: WakeableStorage, timeout: float) -> bool:
    """Whether the store announced a submission within ``timeout``; a failure is a no
    (the worker polls anyway, and its next claim reports a store that is down)."""
    try:
        return await storage.wait_for_change(NS_QUEUE, timeout=timeout)
    except (TaskloomError, OSError):
        return False


class Worker:
    """Claim and run queued runs (and crashed ones) with ``engine`` until stopped.

    ``async with Worker(engine, queues=["default"], concurrency=4) as worker:`` runs
    the loop in the background; ``await worker.run()`` runs it in the caller's task
    until ``stop()``. At most ``concurrency`` runs go at once in this worker; each
    queue's own limits hold across all workers. ``poll_s`` is how often the store is
    asked for new runs when nothing woke the worker (a submission through the same
    engine wakes it at once); ``recover``: also claim runs whose lease expired, and every
    ``timeout_sweep_s`` continue the waiting runs whose input step is past its
    ``timeout_s`` (``Engine.resolve_timeouts``: its ``on_timeout`` applies).

    ``stop()`` (SIGTERM in ``taskloom worker``) stops claiming; ``shutdown()`` then
    waits up to ``grace_s`` for the runs in hand to finish and puts the rest back
    on their queues (their finished steps are kept; another worker resumes them).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        concurrency: int = 1,
        poll_s: float = 0.2,
        recover: bool = True,
        recover_every_s: float = 1.0,
        grace_s: float = 30.0,
        timeout_sweep_s: float = 30.0,
    ) -> None:
        if isinstance(queues, str):
            raise UsageError("queues must be a list of queue names, not one string")
        names = [check_queue_name(q) for q in queues]
        if not names:
            raise UsageError("a worker needs at least one queue")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError(f"concurrency must be an int >= 1, got {concurrency!r}")
        for what, value in (
            ("poll_s", poll_s),
            ("recover_every_s", recover_every_s),
            ("timeout_sweep_s", timeout_sweep_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"{what} must be a positive number of seconds, got {value!r}")
        if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or grace_s < 0:
            raise UsageError(f"grace_s must be a number of seconds >= 0, got {grace_s!r}")
        self.engine = engine
        self.queues = tuple(dict.fromkeys(names))
        self.concurrency = concurrency
        self.poll_s = float(poll_s)
        self.recover = recover
        self.recover_every_s = float(recover_every_s)
        self.grace_s = float(grace_s)
        self.timeout_sweep_s = float(timeout_sweep_s)
        self._next_sweep = 0.0
        self.stats = WorkerStats()
        self._running: dict[str, tuple[asyncio.Task[None], Claim]] = {}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._next_recovery = 0.0
        self._failures = 0
        self._checked = False
        self._definitions: dict[str, tuple[float, QueueDefinition]] = {}
        self._wakeable_storage: tuple[object, WakeableStorage | None] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self._check_queues()
        self._loop_task = asyncio.create_task(self.run(), name="taskloom-worker")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.shutdown()

    @property
    def active(self) -> int:
        """How many runs this worker is running now."""
        return len(self._running)

    async def wait_stopped(self) -> None:
        """Return once ``stop()`` was called (by a signal handler, say)."""
        await self._stopping.wait()

    def stop(self) -> None:
        """Stop claiming (safe from a signal handler); ``shutdown`` finishes the rest."""
        self._stopping.set()
        self._wake.set()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop claiming; let the runs in hand finish for up to ``grace_s`` (default: the
        worker's), then put the others back on their queues and stop them."""
        self.stop()
        grace = self.grace_s if grace_s is None else grace_s
        if self._loop_task is not None:
            # the loop ends after the claim it may be making: that run is in hand too
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("worker %s: its claim loop failed", self.engine.holder)
            self._loop_task = None
        tasks = [task for task, _claim in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for run_id, (task, claim) in list(self._running.items()):
            if task.done():
                continue
            await self._give_back(run_id, task, claim)

    async def _give_back(self, run_id: str, task: asyncio.Task[None], claim: Claim) -> None:
        store = self._store()
        store.abandon_run(run_id)  # nothing more of this drive is written
        try:
            if await requeue(store, claim, self.engine.holder):
                self.stats.requeued += 1
        except TaskloomError as exc:
            logger.warning(
                "could not put run %s back on its queue (%s); its lease expires",
                run_id,
                exc,
            )
        task.cancel()
        await asyncio.wait([task])

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run until ``stop()``; storage failures are retried with backoff."""
        if not self._checked:
            await self._check_queues()
        submitted = self.engine.submitted
        while not self._stopping.is_set():
            room = self.concurrency - len(self._running)
            if room > 0:
                try:
                    claims = await self._claim(room)
                except (StorageError, OSError) as exc:
                    await self._storage_failed(exc)
                    continue
                except TaskloomError as exc:  # a damaged record, say: report it, never die
                    logger.error("worker %s: claiming failed: %s", self.engine.holder, exc)
                    await self._storage_failed(exc)
                    continue
                if self._failures:
                    logger.warning("storage is back; claiming again")
                    self._failures = 0
                if claims:
                    for claim in claims:
                        self._start(claim)
                    continue
            else:
                # Full: only a run ending (or stop) can change anything, and both set
                # _wake; submissions need not wake the loop (one task, no timer, per wait).
                self._wake.clear()
                await self._wake.wait()
                continue
            submitted.clear()
            self._wake.clear()
            waits: list[asyncio.Future[bool]] = [
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(submitted.wait()),
            ]
            storage = self._wakeable()
            if storage is not None:
                # Submissions by other processes and hosts (PostgreSQL: LISTEN/NOTIFY).
                waits.append(asyncio.ensure_future(_announced(storage, self.poll_s)))
            try:
                await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def _check_queues(self) -> None:
        await self.engine.open()
        store = self._store()
        for name in self.queues:
            await queue_definition(store, name)  # UnknownQueue at start, not on every poll
        self._checked = True

    def _store(self) -> RunStore:
        store = self.engine.runstore
        if store is None:
            raise UsageError("a worker needs an engine with storage (storage=None keeps no queue)")
        assert isinstance(store, RunStore)
        return store

    async def _storage_failed(self, exc: BaseException) -> None:
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        self._failures += 1
        self.stats.storage_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "worker %s: storage failed while claiming (%s); stopped claiming, retrying in %.1fs",
            self.engine.holder,
            exc,
            delay,
        )
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _wakeable(self) -> WakeableStorage | None:
        """The engine's storage if it announces submissions (looked up once: a check
        against a runtime protocol costs tens of microseconds)."""
        storage = self.engine.storage
        if self._wakeable_storage is None or self._wakeable_storage[0] is not storage:
            found = storage if isinstance(storage, WakeableStorage) else None
            self._wakeable_storage = (storage, found)
        return self._wakeable_storage[1]

    async def _claim(self, room: int) -> list[Claim]:
        """Up to ``room`` runs to start: a crashed run (at most one per round), else
        queued runs of the first of this worker's queues that has any."""
        store = self._store()
        holder = self.engine.holder
        ttl = self.engine.lease_ttl_s
        if self.recover and time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + self.recover_every_s
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.timeout_sweep_s
                await self.engine.resolve_timeouts()  # waiting runs past an input's timeout_s
            claim = await claim_expired(store, holder, self.queues, ttl_s=ttl)
            if claim is not None:
                return [claim]
        for name in self.queues:
            definition = await self._definition(name)
            claims = await claim_queued_many(
                store, holder, definition, ttl_s=ttl, limit=min(room, CLAIM_BATCH)
            )
            if claims:
                return claims
        return []

    async def _definition(self, name: str) -> QueueDefinition:
        """Queue ``name``'s definition, read again at most once a second (a redefinition
        reaches running workers within that)."""
        cached = self._definitions.get(name)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        definition = await queue_definition(self._store(), name)
        self._definitions[name] = (now + DEFINITION_TTL_S, definition)
        return definition

    def _start(self, claim: Claim) -> None:
        self.stats.claimed += 1
        if claim.recovered:
            self.stats.recovered += 1
        task = asyncio.create_task(self._drive(claim), name=f"taskloom-worker-run-{claim.run_id}")
        self._running[claim.run_id] = (task, claim)
        task.add_done_callback(lambda _t: self._done(claim.run_id))

    def _done(self, run_id: str) -> None:
        self._running.pop(run_id, None)
        self._wake.set()

    async def _ended(self, run_id: str) -> bool:
        """Whether the run's record says it ended (or it is gone): only then may its
        concurrency slot be given back. A run that stopped on a storage error is
        unfinished: its lease expires and whoever recovers it keeps its slot."""
        try:
            record = await self._store().load_run(run_id)
        except RunNotFound:
            return True
        except TaskloomError:
            return False
        return record.status in FINISHED_STATUSES

    async def _drive(self, claim: Claim) -> None:
        store = self._store()
        holder = self.engine.holder
        try:
            definition = await self._definition(claim.queue)
            max_claims = definition.max_claims
        except TaskloomError:
            max_claims = QueueDefinition(name=DEFAULT_QUEUE).max_claims
        release = True
        # What the claim took goes back in the commit of the run's outcome, not in
        # transactions of their own: the lease, and a slot named after the run (its
        # alone; a numbered slot of a limited queue is given back by release_slot).
        give_back: list[Put | Delete] = [Delete(namespace=NS_LEASES, key=claim.run_id)]
        slot = claim.slot
        own_slot = slot is not None and slot.endswith(f"/~{claim.run_id}")
        if slot is not None and own_slot:
            give_back.append(Delete(namespace=NS_SLOTS, key=slot))
        store.with_outcome(claim.run_id, give_back)
        try:
            if claim.claims > max_claims:
                await fail_poison(
                    store, claim, holder, ttl_s=self.engine.lease_ttl_s, max_claims=max_claims
                )
                self.stats.poisoned += 1
                return
            try:
                record = await store.load_run(claim.run_id)
            except RunNotFound:  # deleted while queued: drop what the claim wrote
                await drop_claim(store, claim, holder)
                return
            if record.status in ("succeeded", "failed", "cancelled"):
                await store.release_lease(claim.run_id, holder)
                return  # cancelled while queued, or ended before its lease was given back
            if record.started_at is None:
                store.never_started(claim.run_id)  # read under our lease: no events yet
            result = await self.engine._resume_loaded(record)
            if result.status == "succeeded":
                self.stats.succeeded += 1
        except StepFailed:
            self.stats.failed += 1
        except RunHeld:
            self.stats.lost += 1  # another holder has it now (and its slot)
            release = False
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            release = False  # given back by shutdown (requeue released the slot)
            raise
        except RunCancelled:
            self.stats.cancelled += 1  # cancelled from another process: recorded so
        except TaskloomError as exc:
            self.stats.failed += 1
            logger.warning("run %s stopped with %s: %s", claim.run_id, type(exc).__name__, exc)
            release = await self._ended(claim.run_id)
        except Exception:
            self.stats.failed += 1
            logger.exception("run %s stopped with an unexpected error", claim.run_id)
            release = await self._ended(claim.run_id)
        finally:
            if store.outcome_landed(claim.run_id) and own_slot:
                release = False  # the slot went in the outcome's commit
            store.end_run(claim.run_id)  # nothing of the run stays in this process
            if release:
                with contextlib.suppress(TaskloomError):
                    await release_slot(store, claim)
