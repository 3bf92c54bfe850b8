"""The fast encoders of checkpoints and events write exactly what the converter would."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskloom.contracts import (
    EVENT_TYPES,
    ErrorInfo,
    Event,
    StepStarted,
    StepSucceeded,
    Usage,
    UsageError,
)
from taskloom.contracts.serde import converter
from taskloom.contracts.testing.strategies import events as events_of_every_type
from taskloom.contracts.testing.strategies import json_values
from taskloom.sdk._runs.codec import _EVENT_FAST, encode, encode_event, encode_step
from taskloom.sdk._runs.records import StepRecord

_json: st.SearchStrategy[Any] = json_values()

steps = st.builds(
    StepRecord,
    run_id=st.text("abcdef0123456789", min_size=1, max_size=12),
    step_id=st.text(min_size=1, max_size=8),
    item=st.none() | st.integers(0, 10**6),
    status=st.sampled_from(["succeeded", "failed"]),
    output=_json,
    error=st.none() | st.builds(ErrorInfo, type=st.text(max_size=10), message=st.text(max_size=20)),
    usage=st.builds(
        Usage, prompt_tokens=st.integers(0, 10**6), completion_tokens=st.integers(0, 10**6)
    ),
    executor=st.none() | st.text(max_size=8),
    attempts=st.integers(0, 9),
    started_at=st.floats(min_value=0, max_value=4e9),
    finished_at=st.floats(min_value=0, max_value=4e9),
    cached=st.booleans(),
)


def _generic(record: StepRecord) -> bytes:
    data = converter.unstructure(record)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@given(steps)
def test_step_record_bytes_equal_the_converters(record: StepRecord) -> None:
    """encode(StepRecord) is byte for byte the converter's JSON of the record."""
    assert encode(record) == _generic(record)


def test_step_record_that_is_not_json_is_refused() -> None:
    """A non-JSON output still fails with UsageError on the fast path."""
    record = StepRecord(
        run_id="r", step_id="s", output={"x": {1, 2}}, started_at=1.0, finished_at=2.0
    )
    with pytest.raises(UsageError):
        encode(record)
    nan = StepRecord(run_id="r", step_id="s", output=float("nan"), started_at=1.0, finished_at=2.0)
    with pytest.raises(UsageError):
        encode(nan)


@pytest.mark.parametrize(
    "event",
    [
        StepStarted(run_id="r", at=1.0, step_id="s"),
        StepStarted(run_id="r", at=1.0, step_id="s", attempt=3, item=7),
        StepSucceeded(
            run_id="r",
            at=2.5,
            step_id="s",
            duration_s=0.25,
            usage=Usage(prompt_tokens=4, completion_tokens=9),
            item=2,
            cached=True,
        ),
    ],
)
def test_event_text_equals_the_converters(event: Any) -> None:
    """encode_event writes exactly the converter's tagged form of the event."""
    expected = converter.unstructure(event, unstructure_as=Event)
    assert expected["type"] in EVENT_TYPES
    assert encode_event(event) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)


@given(events_of_every_type())
def test_every_event_encodes_as_the_converter_does(event: Any) -> None:
    """For every event type (the two built by hand included), encode_event writes exactly the
    converter's tagged form, and the fast builders are in use for the two hot events."""
    expected = converter.unstructure(event, unstructure_as=Event)
    assert encode_event(event) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
    assert set(_EVENT_FAST) == {StepStarted, StepSucceeded}


_anything: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.sets(st.integers()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


def _outcome(encode_fn: Any, value: Any) -> tuple[str, str]:
    try:
        return ("ok", encode_fn(value))
    except (TypeError, ValueError) as exc:
        return (type(exc).__name__, str(exc))


@given(_anything)
def test_the_reused_encoder_writes_and_refuses_exactly_what_a_fresh_one_does(value: Any) -> None:
    from taskloom.sdk._runs.text import _JSON, dumps

    assert _outcome(dumps, value) == _outcome(_JSON.encode, value)


def test_a_failed_encode_leaves_no_trace_for_the_next() -> None:
    """The reused encoder's circular-reference marks are dropped after a failure: it
    keeps nothing of a value it refused alive, and cycles are still refused."""
    import gc
    import weakref

    from taskloom.sdk._runs.text import dumps

    class Tracked(list[Any]):
        """A list that can be weakly referenced."""

    bad = Tracked([{"b": {1}}])
    seen = weakref.ref(bad)
    with pytest.raises(TypeError):
        dumps({"a": bad})
    del bad
    gc.collect()
    assert seen() is None
    assert dumps({"a": [{"b": [1]}]}) == '{"a":[{"b":[1]}]}'
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        dumps(loop)


class _Text(str):
    """A str subclass: the converter's path writes it, not the text builders."""


@pytest.mark.parametrize(
    "event",
    [
        StepStarted(run_id="r", at=1.0, step_id="s", attempt=True),
        StepStarted(run_id=_Text("r"), at=1.0, step_id="s"),
        StepStarted(run_id="r", at=1.0, step_id="s", item=False),
        StepSucceeded(run_id="r", at=1.0, step_id="s", item=True),
        StepSucceeded(run_id="r", at=1.0, step_id="s", usage=Usage(prompt_tokens=True)),
        StepSucceeded(run_id="r", at=1.0, step_id=_Text('s\n\u2028"')),
    ],
)
def test_values_the_text_builders_leave_to_the_converter_encode_as_it_does(event: Any) -> None:
    """bool in an int field, str subclasses: the converter's path writes them, unchanged."""
    expected = converter.unstructure(event, unstructure_as=Event)
    assert encode_event(event) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_time_is_refused_as_before(bad: float) -> None:
    with pytest.raises(UsageError):
        encode_event(StepStarted(run_id="r", at=bad, step_id="s"))
    with pytest.raises(UsageError):
        encode_event(StepSucceeded(run_id="r", at=1.0, step_id="s", duration_s=bad))
    with pytest.raises(UsageError):
        encode(StepRecord(run_id="r", step_id="s", started_at=1.0, finished_at=bad))


def test_step_records_with_odd_values_encode_as_the_converter_does() -> None:
    odd = [
        StepRecord(run_id="r", step_id="s", attempts=True, started_at=1.0, finished_at=2.0),
        StepRecord(run_id=_Text("r"), step_id="s", started_at=1.0, finished_at=2.0),
        StepRecord(
            run_id="r",
            step_id="s",
            output=_Text("o"),
            error=ErrorInfo(type=_Text("E"), message="m\u0000", retryable=True),
            started_at=1.0,
            finished_at=2.0,
            status="failed",
        ),
    ]
    for record in odd:
        assert encode(record) == _generic(record)


@given(st.text())
def test_a_text_output_is_escaped_as_json_escapes_it(text: str) -> None:
    for output in (text, '"quoted" \\ \n \u2028 \x00 é', ""):
        record = StepRecord(run_id="r", step_id="s", output=output, started_at=1.0, finished_at=2.0)
        assert encode(record) == _generic(record)


def _fields(record: StepRecord) -> tuple[Any, ...]:
    return (
        record.run_id,
        record.step_id,
        record.item,
        record.status,
        record.output,
        record.error,
        record.usage,
        record.executor,
        record.attempts,
        record.started_at,
        record.finished_at,
        record.cached,
        record.finish_reason,
    )


@given(steps)
def test_encode_step_of_fields_equals_encode_of_their_record(record: StepRecord) -> None:
    """encode_step(fields) is byte for byte encode(StepRecord(fields)), or None."""
    value = encode_step(*_fields(record))
    assert value is None or value == encode(record)
    if record.run_id and record.step_id and record.started_at == record.started_at:
        assert value == encode(record)  # every valid record with finite times is written


def test_encode_step_leaves_what_the_record_converts_or_refuses_to_the_record() -> None:
    """Fields the record would convert (an int time) or refuse (an empty step id, a
    negative item, a value that is not JSON) give None: the record is built instead."""
    good = StepRecord(run_id="r", step_id="s", output="x", started_at=1.0, finished_at=2.0)
    assert encode_step(*_fields(good)) == encode(good)
    for index, bad in ((9, 1), (1, ""), (2, -1), (4, {1, 2}), (3, "done"), (12, "maybe")):
        fields = list(_fields(good))
        fields[index] = bad
        assert encode_step(*fields) is None
