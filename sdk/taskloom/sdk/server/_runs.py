"""What the API does to runs: submit, cancel, resume, delete, without HTTP in sight.

``RunControl`` is the one place that starts or stops runs for the API. Submission
goes through the engine's durable queue (``Engine.submit``: validated first,
idempotent by key, run by whichever worker claims it: ``taskloom serve --workers N``
runs workers in the server's process, ``taskloom worker`` elsewhere). Cancel works
wherever the run is (``taskloom.sdk._runs.cancel``): the request waits a bounded
time for the holder to stop and answers either way. Resume continues a run in this
process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import attrs

from taskloom.contracts import (
    DecodeError,
    NotWaiting,
    PipelineChanged,
    RecordDamaged,
    RunHeld,
    RunNotFound,
    RunStarted,
    UsageError,
)
from taskloom.sdk._engine.engine import Engine
from taskloom.sdk._engine.handle import RunHandle
from taskloom.sdk._runs.cancel import cancel_run
from taskloom.sdk._runs.records import FINISHED_STATUSES, RunRecord, RunStatus
from taskloom.sdk._runs.store import RunStore

CANCEL_WAIT_S = 15.0
"""How long a cancel request waits for the run's holder to record it (it sees the
request at its next lease renewal: a third of the engine's lease TTL)."""


@attrs.frozen
class Submitted:
    """A run the API submitted (or found by its idempotency key)."""

    run_id: str
    status: RunStatus


class RunControl:
    """Submits, cancels, resumes and deletes runs of one engine for the API."""

    def __init__(self, engine: Engine, *, cancel_wait_s: float = CANCEL_WAIT_S) -> None:
        self.engine = engine
        self.cancel_wait_s = cancel_wait_s
        self._handles: dict[str, RunHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def runstore(self) -> RunStore:
        store = self.engine.runstore
        if store is None:
            raise UsageError(
                "this engine keeps no state (storage=None): the API needs a store to "
                "keep runs in; build the engine with a StorageAdapter"
            )
        return store

    def local(self, run_id: str) -> RunHandle | None:
        """The handle of a run this API resumed in this process and that still runs."""
        handle = self._handles.get(run_id)
        if handle is not None and handle.done():
            self._handles.pop(run_id, None)
            return None
        return handle

    def _track(self, handle: RunHandle) -> asyncio.Future[None]:
        """Keep ``handle`` while it runs; the future resolves once its run has started
        (its record says running) or ended before that."""
        self._handles[handle.run_id] = handle
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            try:
                async for _event in handle.events():
                    break  # RunStarted: emitted once the record says running
            finally:
                if not started.done():
                    started.set_result(None)
            with contextlib.suppress(BaseException):
                await handle.result()
            if self._handles.get(handle.run_id) is handle:
                del self._handles[handle.run_id]

        self._spawn(watch(), f"taskloom-api-{handle.run_id}")
        return started

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def submit(
        self,
        pipeline: Mapping[str, Any],
        inputs: Mapping[str, Any],
        *,
        idempotency_key: str | None,
        queue: str,
        priority: int,
    ) -> Submitted:
        """Queue a run (``Engine.submit``); PipelineInvalid, UnknownQueue or
        SubmissionConflict when refused, and then nothing is queued."""
        await self.engine.open()
        run_id = await self.engine.submit(
            dict(pipeline),
            dict(inputs),
            idempotency_key=idempotency_key,
            queue=queue,
            priority=priority,
        )
        if idempotency_key is None:
            # a new run under a fresh id, stored as queued just now: no need to read it back
            return Submitted(run_id, "queued")
        return Submitted(run_id, await self._status(run_id))  # maybe an earlier run's

    async def _status(self, run_id: str) -> RunStatus:
        return (await self.runstore.load_run(run_id)).status

    async def cancel(self, run_id: str) -> tuple[RunRecord, bool]:
        """Cancel the run wherever it runs; return its record and whether it has stopped.

        Waits up to ``cancel_wait_s`` for the holder to record the cancel (it sees the
        request at its next lease renewal); past that the cancel goes on in the
        background and the record as it stands is returned. A run that had already
        finished is a 409 (``_Finished``).
        """
        store = self.runstore
        record = await store.load_run(run_id)
        if record.status in FINISHED_STATUSES:
            raise _Finished(f"run {run_id} already {record.status}; nothing to cancel")
        handle = self.local(run_id)
        if handle is not None:
            handle.cancel()
        task = self._spawn(cancel_run(store, run_id), f"taskloom-api-cancel-{run_id}")
        try:
            async with asyncio.timeout(self.cancel_wait_s):
                outcome = await asyncio.shield(task)
        except TimeoutError:
            return await store.load_run(run_id), False
        if not outcome.cancelled:
            raise _Finished(
                f"run {run_id} {outcome.record.status} before the cancel reached it; "
                "nothing to cancel"
            )
        return outcome.record, True

    async def resume(self, run_id: str) -> RunRecord:
        """Continue the run in this process; RunHeld if it is running somewhere."""
        store = self.runstore
        record = await store.load_run(run_id)
        if self.local(run_id) is not None:
            raise RunHeld(f"run {run_id} is running in this server; wait for it or cancel it")
        if record.status == "succeeded":
            raise _Finished(f"run {run_id} already succeeded; nothing to resume")
        if record.status == "queued":
            raise _Finished(
                f"run {run_id} is queued: a worker will run it (start one with "
                "`taskloom worker` or `taskloom serve --workers N`); nothing to resume"
            )
        lease = await store.lease(run_id)
        if (
            lease is not None
            and lease.expires_at > store.clock()
            and lease.holder != (self.engine.holder)
        ):
            raise RunHeld(
                f"run {run_id} is held by {lease.holder} until its lease expires; "
                "cancel it first or try again later",
                holder=lease.holder,
                expires_at=lease.expires_at,
            )
        handle = self.engine.start_resume(run_id)
        stored = self._track(handle)
        await asyncio.shield(stored)
        # the resume itself was refused; a run that failed was resumed
        await _raise_refusal(handle, (RunHeld, PipelineChanged, RunNotFound, DecodeError))
        return await store.load_run(run_id)

    async def provide(self, run_id: str, step_id: str, value: Any, *, by: str | None) -> RunRecord:
        """Give waiting step ``step_id`` its value and continue the run in this process;
        return the run's record once the run has started again (or ended).

        Every refusal of ``Engine.provide`` (a value of the wrong shape, a step that
        does not wait, a run held elsewhere) is raised here, before anything is recorded.
        """
        store = self.runstore
        if self.local(run_id) is not None:
            raise RunHeld(f"run {run_id} is running in this server; wait for it or cancel it")
        handle = await self.engine.start_provide(run_id, step_id, value, by=by)
        async for event in handle.events():
            if isinstance(event, RunStarted):
                break  # the value is checkpointed and the record says running
        self._track(handle)
        # refused under the lease (another provider was first)
        await _raise_refusal(handle, (RunHeld, NotWaiting, RunNotFound, DecodeError))
        return await store.load_run(run_id)

    async def delete(self, run_id: str) -> None:
        """Delete the run; RunNotFound if there is none, RunHeld if it is running."""
        store = self.runstore
        # deleting a damaged run is how it is repaired (as ``taskloom delete``)
        with contextlib.suppress(RecordDamaged):
            await store.load_run(run_id)
        if self.local(run_id) is not None:
            raise RunHeld(f"run {run_id} is running in this server; cancel it first")
        await store.delete_run(run_id)

    async def aclose(self) -> None:
        """Stop the background cancels and forget what was tracked (the engine cancels
        its own runs when it closes)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._handles.clear()


class _Finished(UsageError):
    """A cancel or resume of a run whose outcome rules it out (HTTP 409)."""

    http_status = 409


async def _raise_refusal(handle: RunHandle, refusals: tuple[type[Exception], ...]) -> None:
    """If ``handle`` already ended, raise its error when it is one of ``refusals`` (the
    request itself was refused). Any other ending -- a run that went on and failed or
    was cancelled -- is the run's outcome, which its record says; it is not raised."""
    if not handle.done():
        return
    try:
        await handle.result()
    except refusals:
        raise
    except (Exception, asyncio.CancelledError):
        return
