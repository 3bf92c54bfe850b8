"""What the API does to runs: submit, cancel, resume, delete, without HTTP in sight.

``RunControl`` is the one place that starts or stops runs for the API. Submission is
``submit``: until the engine has a durable queue, it starts the run in this process
(``engine.start``) and waits until its record is stored, so the run can be read back
the moment the response arrives; an idempotency key maps to the run it started (kept
in this process, checked and set without an await in between, so concurrent
submissions with one key start one run).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import attrs
import rfc8785

from taskloom.contracts import (
    ConflictError,
    DecodeError,
    PipelineChanged,
    PipelineInvalid,
    Problem,
    RunCancelledEvent,
    RunHeld,
    RunNotFound,
    TaskloomError,
    UsageError,
)
from taskloom.sdk._engine.engine import Engine
from taskloom.sdk._engine.handle import RunHandle
from taskloom.sdk._runs.records import FINISHED_STATUSES, RunRecord
from taskloom.sdk._runs.store import RunStore

CANCEL_WAIT_S = 10.0
"""How long a cancel of a run in this process waits for the run to record it."""


@attrs.frozen
class Submitted:
    """A run the API submitted (or found by its idempotency key)."""

    run_id: str
    status: str
    created: bool


class RunControl:
    """Starts, cancels, resumes and deletes runs of one engine for the API."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._handles: dict[str, RunHandle] = {}
        self._keys: dict[str, tuple[str, str, asyncio.Future[None]]] = {}
        """Idempotency key -> (request digest, run id, resolved once the record exists)."""

    @property
    def runstore(self) -> RunStore:
        store = self.engine.runstore
        if store is None:
            raise UsageError(
                "this engine keeps no state (storage=None): the API needs a store to "
                "keep runs in; build the engine with a StorageAdapter"
            )
        assert isinstance(store, RunStore)
        return store

    def local(self, run_id: str) -> RunHandle | None:
        """The handle of a run this process is executing, if any."""
        handle = self._handles.get(run_id)
        if handle is not None and handle.done():
            self._handles.pop(run_id, None)
            return None
        return handle

    def _track(self, handle: RunHandle) -> asyncio.Future[None]:
        """Keep ``handle`` while it runs; the future resolves once its record is stored."""
        self._handles[handle.run_id] = handle
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            try:
                async for _event in handle.events():
                    break  # RunStarted: emitted after the run record was created
            finally:
                if not stored.done():
                    stored.set_result(None)
            with contextlib.suppress(BaseException):
                await handle.result()
            if self._handles.get(handle.run_id) is handle:
                del self._handles[handle.run_id]

        asyncio.get_running_loop().create_task(watch(), name=f"taskloom-api-{handle.run_id}")
        return stored

    async def submit(
        self,
        pipeline: Mapping[str, Any],
        inputs: Mapping[str, Any],
        *,
        idempotency_key: str | None,
        queue: str,
        priority: int,
    ) -> Submitted:
        """Validate and start a run (see the module docstring); PipelineInvalid if bad."""
        await self.engine.open()
        if queue != "default":
            raise PipelineInvalid(
                [
                    Problem(
                        path="$.queue",
                        message=f"unknown queue {queue!r}",
                        hint="this server runs submissions in process: use the queue 'default'",
                    )
                ]
            )
        digest = _request_digest(pipeline, inputs, queue, priority)
        if idempotency_key is not None:
            known = self._keys.get(idempotency_key)
            if known is not None:
                return await self._same_key(idempotency_key, digest, known)
        handle = self.engine.start(dict(pipeline), dict(inputs))
        stored = self._track(handle)
        if idempotency_key is not None:
            self._keys[idempotency_key] = (digest, handle.run_id, stored)
        await asyncio.shield(stored)
        return Submitted(handle.run_id, await self._status(handle.run_id), True)

    async def _same_key(
        self, key: str, digest: str, known: tuple[str, str, asyncio.Future[None]]
    ) -> Submitted:
        known_digest, run_id, stored = known
        if known_digest != digest:
            raise ConflictError(
                f"Idempotency-Key {key!r} was used for a different submission (run "
                f"{run_id}); use a new key for a new run"
            )
        await asyncio.shield(stored)
        return Submitted(run_id, await self._status(run_id), False)

    async def _status(self, run_id: str) -> str:
        try:
            record = await self.runstore.load_run(run_id)
        except TaskloomError:
            return "pending"
        return record.status

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel the run; return its record afterwards. UsageError if it had finished."""
        store = self.runstore
        record = await store.load_run(run_id)
        handle = self.local(run_id)
        if handle is not None:
            handle.cancel()
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(CANCEL_WAIT_S):
                    await handle.result()
            return await store.load_run(run_id)
        if record.status in FINISHED_STATUSES:
            raise _Finished(f"run {run_id} already {record.status}; nothing to cancel")
        # Another process runs it (or nobody does): it finds its lease gone at its next
        # renewal and stops; the record says cancelled from now on.
        await store.revoke_lease(run_id)
        now = time.time()
        record = attrs.evolve(record, status="cancelled", finished_at=now)
        await store.update_run(record)
        store.record_event(RunCancelledEvent(run_id=run_id, at=now))
        await store.flush()
        return record

    async def resume(self, run_id: str) -> RunRecord:
        """Continue the run in this process; RunHeld if it is running somewhere."""
        store = self.runstore
        record = await store.load_run(run_id)
        if self.local(run_id) is not None:
            raise RunHeld(f"run {run_id} is running in this server; wait for it or cancel it")
        if record.status == "succeeded":
            raise _Finished(f"run {run_id} already succeeded; nothing to resume")
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
        if handle.done():
            try:
                await handle.result()
            except (RunHeld, PipelineChanged, RunNotFound, DecodeError):
                raise  # the resume itself was refused; a run that failed was resumed
            except BaseException:
                pass
        return await store.load_run(run_id)

    async def delete(self, run_id: str) -> None:
        """Delete the run; RunNotFound if there is none, RunHeld if it is running."""
        store = self.runstore
        await store.load_run(run_id)
        if self.local(run_id) is not None:
            raise RunHeld(f"run {run_id} is running in this server; cancel it first")
        await store.delete_run(run_id)

    async def aclose(self) -> None:
        """Forget what was tracked (the engine cancels its own runs when it closes)."""
        self._handles.clear()
        self._keys.clear()


class _Finished(UsageError):
    """A cancel or resume of a run whose outcome rules it out (HTTP 409)."""

    http_status = 409


def _request_digest(
    pipeline: Mapping[str, Any], inputs: Mapping[str, Any], queue: str, priority: int
) -> str:
    body: Any = {
        "pipeline": dict(pipeline),
        "inputs": dict(inputs),
        "queue": queue,
        "priority": priority,
    }
    try:
        return hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        return hashlib.sha256(repr(body).encode()).hexdigest()
