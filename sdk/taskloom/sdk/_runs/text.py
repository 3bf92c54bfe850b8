"""The JSON text of the three records every step writes, and the JSON encoder of records.

A finished step writes a ``StepStarted`` and a ``StepSucceeded`` event and a
checkpoint (``StepRecord``). Turning each into a dict and handing it to the JSON
encoder cost more than everything else the step's storage does, so their text is
written here directly: strings escaped by the json module's own C escaper, exact
ints and finite floats by their ``repr`` (what the encoder writes too), and the
checkpoint's output -- the only free-form field -- by the encoder. A builder
returns None for a value it does not write itself (an ``int`` subclass such as
``True`` in an int field, a str subclass, NaN), and the caller takes the
converter's path, which writes or refuses it as always. Tests check, for random
records and every event type, that the text equals the converter's JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""Compact, strict JSON (no NaN)."""

_escape: Callable[[str], str] = json.encoder.encode_basestring
_int = int.__repr__
_float = float.__repr__
_isfinite = math.isfinite


def _json_dumps() -> Callable[[Any], str]:
    """``_JSON.encode``, with the C encoder built once instead of on every call.

    ``JSONEncoder.encode`` makes a new C encoder per call, about a third of the cost
    of encoding a small record. The one built here has the same settings (compact,
    ``ensure_ascii=False``, ``allow_nan=False``, circular references refused); its
    ``markers`` dict is emptied after a failed call, as a fresh one would be.
    Without the C accelerator, ``_JSON.encode`` itself is used.
    """
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return _JSON.encode
    markers: dict[int, Any] = {}
    encoder = make(
        markers,
        _JSON.default,
        _escape,
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def dumps(obj: Any) -> str:
        try:
            return "".join(encoder(obj, 0))
        except BaseException:
            markers.clear()
            raise

    return dumps


dumps = _json_dumps()
"""Compact strict JSON text of plain data, as ``_JSON.encode`` gives it (a test checks)."""


_last_usage: tuple[Any, str] = (None, "")
"""The last ``Usage`` written and its text: a step's StepSucceeded and its checkpoint
hold the same object (it is frozen, and its fields are checked when first written)."""


def _usage(usage: Any) -> str | None:
    global _last_usage
    last, text = _last_usage
    if usage is last:
        return text
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if type(prompt) is not int or type(completion) is not int:
        return None
    text = f'{{"prompt_tokens":{_int(prompt)},"completion_tokens":{_int(completion)}}}'
    _last_usage = (usage, text)
    return text


_last_at: tuple[float | None, str] = (None, "")
"""The last step event's ``at`` and its text. A step's StepSucceeded ``at`` is the very
float its checkpoint has as ``finished_at``, and the repr of a timestamp is dear (its
shortest round-trip digits take arbitrary-precision arithmetic): the checkpoint's text
reuses it when it is the same object (an identity test: equal floats may differ in
text, as 0.0 and -0.0 do, and the held reference keeps the object alive)."""


def _step_event_head(tag: str, event: Any) -> str | None:
    """The fields every step event starts with, up to ``attempt`` (no closing brace)."""
    global _last_at
    run_id, at, step_id, attempt = event.run_id, event.at, event.step_id, event.attempt
    if (
        type(run_id) is not str
        or type(at) is not float
        or not _isfinite(at)
        or type(step_id) is not str
        or type(attempt) is not int
    ):
        return None
    at_text = _float(at)
    _last_at = (at, at_text)
    return (
        f'{{"type":"{tag}","run_id":{_escape(run_id)},"at":{at_text},'
        f'"step_id":{_escape(step_id)},"attempt":{_int(attempt)}'
    )


def step_started_text(event: Any) -> str | None:
    """A ``StepStarted`` as the converter writes it, tagged ``step.started``; or None."""
    head = _step_event_head("step.started", event)
    item = event.item  # null, an exact int's repr, or None (not written here)
    item = "null" if item is None else (_int(item) if type(item) is int else None)
    if head is None or item is None:
        return None
    return f'{head},"item":{item}}}'


def step_succeeded_text(event: Any) -> str | None:
    """A ``StepSucceeded`` as the converter writes it, tagged ``step.succeeded``; or None."""
    head = _step_event_head("step.succeeded", event)
    duration, cached = event.duration_s, event.cached
    item = event.item  # null, an exact int's repr, or None (not written here)
    item = "null" if item is None else (_int(item) if type(item) is int else None)
    usage = _usage(event.usage)
    if (
        head is None
        or type(duration) is not float
        or not _isfinite(duration)
        or type(cached) is not bool
        or item is None
        or usage is None
    ):
        return None
    finish = event.finish_reason
    if not (finish is None or type(finish) is str):
        return None
    return (
        f'{head},"duration_s":{_float(duration)},"usage":{usage},"item":{item},'
        f'"cached":{"true" if cached else "false"},'
        f'"finish_reason":{"null" if finish is None else _escape(finish)}}}'
    )


def step_record_text(record: Any) -> str | None:
    """A ``StepRecord`` as the converter writes it; or None (see ``checkpoint_text``)."""
    return checkpoint_text(
        record.run_id,
        record.step_id,
        record.item,
        record.status,
        record.output,
        record.error,
        record.usage,
        record.executor,
        record.attempts,
        record.started_at,
        record.finished_at,
        record.cached,
        record.finish_reason,
        record.format,
    )


def checkpoint_text(
    run_id: Any,
    step_id: Any,
    item: Any,
    status: Any,
    output: Any,
    error: Any,
    usage: Any,
    executor: Any,
    attempts: Any,
    started: Any,
    finished: Any,
    cached: Any,
    finish: Any,
    format: Any,
) -> str | None:
    """The text of a ``StepRecord`` with these fields, as the converter writes it; or None.

    The output goes through the encoder (a plain string is escaped directly), so
    anything in it that is not JSON raises ``TypeError``/``ValueError`` as before.
    """
    if (
        type(run_id) is not str
        or type(step_id) is not str
        or not (item is None or type(item) is int)
        or type(status) is not str
        or not (executor is None or type(executor) is str)
        or type(started) is not float
        or type(finished) is not float
        or type(attempts) is not int
        or type(cached) is not bool
        or type(format) is not int
    ):
        return None
    return typed_checkpoint_text(
        run_id,
        step_id,
        item,
        status,
        output,
        error,
        usage,
        executor,
        attempts,
        started,
        finished,
        cached,
        finish,
        format,
    )


def typed_checkpoint_text(
    run_id: str,
    step_id: str,
    item: int | None,
    status: str,
    output: Any,
    error: Any,
    usage: Any,
    executor: str | None,
    attempts: int,
    started: float,
    finished: float,
    cached: bool,
    finish: Any,
    format: int,
) -> str | None:
    """``checkpoint_text`` of fields already known to be exactly of the types annotated
    (a StepRecord's quick test passed on them); or None for what it does not write."""
    usage_text = _usage(usage)
    if usage_text is None or not _isfinite(started) or not _isfinite(finished):
        return None
    if error is None:
        error_text = "null"
    else:
        kind, message, retryable = error.type, error.message, error.retryable
        if type(kind) is not str or type(message) is not str or type(retryable) is not bool:
            return None
        error_text = (
            f'{{"type":{_escape(kind)},"message":{_escape(message)},'
            f'"retryable":{"true" if retryable else "false"}}}'
        )
    if not (finish is None or type(finish) is str):
        return None
    output_text = _escape(output) if type(output) is str else dumps(output)
    last_at, last_text = _last_at
    finished_text = last_text if finished is last_at else _float(finished)
    return (
        f'{{"run_id":{_escape(run_id)},"step_id":{_escape(step_id)},'
        f'"item":{"null" if item is None else _int(item)},'
        f'"status":{_escape(status)},"output":{output_text},"error":{error_text},'
        f'"usage":{usage_text},"executor":{"null" if executor is None else _escape(executor)},'
        f'"attempts":{_int(attempts)},"started_at":{_float(started)},'
        f'"finished_at":{finished_text},"cached":{"true" if cached else "false"},'
        f'"finish_reason":{"null" if finish is None else _escape(finish)},'
        f'"format":{_int(format)}}}'
    )
