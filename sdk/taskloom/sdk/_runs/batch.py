"""Group commit: many checkpoint writes, one ``storage.commit``.

A parallel run finishes many steps (or 500 map items) at nearly the same moment.
Committing each one alone would serialize the run on storage round trips, so
writers only enqueue their operations and a single flusher task takes *everything*
queued and writes it in one atomic ``commit``. While that commit is in flight, new
writes queue up and form the next batch: the busier the run, the bigger the
batches, and the number of commits tracks storage latency, not the number of steps.

Two kinds of writes go in a batch:

- *waited* writes (step checkpoints, run updates): the caller gets a future that
  resolves when the batch holding its operations is durable, or fails with the
  batch's error; every waiter of a failed batch gets that error.
- *unwaited* writes (events): the run store keeps them and hands them over through
  the ``collect`` callback each time a batch is formed, so all the events recorded
  since the last commit ride along in the next one. Nobody waits for them, so a
  failed batch puts them back at the head of the queue and the flusher retries
  them with backoff. They are never dropped silently: the failure is raised by the
  next ``flush()`` and, if they still cannot be written, by ``aclose()``.

Fencing: a run's writes carry a version check of its fence (see ``store``). A batch
holding many writes of one run carries its check once (``merged``): the same check
again, with nothing in between writing its key, cannot fail where the first passed,
and each one costs the storage a read. When a batch fails a check, ``fenced`` names
the runs whose lease was lost: their writes fail with ``LeaseLost`` (or, unwaited, are
dropped) and everything else in the batch is queued again at the head, so one stale
run never fails another run's writes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from taskloom.contracts import (
    Append,
    Check,
    ConflictError,
    Delete,
    LeaseLost,
    Op,
    Put,
    StorageAdapter,
    StorageError,
    StorageUnavailable,
    TaskloomError,
    UsageError,
)

logger = logging.getLogger("taskloom.runstore")

MAX_BATCH_OPS = 4096
"""Most operations in one commit; more stay queued for the next one."""

RETRY_DELAYS_S: tuple[float, ...] = (0.02, 0.1, 0.5, 1.0)
"""Backoff before retrying unwaited writes after a failed commit (last one repeats)."""


class _Pending:
    """Operations queued together, who (if anyone) waits for them, and their chain."""

    __slots__ = ("chain", "future", "ops", "run")

    def __init__(
        self,
        ops: Sequence[Op],
        future: asyncio.Future[None] | None,
        chain: str | None = None,
        run: str | None = None,
    ) -> None:
        self.ops = ops
        self.future = future
        self.chain = chain
        self.run = run if run is not None else chain
        """The run whose lease fences these operations, if one does."""


Fenced = Callable[[Sequence[Op]], Awaitable[dict[str, TaskloomError]]]
"""Given a batch that failed a version check: the runs whose lease was lost, and why."""

Unfenced = Callable[[Sequence[Op], frozenset[str]], list[Op]]
"""Given unwaited operations of many runs: those that do not belong to the lost runs."""


def merged(batch: Sequence[_Pending]) -> list[Op]:
    """The operations of ``batch`` in order, each repeated ``Check`` left out.

    A check is repeated when the same key was checked for the same version earlier in
    the batch and no ``Put`` or ``Delete`` of that key came in between: it reads what
    the first one read, so it passes or fails with it, and the commit does the same
    with it or without it. (A chain's checkpoints each carry their run's fence check;
    a batch of a hundred of them needs one.)
    """
    if len(batch) == 1:
        return list(batch[0].ops)
    ops: list[Op] = []
    keep = ops.append
    checked: dict[tuple[str, str], int] = {}
    """The version each key was last checked for, while nothing wrote the key since."""
    keys: set[str] = set()
    """The keys in ``checked`` (a write of another key costs one lookup)."""
    for pending in batch:
        for op in pending.ops:
            kind = type(op)
            if kind is Put:  # the usual operation: a checkpoint
                if checked and op.key in keys:  # type: ignore[union-attr]
                    checked.pop((op.namespace, op.key), None)  # type: ignore[union-attr]
            elif kind is Check:
                where = (op.namespace, op.key)  # type: ignore[union-attr]
                if checked.get(where) == op.version:  # type: ignore[union-attr]
                    continue
                checked[where] = op.version  # type: ignore[union-attr]
                keys.add(op.key)  # type: ignore[union-attr]
            elif kind is Delete:
                if checked and op.key in keys:  # type: ignore[union-attr]
                    checked.pop((op.namespace, op.key), None)  # type: ignore[union-attr]
            elif kind is not Append:  # an operation of another kind: forget every check
                checked.clear()
                keys.clear()
            keep(op)
    return ops


class GroupCommitWriter:
    """Queue storage operations; one background task commits everything queued at once."""

    def __init__(
        self,
        storage: StorageAdapter,
        *,
        max_batch_ops: int = MAX_BATCH_OPS,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        collect: Callable[[], Awaitable[list[Op]]] | None = None,
        has_pending: Callable[[], bool] | None = None,
        fenced: Fenced | None = None,
        unfenced: Unfenced | None = None,
    ) -> None:
        self._storage = storage
        self._fenced = fenced
        self._unfenced = unfenced
        self._collect = collect
        self._has_pending = has_pending or (lambda: False)
        self._max_batch_ops = max(1, max_batch_ops)
        self._retry_delays = tuple(retry_delays_s) or (0.0,)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failures = 0
        self._last_error: TaskloomError | None = None
        self._broken: dict[str, TaskloomError] = {}
        """Chains whose write failed: their later writes fail too, until ``mend``."""
        self._closed = False
        self.commits = 0
        """How many commits the flusher made (successful ones), for tests and benchmarks."""

    # --- producers ----------------------------------------------------------------

    def submit(
        self, ops: Sequence[Op], *, chain: str | None = None, run: str | None = None
    ) -> asyncio.Future[None]:
        """Queue ``ops``; the returned future resolves when they are durable.

        Writes of one ``chain`` (a run's checkpoints) are all-or-stop: once one of them
        fails, every later write of that chain -- queued or submitted after -- fails
        with the same error instead of being committed, until ``mend(chain)``. So a
        write is never durable after an earlier write of its chain was lost, which a
        caller that does not wait for each write (durability="async") relies on: a
        step's checkpoint never outlives the lost checkpoint of a step it needs.
        """
        if self._closed:
            self._check_open()
        loop = self._ensure_flusher()
        future: asyncio.Future[None] = loop.create_future()
        if chain is not None and self._broken:
            broken = self._broken.get(chain)
            if broken is not None:
                future.set_exception(broken)
                return future
        self._queue.append(_Pending(ops, future, chain, run))
        self._wakeup.set()  # type: ignore[union-attr]  # (_kick: _ensure_flusher made it)
        return future

    def mend(self, chain: str) -> None:
        """Let writes of ``chain`` through again (a run starts or resumes afresh)."""
        self._broken.pop(chain, None)

    def break_chain(self, chain: str, error: TaskloomError) -> None:
        """Fail the queued and later writes of ``chain`` with ``error`` (until ``mend``)."""
        self._broken.setdefault(chain, error)
        self._fail_broken()

    def _fail_broken(self) -> None:
        """Take the queued writes of broken chains off the queue and fail their waiters."""
        kept: collections.deque[_Pending] = collections.deque()
        for pending in self._queue:
            chain_error = self._broken.get(pending.chain) if pending.chain else None
            if chain_error is None and pending.run is not None:
                # a run's own record writes fail too once its lease is lost (not when only a
                # checkpoint failed: the run then records that it failed)
                lost = self._broken.get(pending.run)
                chain_error = lost if isinstance(lost, LeaseLost) else None
            if chain_error is None:
                kept.append(pending)
            elif pending.future is not None and not pending.future.done():
                pending.future.set_exception(chain_error)
        self._queue = kept

    def submit_nowait(self, ops: Sequence[Op]) -> None:
        """Queue ``ops`` that nobody waits for; failures are retried, then reported."""
        self._check_open()
        self._ensure_flusher()
        self._queue.append(_Pending(ops, None))
        self._kick()

    def flushing_here(self) -> bool:
        """Whether the flusher runs on the current event loop (so a ``notify`` made
        earlier on this loop will be acted on); False outside a loop."""
        task = self._task
        if task is None or task.done():
            return False
        try:
            return self._loop is asyncio.get_running_loop()
        except RuntimeError:
            return False

    def notify(self) -> None:
        """Say that ``collect`` has something: the flusher forms a batch soon."""
        self._check_open()
        self._ensure_flusher()
        self._kick()

    async def flush(self) -> None:
        """Wait until everything queued before this call is durable; raise if it failed."""
        self._check_open()
        await self._barrier()

    @property
    def pending(self) -> int:
        """How many queued writes are not durable yet."""
        return len(self._queue)

    async def aclose(self) -> None:
        """Write what is queued, then stop the flusher. Raise if queued writes were lost."""
        if self._closed:
            return
        error: TaskloomError | None = None
        if self._queue or self._has_pending():
            try:
                await self._barrier()
            except TaskloomError as exc:  # includes UsageError when no event loop runs
                error = exc
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        lost = [p for p in self._queue if p.ops]
        self._queue.clear()
        for pending in lost:
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(UsageError("the run store was closed"))
        if lost or self._has_pending():
            count = sum(len(p.ops) for p in lost)
            raise StorageUnavailable(
                f"{count} queued write(s) and the pending events could not be written before "
                f"close: {error or self._last_error}; check the storage and resume the run "
                "to regenerate its history"
            ) from (error or self._last_error)

    # --- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("the run store is closed; create a new RunStore to write")

    async def _barrier(self) -> None:
        if (
            not self._queue
            and not self._has_pending()
            and (self._task is None or self._task.done())
        ):
            return
        loop = self._ensure_flusher()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append(_Pending((), future))
        self._kick()
        await future

    def _ensure_flusher(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError(
                "the run store writes from a running event loop; call it from async code"
            ) from None
        if self._task is None or self._task.done() or self._loop is not loop:
            if self._loop is not None and self._loop is not loop:
                # A new event loop (a sync facade calling asyncio.run again): futures of the
                # old loop cannot be resolved from here; the unwaited writes are kept.
                self._queue = collections.deque(p for p in self._queue if p.future is None)
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name="taskloom-runstore-flusher")
        return loop

    def _kick(self) -> None:
        assert self._wakeup is not None
        self._wakeup.set()

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        count = 0
        while self._queue:
            size = len(self._queue[0].ops)
            if batch and count + size > self._max_batch_ops:
                break
            batch.append(self._queue.popleft())
            count += size
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            while self._queue or self._has_pending():
                batch = self._take_batch()
                if self._collect is not None:
                    collected = await self._collect()
                    if collected:
                        # After any requeued (older) unwaited writes, so streams stay in order.
                        batch.append(_Pending(collected, None))
                ops = merged(batch)
                if not batch:
                    break  # collect kept its items back (it reports why): retry on next kick
                try:
                    if ops:
                        await self._storage.commit(ops)
                except asyncio.CancelledError:
                    self._queue.extendleft(reversed(batch))
                    raise
                except Exception as exc:  # every failure reaches a waiter or a later flush
                    error = self._translate(exc)
                    if isinstance(error, ConflictError) and await self._drop_lost(batch, ops):
                        continue  # the rest of the batch goes again, without the lost runs
                    await self._failed(batch, error)
                    continue
                if ops:
                    self.commits += 1
                self._failures = 0
                self._last_error = None
                for pending in batch:
                    if pending.future is not None and not pending.future.done():
                        pending.future.set_result(None)

    async def _drop_lost(self, batch: list[_Pending], ops: Sequence[Op]) -> bool:
        """After a failed check: fail the writes of runs whose lease was lost, queue the
        others again at the head; False if no run lost its lease (a real conflict)."""
        if self._fenced is None:
            return False
        try:
            lost = await self._fenced(ops)
        except TaskloomError:
            return False  # cannot tell: the batch fails as it is
        if not lost:
            return False
        names = frozenset(lost)
        kept: list[_Pending] = []
        for pending in batch:
            if pending.run is not None and pending.run in lost:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(lost[pending.run])
                continue
            if pending.future is None and self._unfenced is not None:
                rest = self._unfenced(pending.ops, names)
                if rest:
                    kept.append(_Pending(rest, None))
                continue
            kept.append(pending)
        for run, error in lost.items():
            self._broken[run] = error
        self._queue.extendleft(reversed(kept))
        if self._broken:
            self._fail_broken()
        return True

    async def _failed(self, batch: list[_Pending], error: TaskloomError) -> None:
        """Fail the batch's waiters; put its unwaited writes back and back off before retrying."""
        self._last_error = error
        unwaited = [p for p in batch if p.future is None and p.ops]
        for pending in batch:
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
            if pending.chain is not None:
                self._broken.setdefault(pending.chain, error)
        if self._broken:
            self._fail_broken()  # later writes of a broken chain fail instead of committing
        if not unwaited:
            return
        self._queue.extendleft(reversed(unwaited))
        delay = self._retry_delays[min(self._failures, len(self._retry_delays) - 1)]
        self._failures += 1
        logger.warning(
            "run store: %d event write(s) failed (%s); retrying in %.2fs",
            sum(len(p.ops) for p in unwaited),
            error,
            delay,
        )
        await asyncio.sleep(delay)

    @staticmethod
    def _translate(exc: Exception) -> TaskloomError:
        if isinstance(exc, TaskloomError):
            return exc
        translated = StorageError(
            f"the storage adapter failed with {type(exc).__name__}: {exc}; "
            "adapters must raise taskloom's StorageError types"
        )
        translated.__cause__ = exc
        return translated
