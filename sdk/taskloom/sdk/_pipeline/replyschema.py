"""A small JSON Schema checker for LLM replies, and the JSON extraction before it.

A step with ``response_format: {"type": "json", "json_schema": {...}}`` must get
a reply that parses and satisfies the schema, or the attempt is retried. We check
the keywords such schemas actually use (``type``, ``properties``, ``required``,
``items``, ``enum``, ``const``, ``additionalProperties``, ``minItems``,
``maxItems``, ``minLength``, ``maxLength``, ``minimum``, ``maximum``,
``anyOf``); unknown keywords are ignored, as JSON Schema itself prescribes.
The full ``jsonschema`` package is not a runtime dependency on purpose: the SDK
stays small and the check stays fast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.S)

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def extract_json(text: str) -> Any:
    """Parse a reply as JSON, stripping a Markdown code fence around it.

    Raises ValueError with a short reason when the text is not JSON.
    """
    match = _FENCE.match(text)
    body = match.group(1) if match else text
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"the reply is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    types = _TYPES.get(expected)
    if types is None:
        return True
    if expected != "boolean" and isinstance(value, bool):
        return False
    return isinstance(value, types)


def check(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` fails ``schema``, each as ``"<path>: <reason>"``; empty if valid."""
    errors: list[str] = []
    _check(value, schema, path, errors)
    return errors


def _check(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if not isinstance(schema, Mapping):
        return
    expected = schema.get("type")
    if expected is not None:
        options = expected if isinstance(expected, list) else [expected]
        if not any(_type_ok(value, t) for t in options):
            errors.append(f"{path}: expected {' or '.join(options)}, got {_json_type(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "anyOf" in schema:
        branches = [check(value, sub, path) for sub in schema["anyOf"]]
        if all(branches):
            errors.append(f"{path}: matches none of the anyOf alternatives")
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: more than the maximum {schema['maximum']}")


def _check_object(
    value: dict[str, Any], schema: Mapping[str, Any], path: str, errors: list[str]
) -> None:
    properties = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = f"{path}.{key}"
        if key in properties:
            _check(item, properties[key], sub, errors)
        elif extra is False:
            errors.append(f"{path}: property {key!r} is not allowed")
        elif isinstance(extra, Mapping):
            _check(item, extra, sub, errors)


def _check_array(value: list[Any], schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _check(item, items, f"{path}[{index}]", errors)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
