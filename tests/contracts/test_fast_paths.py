"""Every fast path has one source of truth: a new field fails loudly, never silently."""

from __future__ import annotations

import attrs
import pytest

from taskloom.contracts import Put, Record, StepStarted, StepSucceeded
from taskloom.contracts._events import _STEP_STARTED_CHECKS, _STEP_SUCCEEDED_CHECKS
from taskloom.contracts._quick import covers
from taskloom.contracts._storage import _PUT_CHECKS, _RECORD_CHECKS
from taskloom.sdk import StepRecord
from taskloom.sdk._runs import codec
from taskloom.sdk._runs.records import _STEP_CHECKS


@pytest.mark.parametrize(
    ("cls", "checks"),
    [
        (StepStarted, _STEP_STARTED_CHECKS),
        (StepSucceeded, _STEP_SUCCEEDED_CHECKS),
        (Record, _RECORD_CHECKS),
        (Put, _PUT_CHECKS),
        (StepRecord, _STEP_CHECKS),
    ],
)
def test_quick_tables_name_every_field(cls: type, checks: dict[str, object]) -> None:
    """Each quick-checked class's table names exactly its fields (checked at import)."""
    covers(cls, checks)
    assert set(checks) == {f.name for f in attrs.fields(cls)}


def test_a_field_missing_from_a_quick_table_fails_the_import() -> None:
    """A class gaining a field its quick table lacks raises TypeError naming the field."""

    @attrs.frozen(kw_only=True)
    class Grown:
        a: str
        b: int = 0

    with pytest.raises(TypeError, match=r"Grown.*missing \['b'\]"):
        covers(Grown, {"a": None})
    with pytest.raises(TypeError, match=r"unknown \['c'\]"):
        covers(Grown, {"a": None, "b": None, "c": None})


def test_the_step_fast_paths_are_on() -> None:
    """The hand-written texts for StepRecord, StepStarted and StepSucceeded are in use:
    a checkpoint and both events never take the converter's path (this fails if a fast
    path switched itself off)."""
    assert codec._STEP_FAST is True
    assert set(codec._EVENT_FAST) == {StepStarted, StepSucceeded}
    record = StepRecord(run_id="r", step_id="s", output="x", started_at=1.0, finished_at=2.0)
    calls: list[object] = []
    real = codec.dumps

    def spy(value: object) -> str:
        calls.append(value)
        return real(value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "dumps", spy)
        codec.encode(record)
        codec.encode_event(StepStarted(run_id="r", at=1.0, step_id="s"))
        codec.encode_event(StepSucceeded(run_id="r", at=1.0, step_id="s"))
    assert calls == []  # the converter's path (which ends in dumps) was never taken


def test_a_fast_text_missing_a_field_fails_loudly() -> None:
    """A hand-written builder whose field list no longer matches its class raises at
    import, naming the builder and the fields, instead of dropping the new field."""

    @attrs.frozen(kw_only=True)
    class Event2:
        run_id: str
        finish_reason: str = "stop"

    with pytest.raises(TypeError, match=r"builder_x writes Event2.*finish_reason"):
        codec._written_by_hand(Event2, ("run_id",), "builder_x")
    assert codec._written_by_hand(Event2, ("run_id", "finish_reason"), "builder_x")
