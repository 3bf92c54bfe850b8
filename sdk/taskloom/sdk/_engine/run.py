"""Driving one run: lease, run record, steps, outcome, events.

``drive`` is what ``Engine.run``, ``start`` and ``resume`` all end in. Under the
run's lease (``RunHeld`` if another process holds it) it creates or reopens the
run record, runs the steps (``taskloom.sdk._engine.steps``), renders the output, and records
the outcome -- succeeded, failed (``StepFailed``, or any other error that stopped
the run) or cancelled -- then flushes the events so the stored history is
complete when the caller gets the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from taskloom.contracts import (
    ChunkStreamed,
    Event,
    InternalError,
    RunCancelled,
    RunCancelledEvent,
    RunFailed,
    RunHeld,
    RunStarted,
    RunSucceeded,
    StepFailed,
    StepStarted,
)
from taskloom.sdk._engine.calls import error_info, first_error
from taskloom.sdk._engine.handle import History, RunResult
from taskloom.sdk._engine.lease import HeldLease
from taskloom.sdk._engine.steps import RunExecution
from taskloom.sdk._engine.waiting import Provided, take_provided
from taskloom.sdk._pipeline.plan import Plan
from taskloom.sdk._pipeline.template import TemplateRenderError
from taskloom.sdk._runs.records import RunRecord
from taskloom.sdk._runs.spend import spent_before

_log = logging.getLogger("taskloom.engine")

if TYPE_CHECKING:
    from taskloom.sdk._engine.engine import Engine


@attrs.define
class RunSpec:
    """Everything one run needs before it starts (or resumes)."""

    run_id: str
    plan: Plan
    inputs: dict[str, Any]
    record: Any  # RunRecord | None
    finished: Mapping[tuple[str, int | None], Any]
    resumed: bool
    history: History | None
    outcome_recorded: bool = False
    """Set once the run record says how the run ended: nothing may change that after."""
    provided: Provided | None = None
    """A value for the input step the run waits at, checkpointed under the lease first."""


def _stored(event: Event) -> bool:
    """Whether an event goes to the run's stored history (all go to the bus and handles).

    Streamed chunks are live-only (the step's output is stored whole), and so is the
    start of each *map item*: a map of 10,000 items would otherwise store 10,000
    events that say nothing their finish events (time and duration) do not.
    The start of every step, and every attempt, retry, finish and failure, is stored.
    """
    kind = type(event)
    if kind is ChunkStreamed:
        return False
    return not (kind is StepStarted and event.item is not None)  # type: ignore[union-attr]


async def drive(engine: Engine, spec: RunSpec) -> RunResult:
    """Run ``spec`` on ``engine``: lease, record, steps, outcome (see module docstring)."""
    telemetry = engine.telemetry
    if telemetry is None:
        return await _drive(engine, spec)
    result: RunResult = await telemetry.trace_run(
        engine.storage,
        run_id=spec.run_id,
        pipeline=spec.plan.pipeline.name,
        resumed=spec.resumed,
        body=_drive(engine, spec),
    )
    return result


async def _drive(engine: Engine, spec: RunSpec) -> RunResult:
    store = engine.runstore
    history = spec.history
    bus_emit = engine.bus.emit
    record_event = store.record_event if store is not None else None

    def announce(event: Event) -> None:
        """Hand ``event`` to the run's handle and the bus (storing it is separate)."""
        if history is not None:
            history.push(event)
        bus_emit(event)

    def emit(event: Event) -> None:
        if history is not None:  # announce(event), written out: every step emits twice
            history.push(event)
        bus_emit(event)
        if record_event is not None and _stored(event):
            record_event(event)

    bus_wants = engine.bus.wants

    def item_starts_seen() -> bool:
        return history is not None or bus_wants(StepStarted, spec.run_id)

    started = engine.clock()
    execution: RunExecution | None = None
    held: HeldLease | None = None
    begun: asyncio.Future[None] | None = None
    if store is not None:
        if spec.run_id in engine._driving:
            # the same holder would take the lease again and fence out the drive in hand
            if history is not None:
                history.close()
            raise RunHeld(
                f"run {spec.run_id} is already running in this engine: wait for it (its "
                "handle's result) before resuming it or providing a value again"
            )
        engine._driving.add(spec.run_id)
        held = HeldLease(store, spec.run_id, engine.holder, ttl_s=engine.lease_ttl_s)
    try:
        async with held if held is not None else contextlib.nullcontext():
            try:
                spent = None
                if store is not None:
                    if spec.resumed:
                        # what earlier processes spent, read before this one adds events
                        spec.finished = await store.finished_steps(spec.run_id)
                        spent = await spent_before(store, spec.record, spec.finished)
                    if spec.provided is not None:
                        await _take_provided(engine, spec, emit)
                    begun = await _begin(engine, spec, started)
                start = RunStarted(
                    run_id=spec.run_id,
                    at=started,
                    pipeline=spec.plan.pipeline.name,
                    pipeline_digest=spec.plan.digest,
                    resumed=spec.resumed,
                )
                if begun is not None:
                    # The record saying "running" and the RunStarted event go in one
                    # commit; subscribers hear of the start once it is durable, as before.
                    if record_event is not None and _stored(start):
                        record_event(start)
                    await begun
                execution = RunExecution(
                    run_id=spec.run_id,
                    plan=spec.plan,
                    inputs=spec.inputs,
                    services=engine,
                    finished=spec.finished,
                    emit=emit,
                    item_starts_seen=item_starts_seen,
                    spent=spent,
                    waiting_since=spec.record.waiting if spec.record is not None else None,
                )
                if begun is not None:
                    announce(start)
                else:
                    emit(start)
                try:
                    await execution.run_graph()
                except BaseExceptionGroup as group:
                    raise first_error(group) from None
                if execution.window is not None:
                    await execution.window.settle()  # never "succeeded" before all are durable
                if execution.waiting:
                    return await _pause(engine, spec, execution)
                output = engine.mask(_output(spec.plan, execution))
                if held is not None and await held.cancel_requested_now():
                    # cancelled from another process after its last renewal: never succeeded
                    await _finish(engine, spec, execution, "cancelled", None, None, announce)
                    raise _cancelled(spec.run_id)
                result = await _finish(engine, spec, execution, "succeeded", output, None, announce)
            except BaseException as exc:
                # The outcome is written while the lease is still ours: a canceller waiting
                # for the run sees the record before the lease goes.
                if execution is not None:
                    await _record_end(engine, spec, execution, exc, announce)
                raise
    except asyncio.CancelledError:
        task = asyncio.current_task()
        # (uncancel() == 0: only the cancel request cancelled us, nobody else did)
        if held is not None and held.cancel_requested and task is not None and task.uncancel() == 0:
            raise _cancelled(spec.run_id) from None
        raise
    finally:
        if execution is not None and execution.window is not None:
            execution.window.abandon()  # still queued, committed before the outcome
        if store is not None:
            store.end_run(spec.run_id)
            engine._driving.discard(spec.run_id)
        if history is not None:
            history.close()
    return result


async def _take_provided(engine: Engine, spec: RunSpec, emit: Callable[[Event], None]) -> None:
    """Under the lease: re-read the run, check the step still waits, checkpoint the value."""
    store = engine.runstore
    provided = spec.provided
    assert store is not None and provided is not None
    spec.record = await store.load_run(spec.run_id)
    node = spec.plan.by_id[provided.step_id]
    # a secret value the engine knows never reaches the checkpoint (as for any output)
    masked = Provided(provided.step_id, engine.mask(provided.value), provided.by)
    step, event = await take_provided(
        store, spec.record, node, masked, spec.finished, engine.clock()
    )
    spec.finished = {**spec.finished, (step.step_id, None): step}
    emit(event)


async def _pause(engine: Engine, spec: RunSpec, execution: RunExecution) -> RunResult:
    """Record the run ``waiting`` at its input steps (the lease goes when the drive ends)."""
    store = engine.runstore
    if store is not None and spec.record is not None:
        spec.record = attrs.evolve(
            spec.record,
            status="waiting",
            waiting=dict(execution.waiting),
            usage=execution.usage,
            usage_by_executor=dict(execution.usage_by_executor),
            steps_done=len(spec.finished) + execution.steps_done,
        )
        await store.update_run(spec.record)
    return RunResult(
        run_id=spec.run_id,
        status="waiting",
        output=None,
        usage=execution.usage,
        usage_by_executor=dict(execution.usage_by_executor),
        steps=dict(execution.outputs),
        waiting=tuple(execution.waiting),
    )


def _cancelled(run_id: str) -> RunCancelled:
    return RunCancelled(
        f"run {run_id} was cancelled from another process (taskloom cancel); what finished "
        f"is kept: `taskloom resume {run_id}` continues it"
    )


async def _record_end(
    engine: Engine,
    spec: RunSpec,
    execution: RunExecution,
    exc: BaseException,
    announce: Callable[[Event], None],
) -> None:
    """Record how a run that raised ``exc`` ended, unless its record already says so.

    A run whose lease was lost is another process's now: nothing of this one's is
    written, and it exits with ``LeaseLost`` whatever else failed meanwhile (its
    writes fail, so its steps may too).
    """
    if isinstance(exc, InternalError):  # a bug of ours: keep the whole story
        _log.error("run %s failed inside taskloom", spec.run_id, exc_info=exc)
    store = engine.runstore
    lost = store.lost_lease(spec.run_id) if store is not None else None
    if isinstance(exc, RunHeld) or (lost is not None and isinstance(exc, asyncio.CancelledError)):
        return
    if lost is not None:
        raise lost from None
    if spec.outcome_recorded:
        return
    if isinstance(exc, asyncio.CancelledError):
        # (a run whose record already says it succeeded stays succeeded: only the wait
        # for its last events was cancelled)
        await _finish(engine, spec, execution, "cancelled", None, None, announce)
    elif isinstance(exc, StepFailed):
        await _finish(engine, spec, execution, "failed", None, exc, announce)
    elif isinstance(exc, Exception):
        # A storage failure or a non-JSON output: record the failure if the store still
        # works, then let the original error through.
        with contextlib.suppress(Exception):
            await _finish(engine, spec, execution, "failed", None, exc, announce)


def _output(plan: Plan, execution: RunExecution) -> Any:
    if plan.output is None:
        return execution.outputs.get(plan.nodes[-1].id) if plan.nodes else None
    try:
        return plan.output(execution.scope)
    except TemplateRenderError as exc:
        raise StepFailed(
            f"the pipeline's output could not be rendered: {exc}",
            step_id="$output",
            cause_type="TemplateRenderError",
        ) from None


async def _begin(engine: Engine, spec: RunSpec, started: float) -> asyncio.Future[None] | None:
    """Store the run's record as running: a new run's record is created (durable on
    return); a stored run's is queued and the future of its commit returned, for the
    caller to send the RunStarted event along before awaiting it."""
    store = engine.runstore
    assert store is not None  # only runs of an engine with storage begin a record
    store.mend_checkpoints(spec.run_id)
    if spec.record is None:
        spec.record = RunRecord(
            run_id=spec.run_id,
            pipeline_name=spec.plan.pipeline.name,
            pipeline_digest=spec.plan.digest,
            pipeline=spec.plan.stored_pipeline,
            inputs=spec.inputs,
            status="running",
            created_at=started,
            started_at=started,
        )
        await store.create_run(spec.record)
        return None
    else:
        spec.record = attrs.evolve(
            spec.record,
            status="running",
            started_at=spec.record.started_at if spec.record.started_at is not None else started,
            finished_at=None,
            error=None,
        )
        return store.queue_update_run(spec.record)


async def _finish(
    engine: Engine,
    spec: RunSpec,
    execution: RunExecution,
    status: str,
    output: Any,
    error: BaseException | None,
    announce: Callable[[Event], None],
) -> RunResult:
    now = engine.clock()
    started = spec.record.started_at if spec.record is not None else None
    duration = now - (started if started is not None else now)
    info = error_info(error, engine.redact) if error is not None else None
    outcome: Event
    if status == "succeeded":
        outcome = RunSucceeded(
            run_id=spec.run_id, at=now, duration_s=duration, usage=execution.usage
        )
    elif status == "failed":
        assert info is not None
        outcome = RunFailed(
            run_id=spec.run_id,
            at=now,
            error=info,
            step_id=getattr(error, "step_id", None),
            duration_s=duration,
            usage=execution.usage,
        )
    else:
        outcome = RunCancelledEvent(
            run_id=spec.run_id, at=now, duration_s=duration, usage=execution.usage
        )
    store = engine.runstore
    if store is None or spec.record is None:
        announce(outcome)
    else:
        spec.record = attrs.evolve(
            spec.record,
            status=status,
            finished_at=now,
            output=output,
            error=info,
            usage=execution.usage,
            usage_by_executor=dict(execution.usage_by_executor),
            steps_done=len(spec.finished) + execution.steps_done,
            waiting={},
        )
        # The outcome event is written in the same commit as the record that says it
        # (a crash never leaves a finished run without it, and if the commit fails
        # neither lands), and announced once that commit succeeded: a success whose
        # record cannot be written (a non-JSON output, a failing store) is never
        # announced -- the run then fails, and that is announced. A failure or
        # cancellation is announced even when its record cannot be written.
        write: asyncio.Future[None] | None = None
        try:
            write = await store.queue_finish(spec.record, outcome)
            await asyncio.shield(write)
        except asyncio.CancelledError:
            if write is not None:
                # the write goes ahead: learn whether it landed before the cancel goes
                # on (however often the cancel is repeated: nothing else may be written
                # for the run until it settles)
                while not write.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([write])
                if write.done() and not write.cancelled() and write.exception() is None:
                    spec.outcome_recorded = True
                    announce(outcome)
                    raise
            if status != "succeeded":
                announce(outcome)
            raise
        except BaseException:
            if status != "succeeded":
                announce(outcome)
            raise
        spec.outcome_recorded = True
        announce(outcome)
    return RunResult(
        run_id=spec.run_id,
        status=status,
        output=output,
        usage=execution.usage,
        usage_by_executor=dict(execution.usage_by_executor),
        steps=dict(execution.outputs),
        error=info,
    )
