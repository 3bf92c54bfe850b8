"""StepRecord checks its fields at once, yet accepts and refuses exactly what its validators do."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import ErrorInfo, Usage
from taskloom.sdk._runrecords import _STEP_CHECKS, StepRecord

_ANY_BAD: Any = st.sampled_from([None, "", "x", -1, 0, 3, 1.5, True, b"x", [], Usage()])

_FIELDS: dict[str, Any] = {
    "run_id": st.sampled_from(["r", "run-1"]) | _ANY_BAD,
    "step_id": st.sampled_from(["s", "a.b"]) | _ANY_BAD,
    "item": st.none() | st.integers(-2, 5) | _ANY_BAD,
    "status": st.sampled_from(["succeeded", "failed", "done"]) | _ANY_BAD,
    "error": st.none() | st.just(ErrorInfo(type="E", message="m")) | _ANY_BAD,
    "usage": st.just(Usage(prompt_tokens=1, completion_tokens=2)) | _ANY_BAD,
    "executor": st.none() | st.just("e") | _ANY_BAD,
    "attempts": st.integers(-1, 3) | st.booleans() | _ANY_BAD,
    "started_at": st.floats(0, 10) | st.integers(0, 10) | _ANY_BAD,
    "finished_at": st.floats(0, 10) | _ANY_BAD,
    "cached": st.booleans() | _ANY_BAD,
    "format": st.integers(-1, 3) | _ANY_BAD,
}


def _reference(fields: dict[str, Any]) -> type[BaseException] | None:
    """What the per-field validators say (after the float converters), field by field."""
    converted = dict(fields)
    for name in ("started_at", "finished_at"):
        value = converted[name]
        if isinstance(value, int) and not isinstance(value, bool):
            converted[name] = float(value)
    for field in attrs.fields(StepRecord):
        check = _STEP_CHECKS.get(field.name)
        if check is None:
            continue
        try:
            check(None, field, converted[field.name])
        except (TypeError, ValueError) as exc:
            return type(exc)
    return None


_GOOD: dict[str, Any] = {
    "run_id": "r",
    "step_id": "s",
    "item": None,
    "status": "succeeded",
    "error": None,
    "usage": Usage(),
    "executor": None,
    "attempts": 1,
    "started_at": 1.0,
    "finished_at": 2.0,
    "cached": False,
    "format": 1,
}


@st.composite
def _records(draw: Any) -> dict[str, Any]:
    """A valid record with up to two fields drawn from anything (good or bad) for them."""
    fields = dict(_GOOD)
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=2)):
        fields[name] = draw(_FIELDS[name])
    return fields


_CANDIDATES = [None, "", "x", "succeeded", "failed", -1, 0, 1, 3, 0.0, 1.5, True, False, b"x"]
_CANDIDATES += [[], Usage(), ErrorInfo(type="E", message="m")]


@pytest.mark.parametrize("name", sorted(_GOOD))
def test_every_single_bad_or_good_value_is_judged_as_its_validator_does(name: str) -> None:
    for value in _CANDIDATES:
        _agrees({**_GOOD, name: value})


@settings(max_examples=300)
@given(_records())
def test_quick_check_agrees_with_the_validators(fields: dict[str, Any]) -> None:
    _agrees(fields)


def _agrees(fields: dict[str, Any]) -> None:
    expected = _reference(fields)
    try:
        StepRecord(output=None, **fields)
    except (TypeError, ValueError) as exc:
        assert type(exc) is expected, (fields, exc)
    else:
        assert expected is None, fields


def test_every_checked_field_has_a_validator() -> None:
    names = {f.name for f in attrs.fields(StepRecord)} - {"output"}
    assert set(_STEP_CHECKS) == names
