"""Input and approval steps: a run that waits for a value from outside, and ``provide``.

Reaching an input step without a value, a run emits ``StepWaiting`` and goes on
with what does not depend on it; once nothing else can run, the drive records the
run ``waiting`` (with the time each step began to wait) and releases its lease:
no process holds a waiting run. ``Engine.provide`` checks the value against the
step's JSON Schema before anything is written, then drives the run again in the
caller: under the run's lease it checks once more that the step still waits,
checkpoints the value (the step's output) with an ``InputProvided`` event naming
who gave it, and runs what follows. A step past its ``timeout_s`` is resolved
when the run is next driven (``resume`` or ``provide``): ``on_timeout: fail``
fails it with ``InputTimedOut``, ``default`` goes on with the default.
A rejected approval fails the run with ``ApprovalRejected``, whatever ``on_error``.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from typing import Any

import attrs

from taskloom.contracts import (
    AlreadyProvided,
    ApprovalRejected,
    InputProvided,
    InputRejected,
    InputTimedOut,
    NotWaiting,
    StepFailed,
    StepFailedEvent,
    StepSucceeded,
    StepWaiting,
    Usage,
)
from taskloom.sdk._engine.calls import error_info
from taskloom.sdk._engine.leaf import LeafRunner, settle
from taskloom.sdk._pipeline.checks import json_value_problem
from taskloom.sdk._pipeline.plan import NodePlan
from taskloom.sdk._pipeline.replyschema import check
from taskloom.sdk._pipeline.template import Scope, TemplateRenderError, to_text
from taskloom.sdk._runs.records import RunRecord, StepRecord
from taskloom.sdk._runs.store import RunStore

WAITING: Any = object()
"""What ``wait_or_resolve`` returns for a step that waits (its dependents do not start)."""


@attrs.frozen
class Provided:
    """A value to checkpoint for a waiting step before the run goes on."""

    step_id: str
    value: Any
    by: str


def default_provider() -> str:
    """Who provides a value when the caller does not say: the OS user."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (no USER, no passwd entry)
        return "unknown"


def rejected(node: NodePlan, value: Any) -> str | None:
    """The comment of an approval step's ``reject`` decision, or None if not rejected."""
    if node.approval and isinstance(value, Mapping) and value.get("decision") == "reject":
        comment = value.get("comment")
        return comment if isinstance(comment, str) else ""
    return None


def rejection(run: LeafRunner, node: NodePlan, comment: str) -> StepFailed:
    """Emit the failure of a rejected approval step; return the error that fails the run."""
    reason = f": {comment}" if comment else " (no comment given)"
    cause = ApprovalRejected(
        f"approval step {node.id!r} was rejected{reason}", step_id=node.id, comment=comment
    )
    info = error_info(cause, run.svc.redact)
    run.emit(
        StepFailedEvent(
            run_id=run.run_id, at=run.svc.clock(), step_id=node.id, attempt=1, error=info
        )
    )
    run.failed_step = node.id
    failure = StepFailed(str(cause), step_id=node.id, cause_type="ApprovalRejected")
    failure.__cause__ = cause
    return failure


def timed_out(node: NodePlan, since: float, now: float) -> bool:
    """Whether an input step that began to wait at ``since`` is past its ``timeout_s``."""
    return node.timeout_s is not None and now >= since + node.timeout_s


async def wait_or_resolve(
    run: LeafRunner, node: NodePlan, scope: Scope, waiting: dict[str, float], since: float | None
) -> Any:
    """An input step without a value: wait (``WAITING``), or resolve its timeout.

    ``since`` is when the step began to wait in an earlier drive (None: it starts
    now); the step id and that time go into ``waiting`` when it waits.
    """
    svc = run.svc
    now = svc.clock()
    began = since if since is not None else now
    if timed_out(node, began, now):
        if node.on_timeout == "default":
            value = node.input_default
            comment = rejected(node, value)
            if comment is not None:
                raise rejection(run, node, comment)
            run.emit(
                StepSucceeded(
                    run_id=run.run_id,
                    at=now,
                    step_id=node.id,
                    attempt=1,
                    duration_s=now - began,
                    usage=Usage(),
                )
            )
            await settle(
                run._queue_checkpoint(
                    node.id, None, value, attempts=1, usage=Usage(), started=began, finished=now
                )
            )
            return value
        late = InputTimedOut(
            f"input step {node.id!r} waited past its timeout_s of {node.timeout_s} s "
            "without a value (on_timeout: fail)",
            run_id=run.run_id,
            step_id=node.id,
            timeout_s=node.timeout_s or 0.0,
        )
        return await run._leaf_failed(node, node.id, None, late, 1, began)
    assert node.input_prompt is not None
    try:
        shown = node.input_prompt(scope)
    except TemplateRenderError as exc:
        failure = StepFailed(str(exc), step_id=node.id, cause_type="TemplateRenderError")
        return await run._leaf_failed(node, node.id, None, failure, 1, now)
    waiting[node.id] = began
    run.emit(
        StepWaiting(
            run_id=run.run_id,
            at=now,
            step_id=node.id,
            prompt=shown if isinstance(shown, str) else to_text(shown),
            schema=node.input_schema,
            timeout_at=began + node.timeout_s if node.timeout_s is not None else None,
        )
    )
    return WAITING


def value_problems(node: NodePlan, value: Any) -> list[str]:
    """Every way ``value`` is not a value for input step ``node`` (``path: reason``)."""
    problem = json_value_problem(value)
    if problem is not None:
        return [f"$: {problem}"]
    if node.input_schema is None:
        return []
    return check(value, node.input_schema)


def refuse_value(run_id: str, node: NodePlan, problems: list[str]) -> InputRejected:
    """The error for a value of the wrong shape (``problems`` is not empty)."""
    path, _sep, reason = problems[0].partition(": ")
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    kind = "approval" if node.approval else "input"
    expect = (
        'give {"decision": "approve"} or {"decision": "reject", "comment": "why"}'
        if node.approval
        else "give a value that matches the step's schema (`taskloom events RUN` shows it)"
    )
    return InputRejected(
        f"value refused at {path}: {reason}{more}; nothing was recorded for {kind} step "
        f"{node.id!r} of run {run_id}: {expect}",
        run_id=run_id,
        step_id=node.id,
        path=path or "$",
        problems=problems,
    )


def check_waiting(
    record: RunRecord, node: NodePlan, finished: Mapping[tuple[str, int | None], Any]
) -> None:
    """Raise ``AlreadyProvided`` or ``NotWaiting`` unless the run waits at ``node`` now."""
    run_id, step_id = record.run_id, node.id
    if (step_id, None) in finished:
        raise AlreadyProvided(
            f"step {step_id!r} of run {run_id} already has its value (provided before, or "
            "its timeout's default); a value is provided once",
            run_id=run_id,
            step_id=step_id,
            status=record.status,
        )
    if record.status != "waiting" or step_id not in record.waiting:
        if record.status == "waiting":
            why = f"it waits at {', '.join(sorted(record.waiting))}, not at {step_id!r} yet"
        elif record.status in ("succeeded", "failed", "cancelled"):
            why = f"the run has {record.status}"
        else:
            why = f"the run is {record.status} and has not reached the step"
        raise NotWaiting(
            f"step {step_id!r} of run {run_id} is not waiting for a value: {why}",
            run_id=run_id,
            step_id=step_id,
            status=record.status,
        )


async def take_provided(
    store: RunStore,
    record: RunRecord,
    node: NodePlan,
    provided: Provided,
    finished: Mapping[tuple[str, int | None], Any],
    clock_now: float,
) -> tuple[StepRecord, InputProvided]:
    """Under the run's lease: check the step still waits, checkpoint the value durably.

    ``record`` and ``finished`` must be read under the lease. Returns the checkpoint
    and the event to emit (the caller announces it).
    """
    check_waiting(record, node, finished)
    step = StepRecord(
        run_id=record.run_id,
        step_id=node.id,
        output=provided.value,
        attempts=1,
        started_at=record.waiting[node.id],
        finished_at=clock_now,
    )
    await store.record_step(step)
    event = InputProvided(run_id=record.run_id, at=clock_now, step_id=node.id, by=provided.by)
    return step, event
