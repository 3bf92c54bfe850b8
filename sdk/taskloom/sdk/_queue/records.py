"""What the run queue stores, beside the run records of ``_runs``.

- ``queues`` / name -> :class:`QueueDefinition` (``default`` exists without a record)
- ``queue`` / ``{queue}/{priority rank:07d}/{submitted micros:017d}/{run_id}`` ->
  :class:`QueueEntry`: ascending key order is highest priority first, then oldest
- ``queue_tickets`` / run id -> :class:`QueueTicket`: the run's queue and priority,
  how often it was claimed, which concurrency slot it holds
- ``queue_slots`` / ``{queue}/{index:06d}`` -> :class:`QueueSlot`: one per running run
  of a queue with a concurrency limit; a queue has at most ``concurrency`` of them
- ``queue_pace`` / queue -> :class:`QueuePace`: when the next start of a rate-limited
  queue may happen
- ``idempotency`` / key -> :class:`IdempotencyEntry`: the run a key submitted
"""

from __future__ import annotations

from typing import Any

import attrs

from taskloom.sdk._runs.records import RECORD_FORMAT

_v = attrs.validators

NS_QUEUES = "queues"
NS_QUEUE = "queue"
NS_TICKETS = "queue_tickets"
NS_SLOTS = "queue_slots"
NS_PACE = "queue_pace"
NS_IDEMPOTENCY = "idempotency"

DEFAULT_QUEUE = "default"
DEFAULT_MAX_CLAIMS = 5
"""Claims after which a run that never finished is failed as a poison run."""

MAX_PRIORITY = 1_000_000
"""Priorities are ints in [-MAX_PRIORITY, MAX_PRIORITY]; higher runs first."""

_format = [_v.instance_of(int), _v.ge(1)]


def _float(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _opt_positive_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{attribute.name} must be an int >= 1 or None, got {value!r}")


def _opt_positive_float(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, float) or not (0 < value < 1e9)
    ):
        raise ValueError(f"{attribute.name} must be a positive number or None, got {value!r}")


def _opt_float(value: object) -> object:
    return _float(value)


@attrs.frozen(kw_only=True)
class QueueDefinition:
    """A named queue and its limits, shared by every worker of the store.

    ``concurrency``: at most this many of its runs are claimed at once, across all
    workers (None: no limit). ``starts_per_minute``: runs start at most this often,
    evenly spaced (None: no limit). ``max_claims``: a run claimed this many times
    without finishing (every claimer crashed) is failed as a poison run.
    """

    name: str = attrs.field(validator=_v.instance_of(str))
    concurrency: int | None = attrs.field(default=None, validator=_opt_positive_int)
    starts_per_minute: float | None = attrs.field(
        default=None, converter=_opt_float, validator=_opt_positive_float
    )
    max_claims: int = attrs.field(
        default=DEFAULT_MAX_CLAIMS, validator=[_v.instance_of(int), _v.ge(1)]
    )
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class QueueEntry:
    """A queued run waiting to be claimed, with what its claim writes to its ticket (so a
    claim is one commit: no read of the ticket first)."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    queue: str = attrs.field(validator=_v.instance_of(str))
    priority: int = attrs.field(validator=_v.instance_of(int))
    submitted_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    claims: int = attrs.field(default=0, validator=[_v.instance_of(int), _v.ge(0)])
    """How often the run was claimed before it was (re)queued."""
    idempotency_key: str | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(str))
    )
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class QueueTicket:
    """A submitted run's place in the queue system, kept for its whole life."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    queue: str = attrs.field(validator=_v.instance_of(str))
    priority: int = attrs.field(default=0, validator=_v.instance_of(int))
    submitted_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    claims: int = attrs.field(default=0, validator=[_v.instance_of(int), _v.ge(0)])
    slot: int | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(int)))
    holder: str | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(str)))
    idempotency_key: str | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(str))
    )
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class QueueSlot:
    """One of a limited queue's concurrency slots, taken by a claimed run."""

    run_id: str = attrs.field(validator=_v.instance_of(str))
    holder: str = attrs.field(validator=_v.instance_of(str))
    claimed_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class QueuePace:
    """When a rate-limited queue may start its next run (the store's clock)."""

    next_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


@attrs.frozen(kw_only=True)
class IdempotencyEntry:
    """The run an idempotency key submitted."""

    key: str = attrs.field(validator=_v.instance_of(str))
    run_id: str = attrs.field(validator=_v.instance_of(str))
    created_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    format: int = attrs.field(default=RECORD_FORMAT, validator=_format)


def entry_key(queue: str, priority: int, submitted_at: float, run_id: str) -> str:
    """The ``queue`` key of a queued run: highest priority first, then oldest first."""
    rank = MAX_PRIORITY - priority
    micros = max(0, round(submitted_at * 1_000_000))
    return f"{queue}/{rank:07d}/{micros:017d}/{run_id}"


def slot_key(queue: str, index: int) -> str:
    """The ``queue_slots`` key of one concurrency slot."""
    return f"{queue}/{index:06d}"
