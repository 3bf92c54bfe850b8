"""Run records as data: converter round trips, format checks, validators, usage sums."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_runstore_support import make_run, make_step

from taskloom.contracts import DecodeError, ErrorInfo, StepStarted, StepSucceeded, Usage
from taskloom.contracts.testing.strategies import json_values
from taskloom.sdk._runs.codec import (
    decode,
    decode_event_batch,
    encode,
    encode_event,
    encode_event_batch,
)
from taskloom.sdk._runs.records import (
    RUN_STATUSES,
    CacheEntry,
    EventBatch,
    LeaseRecord,
    RunRecord,
    StepRecord,
    index_key,
    step_key,
    total_usage,
    usage_by_executor,
    usage_by_step,
)

_json: st.SearchStrategy[Any] = json_values()
_usage = st.builds(
    Usage, prompt_tokens=st.integers(0, 10**6), completion_tokens=st.integers(0, 10**6)
)
_error = st.none() | st.builds(ErrorInfo, type=st.text(max_size=10), message=st.text(max_size=20))
_time = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_id = st.text("abcdef0123456789", min_size=1, max_size=12)

run_records = st.builds(
    RunRecord,
    run_id=_id,
    pipeline_name=st.text(max_size=10),
    pipeline_digest=st.text("0123456789abcdef", max_size=64),
    pipeline=st.dictionaries(st.text(max_size=5), _json, max_size=3),
    inputs=st.dictionaries(st.text(max_size=5), _json, max_size=3),
    status=st.sampled_from(RUN_STATUSES),
    created_at=_time,
    started_at=st.none() | _time,
    finished_at=st.none() | _time,
    output=_json,
    error=_error,
    usage=_usage,
    usage_by_executor=st.dictionaries(st.text(max_size=5), _usage, max_size=3),
    steps_done=st.integers(0, 10**5),
)
step_records = st.builds(
    StepRecord,
    run_id=_id,
    step_id=st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,10}", fullmatch=True),
    item=st.none() | st.integers(0, 10**6),
    status=st.sampled_from(["succeeded", "failed"]),
    output=_json,
    error=_error,
    usage=_usage,
    executor=st.none() | st.text(max_size=8),
    attempts=st.integers(0, 10),
    started_at=_time,
    finished_at=_time,
    cached=st.booleans(),
)


@given(run_records)
def test_run_record_round_trips(record: RunRecord) -> None:
    """Every run record survives encode then decode unchanged."""
    assert decode(encode(record), RunRecord, where="runs/x") == record


@given(step_records)
def test_step_record_round_trips(record: StepRecord) -> None:
    """Every checkpoint survives encode then decode unchanged."""
    assert decode(encode(record), StepRecord, where="steps/x") == record


@given(run_records)
def test_every_stored_record_carries_its_format(record: RunRecord) -> None:
    """The JSON of a stored record has format 1."""
    assert json.loads(encode(record))["format"] == 1


def test_event_batch_round_trips_with_tags() -> None:
    """A stored batch keeps each event's stable type tag and decodes back equal, numbered."""
    events = [
        StepSucceeded(run_id="r", at=1.0, step_id="a", item=3, cached=True),
        StepStarted(run_id="r", at=2.0, step_id="b"),
    ]
    payload = encode_event_batch(7, [encode_event(e) for e in events])
    data = json.loads(payload)
    assert data["format"] == 1 and data["first"] == 7
    assert [e["type"] for e in data["events"]] == ["step.succeeded", "step.started"]
    assert decode_event_batch(payload, where="s") == EventBatch(first=7, events=events)


def test_empty_event_batch_is_refused() -> None:
    """A stream entry with no events is damaged data: DecodeError."""
    with pytest.raises(DecodeError, match="stream x entry 3"):
        decode_event_batch(b'{"format":1,"first":1,"events":[]}', where="stream x entry 3")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("format"), "format None"),
        (lambda d: d.update(format=2), "upgrade taskloom"),
        (lambda d: d.update(format="1"), "format '1'"),
        (lambda d: d.update(status="done"), "does not match RunRecord"),
        (lambda d: d.update(extra=1), "does not match RunRecord"),
        (lambda d: d.pop("run_id"), "does not match RunRecord"),
        (lambda d: d.update(created_at="yesterday"), "created_at"),
    ],
)
def test_bad_run_record_is_a_decode_error_naming_it(mutate: Any, message: str) -> None:
    """Wrong format or content raises DecodeError naming the record, never a default."""
    data = json.loads(encode(make_run("abc")))
    mutate(data)
    with pytest.raises(DecodeError, match=message) as info:
        decode(json.dumps(data).encode(), RunRecord, where="runs/abc")
    assert "runs/abc" in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"[1]", b"\xff\xfe", b'"text"', b"{"])
def test_non_object_bytes_are_a_decode_error(raw: bytes) -> None:
    """Bytes that are not a JSON object raise DecodeError naming the record."""
    with pytest.raises(DecodeError, match="steps/k"):
        decode(raw, StepRecord, where="steps/k")


def test_validators_refuse_bad_values() -> None:
    """Records refuse an unknown status, negative item, empty ids and bad usage maps."""
    with pytest.raises(ValueError):
        make_run(status="done")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_step(item=-1)
    with pytest.raises(TypeError):
        make_step(step_id="")
    with pytest.raises(TypeError):
        make_run(usage_by_executor={"e": 3})
    with pytest.raises(ValueError):
        LeaseRecord(run_id="r", holder="h", acquired_at=1, expires_at=2, format=0)


def test_records_are_frozen() -> None:
    """Records cannot be changed in place; attrs.evolve makes a copy."""
    run = make_run()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.status = "failed"  # type: ignore[misc]
    assert attrs.evolve(run, status="failed").status == "failed"


def test_cache_entry_round_trips() -> None:
    """A cache entry decodes back equal."""
    from taskloom.contracts import CompletionResult

    entry = CacheEntry(result=CompletionResult(text="x", latency_s=0.5), stored_at=3)
    assert decode(encode(entry), CacheEntry, where="cache/k") == entry


def test_keys_are_unique_and_time_index_sorts_newest_first() -> None:
    """Item 0 and None have distinct keys; index keys sort newest first as text."""
    assert step_key("r", "s", 0) != step_key("r", "s", None)
    keys = [index_key("r", t) for t in (1.0, 1_700_000_000.5, 1_700_000_000.25, 4e9)]
    assert sorted(keys) == [keys[3], keys[1], keys[2], keys[0]]


def test_usage_sums_per_step_executor_and_run() -> None:
    """Usage adds up per step id, per executor (plugin steps left out) and for the run."""
    steps = [
        make_step("m", 0, tokens=1, executor="a"),
        make_step("m", 1, tokens=2, executor="b"),
        make_step("s", tokens=4, executor="a"),
        make_step("plug", tokens=0, executor=None),
    ]
    assert total_usage(steps) == Usage(prompt_tokens=7, completion_tokens=14)
    assert usage_by_step(steps) == {
        "m": Usage(prompt_tokens=3, completion_tokens=6),
        "s": Usage(prompt_tokens=4, completion_tokens=8),
        "plug": Usage(),
    }
    assert usage_by_executor(steps) == {
        "a": Usage(prompt_tokens=5, completion_tokens=10),
        "b": Usage(prompt_tokens=2, completion_tokens=4),
    }
    assert total_usage([]) == Usage()
