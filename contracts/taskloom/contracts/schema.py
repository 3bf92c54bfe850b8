"""The JSON Schema of the pipeline format, generated from the attrs types.

``pipeline_json_schema()`` walks the classes of ``taskloom.contracts._pipeline``
(and the LLM types they use) and emits one ``$defs`` entry per class: its
fields with their JSON types and defaults, the fields without a default as
``required``, ``additionalProperties: false`` (as the converter refuses unknown
fields), and the JSON names of renamed fields (``with``, ``as``). The step kinds
are a ``oneOf`` told apart by their required keys (``prompt``/``messages``,
``uses``, ``parallel``, ``map``, ``input``, ``approval``). Generating it keeps
the published schema from drifting from the types; ``examples/pipeline.schema.json``
is a checked-in copy that a test compares with this function's output.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import attrs

from taskloom.contracts._llm import Message, ResponseFormat
from taskloom.contracts._pipeline import (
    PIPELINE_FORMAT,
    STEP_ID,
    ApprovalRequest,
    ApprovalStep,
    Budget,
    InputRequest,
    InputSpec,
    InputStep,
    LLMStep,
    MapStep,
    ParallelStep,
    Pipeline,
    PluginStep,
    RetryPolicy,
    StepDefaults,
)

SCHEMA_ID = "https://taskloom.dev/schemas/pipeline-v1.json"
_RENAMES = {"with_": "with", "as_": "as"}
_PATTERNED = {"id", "as_"}
_CLASSES: tuple[type[Any], ...] = (
    Pipeline,
    InputSpec,
    StepDefaults,
    Budget,
    RetryPolicy,
    LLMStep,
    PluginStep,
    ParallelStep,
    MapStep,
    InputStep,
    InputRequest,
    ApprovalStep,
    ApprovalRequest,
    Message,
    ResponseFormat,
)
_STEP_CLASSES: tuple[type[Any], ...] = (
    LLMStep,
    PluginStep,
    ParallelStep,
    MapStep,
    InputStep,
    ApprovalStep,
)
# Fields that have a default in the types but that a pipeline file must state.
_REQUIRED_EXTRA: dict[type[Any], tuple[str, ...]] = {Pipeline: ("taskloom",)}
# How each step kind is told apart from the others beyond its own required fields.
_ONE_OF_KEYS: dict[type[Any], list[dict[str, Any]]] = {
    LLMStep: [{"required": ["prompt"]}, {"required": ["messages"]}],
}


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{cls.__name__}"}


def _type_schema(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return {}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is type(None):
        return {"type": "null"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            inner = _type_schema(members[0])
        elif set(members) == set(_STEP_CLASSES):
            inner = {"$ref": "#/$defs/Step"}
        elif all(attrs.has(m) for m in members):
            inner = {"oneOf": [_ref(m) for m in members]}
        else:
            inner = {"anyOf": [_type_schema(m) for m in members]}
        if len(members) < len(args):
            return {"anyOf": [inner, {"type": "null"}]}
        return inner
    if origin is tuple:
        item = args[0] if args else Any
        return {"type": "array", "items": _type_schema(item)}
    if origin is dict:
        value = args[1] if len(args) == 2 else Any
        schema: dict[str, Any] = {"type": "object"}
        if value is not Any:
            schema["additionalProperties"] = _type_schema(value)
        return schema
    if isinstance(tp, type) and attrs.has(tp):
        return _ref(tp)
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def _json_default(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, str | bool | int | float):
        return True, value
    if isinstance(value, tuple) and all(isinstance(v, str | int | float | bool) for v in value):
        return True, list(value)
    return False, None


def _class_schema(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        name = _RENAMES.get(field.name, field.name)
        prop = _type_schema(hints[field.name])
        if field.name in _PATTERNED:
            prop = {**prop, "pattern": f"^{STEP_ID.pattern}$"}
        if field.default is attrs.NOTHING:
            required.append(name)
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            ok, value = _json_default(field.default)
            if ok:
                prop = {**prop, "default": value}
        properties[name] = prop
    for name in _REQUIRED_EXTRA.get(cls, ()):
        if name not in required:
            required.append(name)
    schema: dict[str, Any] = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if cls in _ONE_OF_KEYS:
        schema["anyOf"] = _ONE_OF_KEYS[cls]
    return schema


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``"taskloom": "pipeline/v1"`` pipeline files."""
    defs = {cls.__name__: _class_schema(cls) for cls in _CLASSES}
    defs["Step"] = {"oneOf": [_ref(c) for c in _STEP_CLASSES]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"taskloom pipeline ({PIPELINE_FORMAT})",
        "$ref": "#/$defs/Pipeline",
        "$defs": defs,
    }


__all__ = ["SCHEMA_ID", "pipeline_json_schema"]
