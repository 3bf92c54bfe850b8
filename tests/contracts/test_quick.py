"""The types checked by one quick test accept and refuse exactly what their validators do."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import Put, Record, StepStarted, StepSucceeded, Usage
from taskloom.contracts._events import _STEP_STARTED_CHECKS, _STEP_SUCCEEDED_CHECKS
from taskloom.contracts._storage import _PUT_CHECKS, _RECORD_CHECKS
from taskloom.contracts.testing.quick import CANDIDATES, agrees

QUICK: dict[type[Any], tuple[dict[str, Any], dict[str, Any]]] = {
    StepStarted: (_STEP_STARTED_CHECKS, {"run_id": "r", "at": 1.0, "step_id": "s"}),
    StepSucceeded: (
        _STEP_SUCCEEDED_CHECKS,
        {"run_id": "r", "at": 1.0, "step_id": "s", "usage": Usage(prompt_tokens=1)},
    ),
    Put: (_PUT_CHECKS, {"namespace": "n", "key": "k", "value": b"v"}),
    Record: (
        _RECORD_CHECKS,
        {"namespace": "n", "key": "k", "value": b"v", "version": 1, "updated_at": 1.0},
    ),
}


@pytest.mark.parametrize("cls", list(QUICK), ids=lambda c: c.__name__)
def test_every_field_is_checked(cls: type[Any]) -> None:
    checks, _ = QUICK[cls]
    assert set(checks) == {f.name for f in attrs.fields(cls)}


@pytest.mark.parametrize("cls", list(QUICK), ids=lambda c: c.__name__)
def test_each_single_value_is_judged_as_its_validator_does(cls: type[Any]) -> None:
    checks, good = QUICK[cls]
    agrees(cls, checks, good)
    for field in attrs.fields(cls):
        for value in CANDIDATES:
            agrees(cls, checks, {**good, field.name: value})


@settings(max_examples=200)
@given(st.data())
def test_random_pairs_of_values_are_judged_as_the_validators_do(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(list(QUICK)))
    checks, good = QUICK[cls]
    fields = dict(good)
    names = [f.name for f in attrs.fields(cls)]
    for name in data.draw(st.lists(st.sampled_from(names), max_size=2)):
        fields[name] = data.draw(
            st.sampled_from(CANDIDATES) | st.integers(-3, 3) | st.floats(allow_nan=False)
        )
    agrees(cls, checks, fields)
