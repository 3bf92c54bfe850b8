"""What the API accepts and returns, as attrs types: the one source of the OpenAPI schema.

Handlers build these and the converter turns them into JSON; ``_openapi`` walks the
same classes to write ``/openapi.json``, so a field added here appears in both.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from taskloom.contracts import ErrorInfo, InputSpec, Usage
from taskloom.sdk._runs.records import RunStatus

RunStatusName = RunStatus
"""A run's status, as the run store records it."""


@attrs.frozen(kw_only=True)
class SubmitRequest:
    """A run to submit: a pipeline (a name from the pipeline directories, or the
    pipeline itself), its inputs, and where it queues."""

    pipeline: str | dict[str, Any]
    inputs: dict[str, Any] = attrs.field(factory=dict)
    queue: str = attrs.field(default="default", metadata={"schema": {"minLength": 1}})
    priority: int = attrs.field(
        default=0, metadata={"schema": {"minimum": -1_000_000, "maximum": 1_000_000}}
    )


@attrs.frozen(kw_only=True)
class ProvideRequest:
    """The value for a waiting input or approval step (any JSON matching its schema;
    an approval takes {"decision": "approve"|"reject", "comment": "..."})."""

    value: Any


@attrs.frozen(kw_only=True)
class TaskSubmitted:
    """A submitted run: its id, its status now, and where to watch it."""

    run_id: str
    status: RunStatusName
    url: str
    events_url: str


@attrs.frozen(kw_only=True)
class TaskSummary:
    """One run in a listing: status, timings, usage."""

    run_id: str
    pipeline: str
    status: RunStatusName
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    usage: Usage
    total_tokens: int
    error: ErrorInfo | None
    url: str


@attrs.frozen(kw_only=True)
class DamagedTask:
    """A run in a listing whose stored record does not decode: its id and why. The
    listing goes on around it; ``DELETE`` on its ``url`` removes it."""

    run_id: str
    error: str
    url: str


@attrs.frozen(kw_only=True)
class TaskList:
    """A page of runs, newest first; ``next_cursor`` fetches the next page.

    ``damaged`` names the runs of this page whose stored record does not decode
    (listed only when no status or pipeline filter is given, as their status and
    pipeline cannot be read).
    """

    tasks: list[TaskSummary]
    damaged: list[DamagedTask]
    next_cursor: str | None


@attrs.frozen(kw_only=True)
class StepView:
    """One finished step (or map item): its output, outcome, usage and timings."""

    step_id: str
    item: int | None
    status: Literal["succeeded", "failed"]
    output: Any
    error: ErrorInfo | None
    usage: Usage
    executor: str | None
    attempts: int
    started_at: float
    finished_at: float
    duration_s: float
    cached: bool


@attrs.frozen(kw_only=True)
class TaskDetail:
    """One run: the record, its steps, usage, timings and outcome."""

    run_id: str
    pipeline: str
    pipeline_digest: str
    status: RunStatusName
    inputs: dict[str, Any]
    output: Any
    error: ErrorInfo | None
    usage: Usage
    total_tokens: int
    usage_by_executor: dict[str, Usage]
    steps: list[StepView]
    steps_done: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    url: str
    events_url: str
    waiting: list[str] = attrs.field(factory=list)
    """Status ``waiting``: the input steps waiting for a value (POST .../input/{step})."""


@attrs.frozen(kw_only=True)
class TaskAction:
    """The outcome of a cancel, resume or input request."""

    run_id: str
    status: RunStatusName
    detail: str


@attrs.frozen(kw_only=True)
class PipelineInfo:
    """A pipeline from the configured directories: its name and declared inputs."""

    name: str
    description: str
    digest: str
    inputs: dict[str, InputSpec]


@attrs.frozen(kw_only=True)
class PipelineList:
    """The pipelines that ``POST /api/tasks`` accepts by name."""

    pipelines: list[PipelineInfo]


@attrs.frozen(kw_only=True)
class Health:
    """The server is up and its store answers."""

    status: Literal["ok"]
    version: str


@attrs.frozen(kw_only=True)
class ProblemItem:
    """One thing wrong with a submitted pipeline or its inputs, with its JSON path."""

    path: str
    message: str
    hint: str


@attrs.frozen(kw_only=True)
class ProblemDetails:
    """An error (RFC 9457): ``error`` names taskloom's typed error, ``detail`` says what
    was wrong and what to do; ``problems`` lists every problem of an invalid pipeline."""

    type: str
    title: str
    status: int
    detail: str
    error: str
    problems: list[ProblemItem] | None = None
