"""Typed events of a run and the ``EventSink`` contract.

Every event carries ``run_id`` and ``at`` (epoch seconds). Step events carry
``step_id`` and, inside a ``map``, the ``item`` index. The converter tags each
event with ``type`` from ``EVENT_TYPES`` (an explicit, stable tag: renaming a
class never breaks stored events).

Naming: an event is named for what happened (``StepSucceeded``); where an exception
has the same name (``StepFailed``, ``RunCancelled`` are exceptions callers catch),
the event takes the suffix ``Event`` (``StepFailedEvent``, ``RunCancelledEvent``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

from taskloom.contracts._llm import FINISH_REASONS, FinishReason, Usage
from taskloom.contracts._quick import covers, explain

_v = attrs.validators


def _float(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


_opt_str = _v.optional(_v.instance_of(str))
_opt_int = _v.optional(_v.instance_of(int))


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """An error as data: its type name, its (redacted) message, whether retryable."""

    type: str = attrs.field(validator=_v.instance_of(str))
    message: str = attrs.field(validator=_v.instance_of(str))
    retryable: bool = attrs.field(default=False, validator=_v.instance_of(bool))


@attrs.frozen(kw_only=True)
class RunStarted:
    """A run began, or resumed (``resumed``), under the pipeline digest it records."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    pipeline: str = attrs.field(default="", validator=_v.instance_of(str))
    pipeline_digest: str = attrs.field(default="", validator=_v.instance_of(str))
    resumed: bool = attrs.field(default=False, validator=_v.instance_of(bool))


@attrs.frozen(kw_only=True)
class RunSucceeded:
    """A run finished with its output; stored in the commit of the record that says so."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    duration_s: float = attrs.field(default=0.0, converter=_float, validator=_v.instance_of(float))
    usage: Usage = attrs.field(factory=Usage, validator=_v.instance_of(Usage))


@attrs.frozen(kw_only=True)
class RunFailed:
    """A run stopped on an error (``step_id`` names the step, if one failed)."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    error: ErrorInfo = attrs.field(validator=_v.instance_of(ErrorInfo))
    step_id: str | None = attrs.field(default=None, validator=_opt_str)
    duration_s: float = attrs.field(default=0.0, converter=_float, validator=_v.instance_of(float))
    usage: Usage = attrs.field(factory=Usage, validator=_v.instance_of(Usage))


@attrs.frozen(kw_only=True)
class RunCancelledEvent:
    """A run was cancelled; what finished is kept and it can be resumed."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    duration_s: float = attrs.field(default=0.0, converter=_float, validator=_v.instance_of(float))
    usage: Usage = attrs.field(factory=Usage, validator=_v.instance_of(Usage))


_STEP_STARTED_CHECKS = {
    "run_id": _v.instance_of(str),
    "at": _v.instance_of(float),
    "step_id": _v.instance_of(str),
    "attempt": _v.instance_of(int),
    "item": _opt_int,
}


@attrs.frozen(kw_only=True)
class StepStarted:
    """An attempt of a step (or of one map ``item``) began."""

    run_id: str
    at: float = attrs.field(converter=_float)
    step_id: str
    attempt: int = 1
    item: int | None = None

    def __attrs_post_init__(self) -> None:  # one test per event, see _quick
        item = self.item
        if not (
            type(self.run_id) is str
            and type(self.at) is float
            and type(self.step_id) is str
            and type(self.attempt) is int
            and (item is None or type(item) is int)
        ):
            explain(self, _STEP_STARTED_CHECKS)


covers(StepStarted, _STEP_STARTED_CHECKS)


@attrs.frozen(kw_only=True)
class StepRetrying:
    """An attempt failed with a retryable error; the next starts after ``delay_s``."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    attempt: int = attrs.field(validator=_v.instance_of(int))
    delay_s: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    error: ErrorInfo = attrs.field(validator=_v.instance_of(ErrorInfo))
    item: int | None = attrs.field(default=None, validator=_opt_int)


_STEP_SUCCEEDED_CHECKS = {
    "run_id": _v.instance_of(str),
    "at": _v.instance_of(float),
    "step_id": _v.instance_of(str),
    "attempt": _v.instance_of(int),
    "duration_s": _v.instance_of(float),
    "usage": _v.instance_of(Usage),
    "item": _opt_int,
    "cached": _v.instance_of(bool),
    "finish_reason": _v.optional(_v.in_(FINISH_REASONS)),
}


@attrs.frozen(kw_only=True)
class StepSucceeded:
    """A step (or map item) finished; ``usage`` counts its tokens, ``cached`` a cache hit."""

    run_id: str
    at: float = attrs.field(converter=_float)
    step_id: str
    attempt: int = 1
    duration_s: float = attrs.field(default=0.0, converter=_float)
    usage: Usage = attrs.field(factory=Usage)
    item: int | None = None
    cached: bool = False
    finish_reason: FinishReason | None = None
    """Why an LLM step's reply ended (``length``: it was cut off); None for plugin steps."""

    @property
    def truncated(self) -> bool:
        """Whether the step's output is a reply cut off by ``max_tokens``."""
        return self.finish_reason == "length"

    def __attrs_post_init__(self) -> None:  # one test per event, see _quick
        item, finish = self.item, self.finish_reason
        if not (
            type(self.run_id) is str
            and type(self.at) is float
            and type(self.step_id) is str
            and type(self.attempt) is int
            and type(self.duration_s) is float
            and type(self.usage) is Usage
            and (item is None or type(item) is int)
            and type(self.cached) is bool
            and (finish is None or finish in FINISH_REASONS)
        ):
            explain(self, _STEP_SUCCEEDED_CHECKS)


covers(StepSucceeded, _STEP_SUCCEEDED_CHECKS)


@attrs.frozen(kw_only=True)
class StepFailedEvent:
    """A step failed; ``continued`` when its ``on_error: continue`` let the run go on."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    attempt: int = attrs.field(default=1, validator=_v.instance_of(int))
    error: ErrorInfo = attrs.field(validator=_v.instance_of(ErrorInfo))
    item: int | None = attrs.field(default=None, validator=_opt_int)
    continued: bool = attrs.field(default=False, validator=_v.instance_of(bool))


@attrs.frozen(kw_only=True)
class StepSkipped:
    """A step was not run (finished before a resume, or its condition said so)."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    reason: str = attrs.field(default="", validator=_v.instance_of(str))
    item: int | None = attrs.field(default=None, validator=_opt_int)


@attrs.frozen(kw_only=True)
class ChunkStreamed:
    """A piece of a streamed reply (live only: never stored)."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    delta: str = attrs.field(validator=_v.instance_of(str))
    index: int = attrs.field(default=0, validator=_v.instance_of(int))
    item: int | None = attrs.field(default=None, validator=_opt_int)


@attrs.frozen(kw_only=True)
class CacheHit:
    """A step's reply came from the response cache instead of a call."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    cache_key: str = attrs.field(validator=_v.instance_of(str))
    item: int | None = attrs.field(default=None, validator=_opt_int)


@attrs.frozen(kw_only=True)
class StepWaiting:
    """An input step waits for a value: the run pauses (status ``waiting``, lease released).

    ``prompt`` is what the step asks; ``schema`` the JSON Schema the value must match;
    ``timeout_at`` (epoch seconds) when its ``timeout_s`` runs out, if it has one.
    Provide the value with ``engine.provide`` or ``taskloom input RUN STEP --value JSON``.
    """

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    prompt: str = attrs.field(default="", validator=_v.instance_of(str))
    schema: dict[str, Any] | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(dict))
    )
    timeout_at: float | None = attrs.field(
        default=None, converter=_float, validator=_v.optional(_v.instance_of(float))
    )


@attrs.frozen(kw_only=True)
class InputProvided:
    """A value was provided to a waiting input step by ``by`` (an API token's name or an
    OS user); the value itself is the step's output (its checkpoint)."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    step_id: str = attrs.field(validator=_v.instance_of(str))
    by: str = attrs.field(validator=_v.instance_of(str))


Event = (
    RunStarted
    | RunSucceeded
    | RunFailed
    | RunCancelledEvent
    | StepStarted
    | StepRetrying
    | StepSucceeded
    | StepFailedEvent
    | StepSkipped
    | ChunkStreamed
    | CacheHit
    | StepWaiting
    | InputProvided
)
"""Any event of a run."""

EVENT_TYPES: dict[str, type[Event]] = {
    "run.started": RunStarted,
    "run.succeeded": RunSucceeded,
    "run.failed": RunFailed,
    "run.cancelled": RunCancelledEvent,
    "step.started": StepStarted,
    "step.retrying": StepRetrying,
    "step.succeeded": StepSucceeded,
    "step.failed": StepFailedEvent,
    "step.skipped": StepSkipped,
    "step.chunk": ChunkStreamed,
    "step.cache_hit": CacheHit,
    "step.waiting": StepWaiting,
    "step.input_provided": InputProvided,
}
"""The stable tag of each event type, as stored and as shown by ``--json``."""


@runtime_checkable
class EventSink(Protocol):
    """Receives events. ``emit`` must return quickly and never block the run.

    Invariants (checked by the event bus tests in ``tests/sdk``):

    EV1 A sink that raises or is slow never fails, blocks or slows the run
        that emitted the event; its errors are counted and logged.
    EV2 A sink receives the events of one run in the order they were emitted.
    """

    def emit(self, event: Event, /) -> None:
        """Take one event; return at once and never raise into the run (EV1, EV2)."""
