"""Records to and from stored bytes: compact JSON through the one converter.

``encode`` writes any run-store record (the checkpoint of a step by hand, see
``taskloom.sdk._runs.text``); ``encode_event`` one event as text, and
``encode_event_batch`` a stream entry of encoded events; ``decode`` reads a
record back, refusing another format or content that does not match its type
with a ``RecordDamaged`` (a ``DecodeError``) naming the record.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import attrs

from taskloom.contracts import (
    EVENT_TYPES,
    DecodeError,
    ErrorInfo,
    Event,
    RecordDamaged,
    StepStarted,
    StepSucceeded,
    Usage,
    UsageError,
)
from taskloom.contracts.serde import converter, structure
from taskloom.sdk._runs.records import (
    RECORD_FORMAT,
    EventBatch,
    RunRecord,
    StepRecord,
    step_fields_ok,
)
from taskloom.sdk._runs.text import (
    dumps,
    step_record_text,
    step_started_text,
    step_succeeded_text,
    typed_checkpoint_text,
)

R = TypeVar("R")


def encode(record: object) -> bytes:
    """Serialize a record to compact UTF-8 JSON through the one converter.

    Outputs and inputs are typed ``Any``; anything that is not JSON data (a set, an
    object, NaN) is refused here, before it could reach storage half-written.
    """
    try:
        if type(record) is StepRecord and _STEP_FAST:
            text = step_record_text(record)
            if text is not None:
                return text.encode("utf-8")
        return dumps(_unstructure(record)).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"{type(record).__name__} holds something that is not JSON data ({exc}): "
            "step outputs and inputs must be JSON (str, numbers, bools, None, lists, dicts)"
        ) from exc


def encode_step(
    run_id: str,
    step_id: str,
    item: int | None,
    status: str,
    output: Any,
    error: ErrorInfo | None,
    usage: Usage,
    executor: str | None,
    attempts: int,
    started_at: float,
    finished_at: float,
    cached: bool,
    finish_reason: str | None,
) -> bytes | None:
    """``encode(StepRecord(...))`` of these fields without building the record, for the
    checkpoint every step writes; None when a field fails the record's quick test
    (``step_fields_ok``), is not written by hand or is not JSON: then build the record,
    which converts or refuses the values as it always did."""
    if not _STEP_FAST or not step_fields_ok(
        run_id,
        step_id,
        item,
        status,
        error,
        usage,
        executor,
        attempts,
        started_at,
        finished_at,
        cached,
        finish_reason,
        RECORD_FORMAT,
    ):
        return None
    try:
        text = typed_checkpoint_text(
            run_id,
            step_id,
            item,
            status,
            output,
            error,
            usage,
            executor,
            attempts,
            started_at,
            finished_at,
            cached,
            finish_reason,
            RECORD_FORMAT,
        )
    except (TypeError, ValueError):
        return None  # not JSON: the record's encode raises what it always did
    return None if text is None else text.encode("utf-8")


_JSON_FIELDS: dict[type[Any], dict[str, Any]] = {
    RunRecord: {"pipeline": {}, "inputs": {}, "output": None},
    StepRecord: {"output": None},
}
"""Per record type: its ``Any`` fields that hold plain JSON, and a cheap stand-in value."""


def _unstructure(record: object) -> Any:
    """``converter.unstructure``, minus walking fields that are already plain JSON.

    A run record carries the whole unstructured pipeline; letting cattrs walk it on
    every update costs more than the rest of a checkpoint. The converter still
    handles every typed field; the JSON fields are put back as they are (and
    the JSON encoder refuses anything in them that is not JSON).
    """
    stand_ins = _JSON_FIELDS.get(type(record))
    if stand_ins is None or all(
        not isinstance(getattr(record, name), dict | list | tuple) for name in stand_ins
    ):
        return converter.unstructure(record)  # nothing worth skipping
    light = attrs.evolve(record, **stand_ins)  # type: ignore[misc]
    data: dict[str, Any] = converter.unstructure(light)
    for name in stand_ins:
        data[name] = getattr(record, name)
    return data


_STEP_FIELDS = (
    "run_id",
    "step_id",
    "item",
    "status",
    "output",
    "error",
    "usage",
    "executor",
    "attempts",
    "started_at",
    "finished_at",
    "cached",
    "finish_reason",
    "format",
)


def _written_by_hand(cls: type[Any], names: tuple[str, ...], builder: str) -> bool:
    """True; or ``TypeError`` at import when ``builder`` no longer writes every field.

    The hand-written text must hold exactly the fields of the class, in order: a field
    added to the class would otherwise be dropped from stored records without a
    word (or, with a silent fallback, the fast path would switch itself off).
    """
    fields = tuple(a.name for a in attrs.fields(cls))
    if fields != names:
        raise TypeError(
            f"taskloom.sdk._runs.text.{builder} writes {cls.__name__} with the fields "
            f"{list(names)} but the class has {list(fields)}: write the new fields there "
            "(and in its field tuple in taskloom.sdk._runs.codec)"
        )
    return True


_STEP_FAST = _written_by_hand(StepRecord, _STEP_FIELDS, "step_record_text")
"""Always True: ``step_record_text`` writes every StepRecord field (checked at import)."""


_unstructure_usage = converter.get_unstructure_hook(Usage)
_EVENT_TAGS: dict[type[Any], str] = {cls: tag for tag, cls in EVENT_TYPES.items()}
_EVENT_HOOKS: dict[type[Any], Any] = {}


_FAST_EVENTS: dict[type[Any], tuple[str, tuple[str, ...], Any]] = {
    StepStarted: (
        "step.started",
        ("run_id", "at", "step_id", "attempt", "item"),
        step_started_text,
    ),
    StepSucceeded: (
        "step.succeeded",
        (
            "run_id",
            "at",
            "step_id",
            "attempt",
            "duration_s",
            "usage",
            "item",
            "cached",
            "finish_reason",
        ),
        step_succeeded_text,
    ),
}
"""The two events every step emits, written as text by hand (a test checks it equals the
converter's JSON); used only while their tags and fields are exactly these."""
_EVENT_FAST: dict[type[Any], Any] = {
    kind: build
    for kind, (tag, names, build) in _FAST_EVENTS.items()
    if _written_by_hand(kind, names, build.__name__)
}
for _kind, (_tag, _names, _build) in _FAST_EVENTS.items():
    if EVENT_TYPES.get(_tag) is not _kind:
        raise TypeError(
            f"{_build.__name__} tags its text {_tag!r}, which is not {_kind.__name__}'s tag"
        )


def _event_dict(event: Event) -> Any:
    """``converter.unstructure(event, unstructure_as=Event)`` with the per-type hook cached.

    The converter's Event hook looks the concrete type's hook up on every call;
    here it is looked up once per type. Types the converter does not tag (none
    today) take its own path.
    """
    kind = type(event)
    tag = _EVENT_TAGS.get(kind)
    if tag is None:
        return converter.unstructure(event, unstructure_as=Event)
    hook = _EVENT_HOOKS.get(kind)
    if hook is None:
        hook = _EVENT_HOOKS[kind] = converter.get_unstructure_hook(kind)
    return {"type": tag, **hook(event)}


def encode_event(event: Event) -> str:
    """One event as compact JSON text, tagged with its stable type name.

    Encoding happens when the event is recorded, so an event that is not JSON data
    fails its emitter at once instead of a later batch. The two events of every
    step are written directly (``taskloom.sdk._runs.text``) when their values allow.
    """
    fast = _EVENT_FAST.get(type(event))
    if fast is not None:
        text: str | None = fast(event)
        if text is not None:
            return text
    body = _event_dict(event)
    try:
        return dumps(body)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"event {type(event).__name__} is not JSON data ({exc})") from exc


def encode_event_batch(first: int, events: list[str]) -> bytes:
    """A stream entry holding already encoded events numbered from ``first``."""
    return (f'{{"first":{first},"events":[{",".join(events)}],"format":{RECORD_FORMAT}}}').encode()


def decode(data: bytes, cls: type[R], *, where: str) -> R:
    """Build a ``cls`` from stored bytes; any mismatch is ``RecordDamaged`` naming ``where``.

    The format is checked before the content so that a record written by a newer
    taskloom says "upgrade" rather than listing every field it does not know.
    """
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordDamaged(
            f"stored record {where} is not valid JSON ({exc}); the store is damaged: "
            f"delete the record or restore it from a backup"
        ) from None
    if not isinstance(raw, dict):
        raise RecordDamaged(
            f"stored record {where} is a JSON {type(raw).__name__}, not an object; "
            "it was not written by taskloom's run store"
        )
    fmt = raw.get("format")
    if fmt != RECORD_FORMAT:
        hint = (
            "upgrade taskloom"
            if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > RECORD_FORMAT
            else "it was not written by this taskloom: delete it or restore a backup"
        )
        raise RecordDamaged(
            f"stored record {where} has format {fmt!r}; this taskloom reads format "
            f"{RECORD_FORMAT}: {hint}",
            path="$.format",
        )
    try:
        return structure(raw, cls)
    except DecodeError as exc:
        raise RecordDamaged(
            f"stored record {where} does not match {cls.__name__}: {exc}", path=exc.path
        ) from None


def decode_event_batch(data: bytes, *, where: str) -> EventBatch:
    """Read one stream entry back into its numbered events."""
    return decode(data, EventBatch, where=where)
