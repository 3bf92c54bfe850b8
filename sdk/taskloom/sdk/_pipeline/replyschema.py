"""JSON Schema for LLM replies (the ``jsonschema`` library, Draft 2020-12), and JSON extraction.

A step with ``response_format: {"type": "json", "json_schema": {...}}`` must get
a reply that parses and satisfies the schema, or the attempt is retried. The
schema is full JSON Schema 2020-12 as Pydantic's ``model_json_schema()`` and
OpenAI's structured outputs write it: every keyword, ``$ref`` into ``$defs``,
and ``format`` as an assertion for the formats ``jsonschema`` checks without
extra packages (email, ipv4, ipv6, date, uuid, regex; more where their optional
packages are installed). A schema is
itself checked against the 2020-12 metaschema, and each of its references
resolved, when the pipeline is validated (``schema_problems``), so a broken
schema is a ``PipelineInvalid`` before anything runs, never a crash mid-run.
References stay inside the schema: nothing is fetched from the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from referencing._core import Resolver
from referencing.jsonschema import DRAFT202012

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.S)
_VALIDATOR = jsonschema.Draft202012Validator
_FORMATS = _VALIDATOR.FORMAT_CHECKER
_SCHEMA_FORMATS = jsonschema.FormatChecker(formats=["regex"])
"""Checking a schema asserts only that its patterns are regexes, whatever is installed."""
_SHOWN = 160
"""Longest rendering of a value inside a problem message (a reply can be huge)."""


_OPENERS = re.compile(r"[{\[]")
_MAX_EMBEDDED_TRIES = 64
"""How many ``{``/``[`` positions an embedded search tries before giving up (each try
is one parse, so a long reply full of brackets cannot cost a parse per character)."""


def extract_json(text: str, *, embedded: bool = False) -> Any:
    """Parse a reply as JSON, stripping a Markdown code fence around it.

    With ``embedded`` (a step's ``extract_json: true``), a reply with prose around one
    JSON object or array ("Here it is: {...} Hope this helps") gives that value: the
    first ``{`` or ``[`` where a whole JSON value parses. Raises ValueError with a short
    reason when the text is not JSON, including JSON nested too deeply or holding an
    integer too long for Python to parse.
    """
    match = _FENCE.match(text)
    body = match.group(1) if match else text
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        if embedded:
            found = _embedded_json(text)
            if found is not _MISSING:
                return found
            raise ValueError(
                "the reply holds no JSON object or array, even with the prose around it "
                "ignored (extract_json: true)"
            ) from None
        raise ValueError(
            f"the reply is not valid JSON ({exc.msg} at character {exc.pos}); if the model "
            "writes prose around the JSON, set extract_json: true on the step"
        ) from None
    except RecursionError:
        raise ValueError("the reply's JSON is nested too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ValueError(f"the reply's JSON cannot be parsed ({_short(str(exc))})") from None


_MISSING = object()


def _embedded_json(text: str) -> Any:
    decoder = json.JSONDecoder()
    for tries, opener in enumerate(_OPENERS.finditer(text)):
        if tries >= _MAX_EMBEDDED_TRIES:
            break
        try:
            value, _end = decoder.raw_decode(text, opener.start())
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            continue
        return value
    return _MISSING


class ReplySchema:
    """A compiled JSON Schema; ``problems(value)`` lists a reply's violations.

    Build it from a schema that ``schema_problems`` accepted (pipeline
    validation does that before any plan is compiled).
    """

    __slots__ = ("_validator",)

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = _VALIDATOR(schema, format_checker=_FORMATS)

    def problems(self, value: Any, *, strict: bool = False) -> list[str]:
        """Every way ``value`` fails the schema, each as ``"<JSON path>: <reason>"``.

        A value too deep to check is one problem; ``strict`` raises instead (the
        probe that ``schema_problems`` runs on a schema).
        """
        try:
            errors = sorted(self._validator.iter_errors(value), key=_error_order)
        except RecursionError:
            if strict:
                raise
            return ["$: the reply is nested too deeply to check against the schema"]
        except Exception as exc:  # a schema pipeline validation would have refused
            if strict:
                raise
            return [f"$: the schema cannot be applied ({type(exc).__name__})"]
        return [f"{error.json_path}: {_short(error.message)}" for error in errors]


def check(value: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every way ``value`` fails ``schema``, each as ``"<JSON path>: <reason>"``; empty if valid."""
    return ReplySchema(schema).problems(value)


def schema_problems(schema: Any) -> list[tuple[str, str]]:
    """What is wrong with ``schema`` as a 2020-12 JSON Schema: (path inside it, message) pairs.

    Paths are relative to the schema (``""`` is the schema itself, ``".properties.a"``
    one of its parts), so a caller can append them to where the schema sits.
    """
    # With the format checker, "pattern" and "patternProperties" must be valid regexes.
    meta = _VALIDATOR(_VALIDATOR.META_SCHEMA, format_checker=_SCHEMA_FORMATS)
    try:
        errors = sorted(meta.iter_errors(schema), key=_error_order)
        if errors:
            return [(_relative(error.json_path), _short(error.message)) for error in errors]
        dangling = list(_unresolvable(schema))
        if dangling:
            return dangling
        # A probe: a schema whose $refs loop without end recurses on any value.
        ReplySchema(schema).problems(None, strict=True)
    except RecursionError:
        return [("", "the schema is nested too deeply or its $refs loop without end")]
    except Exception as exc:  # anything else jsonschema cannot compile or apply
        return [("", f"the schema cannot be applied ({type(exc).__name__}: {_short(str(exc))})")]
    return []


def _unresolvable(schema: Any) -> Iterator[tuple[str, str]]:
    """Every ``$ref`` / ``$dynamicRef`` in ``schema`` that does not resolve inside it."""
    root = referencing.Resource.from_contents(schema, default_specification=DRAFT202012)
    base = root.id() or ""
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(
        [("", root), (base, root)]
    )
    yield from _walk(schema, "", registry.crawl().resolver(base_uri=base), names=False)


_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
"""Keywords whose value maps names (which may be any text) to subschemas."""
_DATA = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose value is data, not a schema: a "$ref" key in it is no reference."""


def _walk(
    node: Any, path: str, resolver: Resolver[Any], *, names: bool
) -> Iterator[tuple[str, str]]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]", resolver, names=False)
        return
    if not isinstance(node, dict):
        return
    if not names and isinstance(node.get("$id"), str) and path:
        resource = referencing.Resource.from_contents(node, default_specification=DRAFT202012)
        resolver = resolver.in_subresource(resource)
    for keyword in () if names else ("$ref", "$dynamicRef"):
        ref = node.get(keyword)
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                yield (
                    f"{path}.{keyword}",
                    f"the reference {ref!r} does not resolve inside the schema "
                    "(references to other documents are not fetched)",
                )
    for key, value in node.items():
        if isinstance(key, str) and not names and key in _DATA:
            continue
        yield from _walk(value, f"{path}.{key}", resolver, names=not names and key in _NAMED)


def _relative(json_path: str) -> str:
    """``$.a[0]`` (jsonschema's path from the schema's root) as ``.a[0]``."""
    return json_path[1:] if json_path.startswith("$") else json_path


def _error_order(error: jsonschema.ValidationError) -> tuple[str, str]:
    return (error.json_path, error.message)


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
