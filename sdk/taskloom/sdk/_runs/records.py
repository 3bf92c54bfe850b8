"""What a durable run stores: the run record, one record per finished step, and helpers.

Everything here is data that outlives the process that wrote it, so each stored
record carries ``format`` and is JSON through :mod:`taskloom.contracts.serde`
(never pickle: stored state must never be able to run code when read back;
``taskloom.sdk._runs.codec`` writes and reads the bytes). Reading a record of another
format, or one whose content does not match its type, raises
:class:`~taskloom.contracts.DecodeError` naming the record's namespace and key,
so that a resume stops with a message a person can act on instead of continuing
from a silently defaulted state.

Storage layout (see ``notes/runstore_interface.md``):

- ``runs`` / ``run_id`` -> :class:`RunRecord`
- ``runs_by_time`` / ``{inverted microseconds:017d}/{run_id}`` -> :class:`RunIndexEntry`
  (ascending key order is newest first, so a limited listing reads only what it shows)
- ``steps`` / ``{run_id}/{step_id}/{item or "-"}`` -> :class:`StepRecord`
- ``leases`` / ``run_id`` -> :class:`LeaseRecord`
- ``cache`` / ``key`` -> :class:`CacheEntry` (with a storage TTL)
- ``deleted_runs`` / ``run_id`` -> :class:`Tombstone`
- ``fences`` / ``run_id`` -> :class:`Fence`: rewritten only when a holder acquires the
  run, so every write of the run carries a check of its version (renewals of the
  lease do not move it): a holder that lost the run can never write again
- stream ``run:{run_id}:events`` -> :class:`EventBatch` per entry: the events one group
  commit wrote for the run, numbered from ``first`` (event numbers are gapless from 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import attrs

from taskloom.contracts import (
    FINISH_REASONS,
    CompletionResult,
    ErrorInfo,
    Event,
    Usage,
)
from taskloom.contracts._llm import FinishReason
from taskloom.contracts._quick import covers, explain

_v = attrs.validators

RECORD_FORMAT = 1
"""The format every record below is written with; reading another one is refused."""

RunStatus = Literal["pending", "queued", "running", "waiting", "succeeded", "failed", "cancelled"]
RUN_STATUSES: tuple[str, ...] = (
    "pending",
    "queued",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "cancelled",
)
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
StepStatus = Literal["succeeded", "failed"]

NS_RUNS = "runs"
NS_RUNS_BY_TIME = "runs_by_time"
NS_STEPS = "steps"
NS_LEASES = "leases"
NS_CACHE = "cache"
NS_TOMBSTONES = "deleted_runs"
NS_FENCES = "fences"
NS_CACHE_OWNERS = "cache_by_run"
"""``<run id>/<cache key>``: the cache entries a run wrote, so deleting the run removes them."""

_TIME_SPAN_US = 10**16
"""Inverted-time origin for index keys: microsecond epoch times stay below 2**53 and this."""


def _float(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _opt_float(value: object) -> object:
    return _float(value)


_format = [_v.instance_of(int), _v.ge(1)]
_opt_float_v = _v.optional(_v.instance_of(float))


def _nonempty_str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name} must be non-empty text, got {value!r}")


def _waiting_map(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(t, float) for k, t in value.items()
    ):
        raise TypeError(f"{attribute.name} must be a dict of step id -> epoch seconds")


def _usage_map(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(u, Usage) for k, u in value.items()
    ):
        raise TypeError(f"{attribute.name} must be a dict of executor id -> Usage")


@attrs.frozen(kw_only=True)
class RunRecord:
    """One run: what was asked (pipeline, inputs), where it stands, and what it cost.

    Only what changes per run lives here; each finished step is its own
    :class:`StepRecord`, so a checkpoint writes what changed, never a snapshot.
    """

    run_id: str = attrs.field(validator=_nonempty_str)
    pipeline_name: str = attrs.field(validator=_v.instance_of(str))
    pipeline_digest: str = attrs.field(validator=_v.instance_of(str))
    pipeline: dict[str, Any] = attrs.field(validator=_v.instance_of(dict))
    inputs: dict[str, Any] = attrs.field(validator=_v.instance_of(dict))
    status: RunStatus = attrs.field(validator=_v.in_(RUN_STATUSES))
    created_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    started_at: float | None = attrs.field(
        default=None, converter=_opt_float, validator=_opt_float_v
    )
    finished_at: float | None = attrs.field(
        default=None, converter=_opt_float, validator=_opt_float_v
    )
    output: Any = None
    error: ErrorInfo | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(ErrorInfo))
    )
    usage: Usage = attrs.field(factory=Usage, validator=_v.instance_of(Usage))
    usage_by_executor: dict[str, Usage] = attrs.field(factory=dict, validator=_usage_map)
    steps_done: int = attrs.field(default=0, validator=[_v.instance_of(int), _v.ge(0)])
    waiting: dict[str, float] = attrs.field(factory=dict, validator=_waiting_map)
    """Status ``waiting``: the input steps the run waits at, each with the time it began
    to wait (its ``timeout_s`` counts from there, across resumes)."""
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


_STEP_CHECKS: dict[str, Any] = {
    "run_id": _nonempty_str,
    "step_id": _nonempty_str,
    "item": _v.optional([_v.instance_of(int), _v.ge(0)]),
    "status": _v.in_(("succeeded", "failed")),
    "output": None,  # any JSON value: the encoder refuses what is not JSON
    "error": _v.optional(_v.instance_of(ErrorInfo)),
    "usage": _v.instance_of(Usage),
    "executor": _v.optional(_v.instance_of(str)),
    "attempts": _v.and_(_v.instance_of(int), _v.ge(0)),
    "started_at": _v.instance_of(float),
    "finished_at": _v.instance_of(float),
    "cached": _v.instance_of(bool),
    "finish_reason": _v.optional(_v.in_(FINISH_REASONS)),
    "format": _v.and_(*_format),
}
"""StepRecord's field validators, run by ``__attrs_post_init__`` when its quick check fails."""


@attrs.frozen(kw_only=True)
class StepRecord:
    """One finished step, or one finished map item (``item`` is its index).

    ``status`` is ``"failed"`` only for a step whose ``on_error`` is ``continue``:
    a failure that stops the run is not a checkpoint, so a resume retries it.

    A record is made for every step and map item a run finishes, so its fields are
    checked in one test (``taskloom.contracts._quick``); only when that fails do the
    per-field validators in ``_STEP_CHECKS`` run, to raise the error they always did.
    """

    run_id: str
    step_id: str
    item: int | None = None
    status: StepStatus = "succeeded"
    output: Any = None
    error: ErrorInfo | None = None
    usage: Usage = attrs.field(factory=Usage)
    executor: str | None = None
    attempts: int = 1
    started_at: float = attrs.field(converter=_float)
    finished_at: float = attrs.field(converter=_float)
    cached: bool = False
    finish_reason: FinishReason | None = None
    """Why an LLM step's reply ended; ``length`` marks a truncated text output."""
    format: int = RECORD_FORMAT

    @property
    def truncated(self) -> bool:
        """Whether the output is a reply cut off by ``max_tokens`` or the context window."""
        return self.finish_reason == "length"

    def __attrs_post_init__(self) -> None:
        if step_fields_ok(
            self.run_id,
            self.step_id,
            self.item,
            self.status,
            self.error,
            self.usage,
            self.executor,
            self.attempts,
            self.started_at,
            self.finished_at,
            self.cached,
            self.finish_reason,
            self.format,
        ):
            return
        explain(self, _STEP_CHECKS)  # raise what the failing field's validator says


def step_fields_ok(
    run_id: object,
    step_id: object,
    item: object,
    status: object,
    error: object,
    usage: object,
    executor: object,
    attempts: object,
    started_at: object,
    finished_at: object,
    cached: object,
    finish: object,
    format: object,
) -> bool:
    """StepRecord's one test of its fields (each exactly of its type, in range): when it
    passes, a record of them needs no validator and no converter changes them."""
    return bool(
        type(run_id) is str
        and run_id
        and type(step_id) is str
        and step_id
        and (item is None or (type(item) is int and item >= 0))
        and type(status) is str
        and (status == "succeeded" or status == "failed")
        and (error is None or type(error) is ErrorInfo)
        and type(usage) is Usage
        and (executor is None or type(executor) is str)
        and type(attempts) is int
        and attempts >= 0
        and type(started_at) is float
        and type(finished_at) is float
        and type(cached) is bool
        and (finish is None or finish in FINISH_REASONS)
        and type(format) is int
        and format >= 1
    )


covers(StepRecord, _STEP_CHECKS)


@attrs.frozen(kw_only=True)
class RunIndexEntry:
    """The time index's view of a run: enough to filter a listing without reading runs."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    pipeline_name: str = attrs.field(validator=_v.instance_of(str))
    status: RunStatus = attrs.field(validator=_v.in_(RUN_STATUSES))
    created_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class LeaseRecord:
    """Who may advance a run, until when (by the run store's clock)."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    holder: str = attrs.field(validator=_nonempty_str)
    acquired_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    expires_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    cancel_requested_at: float | None = attrs.field(
        default=None, converter=_opt_float, validator=_opt_float_v
    )
    """Set by ``RunStore.request_cancel`` (another process asked the run to stop): the
    holder sees it at its next renewal, records the run cancelled and releases."""
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class Fence:
    """Who last acquired a run; its record version is the run's fencing token."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    holder: str = attrs.field(validator=_nonempty_str)
    acquired_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class CacheEntry:
    """A cached reply; the storage TTL decides when it is gone."""

    result: CompletionResult = attrs.field(validator=_v.instance_of(CompletionResult))
    stored_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class Tombstone:
    """Marks a deleted run whose event stream is not (yet) erased.

    Reading the events of a tombstoned run returns nothing, and its id cannot be
    used again (the old stream entries would mix with the new run's). On a store
    that can drop streams (``StreamDropping``) the tombstone only lives while the
    deletion is under way: it goes with the stream, and ``prune`` finishes any
    deletion a crash interrupted.
    """

    run_id: str = attrs.field(validator=_v.instance_of(str))
    deleted_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


def _event_list(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, list) or not value:
        raise TypeError(f"{attribute.name} must be a non-empty list of events")


@attrs.frozen(kw_only=True)
class EventBatch:
    """One stream entry: the events of one run that one group commit wrote.

    Packing a batch into one entry makes events cost one append per commit instead
    of one per event (a 10,000-item map emits 20,000 events). Events keep their own
    numbers: the entry's events are ``first``, ``first + 1``, ... with no gaps
    across entries, so ``events(after=n)`` means the same as with one per entry.
    """

    first: int = attrs.field(validator=[_v.instance_of(int), _v.ge(1)])
    events: list[Event] = attrs.field(validator=_event_list)
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


def step_key(run_id: str, step_id: str, item: int | None) -> str:
    """The ``steps`` key of one finished step or map item (item 0 is ``0``, not ``-``)."""
    return f"{run_id}/{step_id}/{'-' if item is None else item}"


def events_stream(run_id: str) -> str:
    """The name of a run's event stream."""
    return f"run:{run_id}:events"


def inverted_time(at: float) -> int:
    """Map an epoch time to a number that sorts newest first as zero-padded text."""
    micros = round(at * 1_000_000)
    return max(0, min(_TIME_SPAN_US - 1, _TIME_SPAN_US - micros))


def index_key(run_id: str, created_at: float) -> str:
    """The ``runs_by_time`` key of a run: ascending key order is newest first."""
    return f"{inverted_time(created_at):017d}/{run_id}"


def index_time(key: str) -> float:
    """The creation time an index key stands for (to the microsecond); ValueError if
    ``key`` is not one."""
    inverted, slash, _ = key.partition("/")
    if not slash or len(inverted) != 17 or not inverted.isdigit():
        raise ValueError(f"not a run index key: {key!r}")
    return (_TIME_SPAN_US - int(inverted)) / 1_000_000


def index_entry(record: RunRecord) -> RunIndexEntry:
    """The index entry that mirrors ``record`` (written in the same commit)."""
    return RunIndexEntry(
        run_id=record.run_id,
        pipeline_name=record.pipeline_name,
        status=record.status,
        created_at=record.created_at,
    )


# --- usage accounting ---------------------------------------------------------


def total_usage(steps: Iterable[StepRecord]) -> Usage:
    """The run's usage: every step's and map item's tokens summed."""
    total = Usage()
    for step in steps:
        total = total + step.usage
    return total


def usage_by_step(steps: Iterable[StepRecord]) -> dict[str, Usage]:
    """Tokens per step id; a map step's items add up under the map's body step id."""
    sums: dict[str, Usage] = {}
    for step in steps:
        sums[step.step_id] = sums.get(step.step_id, Usage()) + step.usage
    return sums


def usage_by_executor(steps: Iterable[StepRecord]) -> dict[str, Usage]:
    """Tokens per executor id; steps that called no executor (plugin steps) are left out."""
    sums: dict[str, Usage] = {}
    for step in steps:
        if step.executor is not None:
            sums[step.executor] = sums.get(step.executor, Usage()) + step.usage
    return sums
