"""What a run keeps of its pipeline: its digest, and a compact copy to resume from.

The copy holds only the fields that differ from their defaults.

Every run record keeps the pipeline it ran, so ``resume`` can rebuild it. The
converter's form spells out every field of every step (a bare ``{"id", "prompt"}``
step becomes 19 keys), which made a 1,000-step run record 290 KB, written at the
run's start and again at its end. Leaving out the fields that equal their defaults
makes it a tenth of that; ``serde.structure`` fills the defaults back in, so the
compact form rebuilds an equal ``Pipeline`` (with the same digest: the digest is
taken over the full form). A property test checks the round trip for random
pipelines.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Mapping
from typing import Any

import attrs
import rfc8785

from taskloom.contracts import Pipeline, PipelineInvalid, Problem, serde
from taskloom.contracts.serde import converter
from taskloom.sdk._pipeline.validate import key_path

__all__ = ["compact_pipeline", "pipeline_forms"]


def pipeline_digest(pipeline: Pipeline | Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of the (unstructured) pipeline.

    A run keeps this digest so that a resume with a pipeline that changed since is
    refused instead of mixing outputs of two different pipelines.
    """
    data = converter.unstructure(pipeline) if isinstance(pipeline, Pipeline) else dict(pipeline)
    return hashlib.sha256(rfc8785.dumps(data)).hexdigest()


_SAFE_INT = 2**53 - 1
"""Largest integer JSON (RFC 8785, I-JSON) carries exactly."""

_FORMS: dict[int, tuple[weakref.ref[Pipeline], str, dict[str, Any]]] = {}


def pipeline_forms(pipeline: Pipeline) -> tuple[str, dict[str, Any]]:
    """The pipeline's digest and compact stored copy, computed once per Pipeline object.

    Canonical JSON of a large pipeline is the costliest part of preparing a run;
    Pipelines are frozen, so neither changes for one object. A number canonical
    JSON cannot carry exactly (an integer beyond 2**53 - 1, NaN, an infinity) is a
    ``PipelineInvalid`` naming where it is.
    """
    found = _FORMS.get(id(pipeline))
    if found is not None and found[0]() is pipeline:
        return found[1], found[2]
    data = serde.unstructure(pipeline)
    try:
        digest = pipeline_digest(data)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        problems = _not_canonical(data, "$") or [
            Problem(
                path="$",
                message=f"the pipeline is not JSON data ({exc})",
                hint="use text, numbers, true/false, null, lists and objects",
            )
        ]
        raise PipelineInvalid(problems) from None
    stored = compact_pipeline(pipeline, data)
    key = id(pipeline)
    _FORMS[key] = (weakref.ref(pipeline, lambda _r: _FORMS.pop(key, None)), digest, stored)
    return digest, stored


def _not_canonical(data: Any, path: str) -> list[Problem]:
    """Where ``data`` holds what canonical JSON cannot carry: numbers beyond its exact
    range, NaN or infinities, object keys that are not text, values that are not JSON."""
    if isinstance(data, dict):
        problems: list[Problem] = []
        for key, value in data.items():
            if not isinstance(key, str):
                problems.append(
                    Problem(
                        path=path,
                        message=f"the object key {key!r} is not text",
                        hint="JSON object keys are strings: quote it",
                    )
                )
                continue
            problems += _not_canonical(value, key_path(path, key))
        return problems
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _not_canonical(v, f"{path}[{i}]")]
    if isinstance(data, bool) or data is None or isinstance(data, str):
        return []
    if isinstance(data, int):
        if abs(data) <= _SAFE_INT:
            return []
        return [
            Problem(
                path=path,
                message=f"the integer {data} is beyond JSON's exact range (+/- 2**53 - 1)",
                hint="write it as a string",
            )
        ]
    if isinstance(data, float):
        if math.isfinite(data):
            return []
        return [Problem(path=path, message=f"{data} is not a JSON number", hint="use a number")]
    return [
        Problem(
            path=path,
            message=f"a {type(data).__name__} is not JSON data",
            hint="use text, numbers, true/false, null, lists and objects",
        )
    ]


def compact_pipeline(pipeline: Pipeline, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``serde.unstructure(pipeline)`` (or ``data``, if it is that already) without the
    fields that hold their default value; the format marker (``"taskloom"``) is kept."""
    if data is None:
        data = serde.unstructure(pipeline)
    compacted = _compact(pipeline, data)
    assert isinstance(compacted, dict)
    if "taskloom" in data:
        compacted = {"taskloom": data["taskloom"], **compacted}
    return compacted


def _compact(obj: Any, data: Any) -> Any:
    """Walk ``obj`` (attrs classes, sequences, mappings) beside its unstructured ``data``."""
    cls = type(obj)
    if attrs.has(cls) and type(data) is dict:
        fields = attrs.fields(cls)
        if len(fields) != len(data):
            return data  # not the converter's plain one-key-per-field form: keep it whole
        out: dict[str, Any] = {}
        # The converter writes the keys in field order (renamed ones too: ``with``, ``as``).
        for field, (key, value) in zip(fields, data.items(), strict=True):
            current = getattr(obj, field.name)
            if _is_default(field, current):
                continue
            out[key] = _compact(current, value)
        return out
    if isinstance(obj, list | tuple) and type(data) is list and len(obj) == len(data):
        return [_compact(o, d) for o, d in zip(obj, data, strict=True)]
    if isinstance(obj, dict) and type(data) is dict:
        return {k: _compact(obj[k], v) if k in obj else v for k, v in data.items()}
    return data


def _is_default(field: attrs.Attribute[Any], value: Any) -> bool:
    default: Any = field.default
    if default is attrs.NOTHING:
        return False
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return False
        default = default.factory()
    # Same type as well as equal: 1 == 1.0 == True must not make a value vanish.
    return type(value) is type(default) and bool(value == default)
