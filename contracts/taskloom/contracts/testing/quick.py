"""Checking that a quick-checked type (``taskloom.contracts._quick``) accepts and refuses
exactly what its per-field validators do.

``agrees(cls, checks, fields)`` builds ``cls(**fields)`` and runs the validators in
``checks`` on the same (converted) values; both must accept, or both must raise the
same error type. ``CANDIDATES`` are values worth trying in any field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from taskloom.contracts import ErrorInfo, Usage

__all__ = ["CANDIDATES", "agrees"]

CANDIDATES: tuple[Any, ...] = (
    None,
    "",
    "x",
    "succeeded",
    "failed",
    -1,
    0,
    1,
    3,
    0.0,
    1.5,
    True,
    False,
    b"x",
    [],
    Usage(),
    ErrorInfo(type="E", message="m"),
)


def _outcome_of_validators(
    cls: type[Any], checks: Mapping[str, Any], fields: dict[str, Any]
) -> Any:
    converted = dict(fields)
    for field in attrs.fields(cls):
        if field.converter is not None and field.name in converted:
            converted[field.name] = field.converter(converted[field.name])
    for field in attrs.fields(cls):
        check = checks.get(field.name)
        if check is None or field.name not in converted:
            continue
        try:
            check(None, field, converted[field.name])
        except (TypeError, ValueError) as exc:
            return type(exc)
    return None


def agrees(cls: type[Any], checks: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """Assert ``cls(**fields)`` succeeds or fails exactly as the validators say."""
    expected = _outcome_of_validators(cls, checks, fields)
    try:
        cls(**fields)
    except (TypeError, ValueError) as exc:
        assert type(exc) is expected, (cls.__name__, fields, exc)
    else:
        assert expected is None, (cls.__name__, fields, expected)
