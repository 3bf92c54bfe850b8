"""StepRecord checks its fields in one test, yet accepts and refuses what its validators do."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import ErrorInfo, Usage
from taskloom.contracts.testing.quick import CANDIDATES, agrees
from taskloom.sdk._runs.records import _STEP_CHECKS, StepRecord

_GOOD: dict[str, Any] = {
    "run_id": "r",
    "step_id": "s",
    "item": None,
    "status": "succeeded",
    "output": None,
    "error": None,
    "usage": Usage(),
    "executor": None,
    "attempts": 1,
    "started_at": 1.0,
    "finished_at": 2.0,
    "cached": False,
    "format": 1,
}

_VALUES: Any = (
    st.sampled_from(CANDIDATES)
    | st.integers(-2, 5)
    | st.floats(0, 10)
    | st.just(ErrorInfo(type="E", message="m"))
)


def test_every_field_but_the_output_is_checked() -> None:
    """Every field is in the table; the output, which may hold any JSON, maps to None."""
    assert set(_STEP_CHECKS) == {f.name for f in attrs.fields(StepRecord)}
    assert _STEP_CHECKS["output"] is None


@pytest.mark.parametrize("name", sorted(_GOOD))
def test_each_single_value_is_judged_as_its_validator_does(name: str) -> None:
    for value in CANDIDATES:
        agrees(StepRecord, _STEP_CHECKS, {**_GOOD, name: value})


@settings(max_examples=300)
@given(st.data())
def test_random_pairs_of_values_are_judged_as_the_validators_do(data: st.DataObject) -> None:
    fields = dict(_GOOD)
    for name in data.draw(st.lists(st.sampled_from(sorted(_GOOD)), max_size=2)):
        fields[name] = data.draw(_VALUES)
    agrees(StepRecord, _STEP_CHECKS, fields)


def test_a_status_whose_comparison_raises_is_refused_as_the_validator_refuses_it() -> None:
    """An object whose == raises TypeError is a ValueError, as attrs' in_ validator says."""

    class Odd:
        def __eq__(self, other: object) -> bool:
            raise TypeError("no comparing")

        __hash__ = object.__hash__

    with pytest.raises(ValueError):
        StepRecord(**{**_GOOD, "status": Odd()})
