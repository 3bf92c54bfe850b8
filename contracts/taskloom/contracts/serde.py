"""The one converter: every contract data type to JSON-ready data and back.

Use :data:`converter` (built by :func:`make_converter`), never cattrs' global
one. Decoding refuses unknown fields and ill-typed values with a
``DecodeError`` whose ``path`` names where (``$.steps[2].prompt``). Unions
carry explicit, stable tags (``"type": "run.started"``, ``"op": "put"``) so a
class rename never breaks stored data. ``bytes`` travel as base64 text and a
``Secret`` always serializes as its mask.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.v import format_exception

from taskloom.contracts._errors import DecodeError
from taskloom.contracts._events import EVENT_TYPES, Event
from taskloom.contracts._pipeline import (
    ApprovalStep,
    InputStep,
    LLMStep,
    MapStep,
    ParallelStep,
    PluginStep,
    Step,
)
from taskloom.contracts._secrets import MASK, Secret
from taskloom.contracts._storage import Append, Check, Delete, Op, Put

__all__ = [
    "OP_TAGS",
    "converter",
    "dumps",
    "loads",
    "make_converter",
    "structure",
    "unstructure",
]

T = TypeVar("T")

OP_TAGS: dict[str, type[Any]] = {"put": Put, "delete": Delete, "append": Append, "check": Check}
_EVENT_TAG_OF = {cls: tag for tag, cls in EVENT_TYPES.items()}
_OP_TAG_OF = {cls: tag for tag, cls in OP_TAGS.items()}
_STEP_KINDS: tuple[tuple[str, type[Any]], ...] = (
    ("parallel", ParallelStep),
    ("map", MapStep),
    ("uses", PluginStep),
    ("prompt", LLMStep),
    ("messages", LLMStep),
    ("input", InputStep),
    ("approval", ApprovalStep),
)


def _step_class(data: Mapping[str, Any]) -> type[Any]:
    for key, cls in _STEP_KINDS:
        if key in data:
            return cls
    raise DecodeError(
        "a step needs one of 'prompt', 'messages', 'uses', 'parallel', 'map', 'input' or "
        "'approval' "
        f"to say what kind it is; got fields {sorted(data)}"
    )


def make_converter() -> cattrs.Converter:
    """Build the converter. Exposed so that tests and adapters can build their own copy."""
    conv = cattrs.Converter(forbid_extra_keys=True)

    def _bytes_to(data: Any, _: Any) -> bytes:
        if not isinstance(data, str):
            raise DecodeError(f"expected base64 text, got {type(data).__name__}")
        try:
            return base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise DecodeError(f"invalid base64 text: {exc}") from None

    conv.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode("ascii"))
    conv.register_structure_hook(bytes, _bytes_to)

    def _secret_to(data: Any, _: Any) -> Secret:
        if not isinstance(data, str):
            raise DecodeError(f"expected secret text, got {type(data).__name__}")
        return Secret(data)

    conv.register_unstructure_hook(Secret, lambda _s: MASK)
    conv.register_structure_hook(Secret, _secret_to)

    def _strict_float(data: Any, _: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DecodeError(f"expected a number, got {type(data).__name__}")
        return float(data)

    def _strict_int(data: Any, _: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise DecodeError(f"expected an integer, got {type(data).__name__}")
        return data

    def _strict_str(data: Any, _: Any) -> str:
        if not isinstance(data, str):
            raise DecodeError(f"expected text, got {type(data).__name__}")
        return data

    def _strict_bool(data: Any, _: Any) -> bool:
        if not isinstance(data, bool):
            raise DecodeError(f"expected true or false, got {type(data).__name__}")
        return data

    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)

    # Renamed fields: JSON keywords that are Python keywords.
    with_key = override(rename="with")
    as_key = override(rename="as")
    conv.register_unstructure_hook(
        PluginStep, make_dict_unstructure_fn(PluginStep, conv, with_=with_key)
    )
    conv.register_structure_hook(
        PluginStep,
        make_dict_structure_fn(PluginStep, conv, _cattrs_forbid_extra_keys=True, with_=with_key),
    )
    conv.register_unstructure_hook(MapStep, make_dict_unstructure_fn(MapStep, conv, as_=as_key))
    conv.register_structure_hook(
        MapStep, make_dict_structure_fn(MapStep, conv, _cattrs_forbid_extra_keys=True, as_=as_key)
    )

    # Events: tagged by "type" with the stable names of EVENT_TYPES.
    def _event_from(data: Any, _: Any) -> Any:
        if not isinstance(data, Mapping) or "type" not in data:
            raise DecodeError("an event needs a 'type' field")
        cls = EVENT_TYPES.get(data["type"])
        if cls is None:
            raise DecodeError(f"unknown event type {data['type']!r}; known: {sorted(EVENT_TYPES)}")
        body = {k: v for k, v in data.items() if k != "type"}
        return conv.structure(body, cls)

    def _event_to(event: Any) -> Any:
        body = conv.unstructure(event, unstructure_as=type(event))
        return {"type": _EVENT_TAG_OF[type(event)], **body}

    conv.register_structure_hook(Event, _event_from)
    conv.register_unstructure_hook(Event, _event_to)

    # Commit operations: tagged by "op".
    def _op_from(data: Any, _: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("op") not in OP_TAGS:
            raise DecodeError(f"an operation needs 'op' set to one of {sorted(OP_TAGS)}")
        body = {k: v for k, v in data.items() if k != "op"}
        return conv.structure(body, OP_TAGS[data["op"]])

    def _op_to(op: Any) -> Any:
        return {"op": _OP_TAG_OF[type(op)], **conv.unstructure(op, unstructure_as=type(op))}

    conv.register_structure_hook(Op, _op_from)
    conv.register_unstructure_hook(Op, _op_to)

    # Steps: the kind is told by the fields present.
    def _step_from(data: Any, _: Any) -> Any:
        if not isinstance(data, Mapping):
            raise DecodeError(f"a step must be an object, got {type(data).__name__}")
        return conv.structure(data, _step_class(data))

    conv.register_structure_hook(Step, _step_from)
    conv.register_unstructure_hook(
        Step,
        lambda step: conv.unstructure(step, unstructure_as=type(step)),
    )
    conv.register_structure_hook(LLMStep | PluginStep, _step_from)
    conv.register_unstructure_hook(
        LLMStep | PluginStep,
        lambda step: conv.unstructure(step, unstructure_as=type(step)),
    )
    return conv


converter = make_converter()
"""The converter every taskloom layer uses."""


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, DecodeError):
        return str(exc)
    return format_exception(exc, type_)


_VALIDATOR_FIELD = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)' must ")


def _validator_field(exc: BaseException) -> str | None:
    """The field an attrs validator refused, or None if ``exc`` is not such an error.

    Validators run in ``__init__`` after cattrs structured every field, so cattrs
    can only place their errors at the enclosing object; attrs names the field in
    the error's arguments (``instance_of``, ``in_``) or message (``ge``, ``le``).
    """
    if not isinstance(exc, ValueError | TypeError) or not exc.args:
        return None
    if len(exc.args) > 1 and isinstance(exc.args[1], attrs.Attribute):
        name: str = exc.args[1].name
    else:
        match = _VALIDATOR_FIELD.match(str(exc.args[0]))
        if match is None:
            return None
        name = match[1]
    return name.rstrip("_")  # ``with_`` and ``as_`` are ``with`` and ``as`` in JSON


def _describe(exc: BaseException) -> tuple[str, str]:
    """Turn a cattrs error into (message, path) naming the first bad field."""
    if isinstance(exc, DecodeError):
        return str(exc), exc.path
    fields: list[str | None] = []

    def format_and_note(error: BaseException, type_: Any) -> str:
        field = _validator_field(error) if type_ is None else None
        fields.append(field)
        if field is not None:
            return f"invalid value ({error.args[0]})"
        return _format(error, type_)

    messages = cattrs.transform_error(exc, path="$", format_exception=format_and_note)
    if not messages:
        return str(exc), "$"
    first = messages[0]
    message, _, path = first.rpartition(" @ ")
    path = path or "$"
    if fields and fields[0] is not None:
        path = f"{path}.{fields[0]}"
    return (message or first), path


def structure(data: Any, cls: type[T]) -> T:
    """Build a ``cls`` from JSON-ready ``data``; raise DecodeError naming the bad path."""
    try:
        return converter.structure(data, cls)
    except DecodeError as exc:
        raise DecodeError(str(exc), path=exc.path) from None
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        message, path = _describe(exc)
        more = ""
        if isinstance(exc, cattrs.BaseValidationError):
            count = len(cattrs.transform_error(exc, path="$", format_exception=_format))
            more = f" (and {count - 1} more problem(s))" if count > 1 else ""
        raise DecodeError(f"{path}: {message}{more}", path=path) from exc


def unstructure(obj: Any, cls: Any = None) -> Any:
    """Turn a contract data type into JSON-ready data."""
    if cls is None:
        return converter.unstructure(obj)
    return converter.unstructure(obj, unstructure_as=cls)


def dumps(obj: Any, cls: Any = None) -> bytes:
    """Serialize to compact UTF-8 JSON bytes (no NaN or Infinity)."""
    return json.dumps(
        unstructure(obj, cls), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def loads(data: bytes | str, cls: type[T]) -> T:
    """Parse JSON and build a ``cls``; any failure is a DecodeError."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    return structure(raw, cls)
