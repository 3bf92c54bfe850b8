"""Every contract data type survives JSON through the one converter, and malformed data
is refused with a DecodeError that names the bad field's path."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import taskloom.contracts as contracts
from taskloom.contracts import (
    Append,
    CacheHit,
    Capabilities,
    Check,
    ChunkStreamed,
    CommitResult,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    DecodeError,
    Delete,
    ErrorInfo,
    Event,
    FileEntry,
    InputSpec,
    LLMStep,
    MapStep,
    Message,
    Op,
    ParallelStep,
    Pipeline,
    PluginManifest,
    PluginStep,
    Problem,
    Put,
    Record,
    ResponseFormat,
    RetryPolicy,
    RunCancelledEvent,
    RunFailed,
    RunStarted,
    RunSucceeded,
    Secret,
    SecretRef,
    Step,
    StepDefaults,
    StepFailedEvent,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StreamEntry,
    TaskloomError,
    Usage,
    serde,
)
from taskloom.contracts.testing import strategies as tst

# (type to decode as, strategy) for every data type, and for the tagged unions.
CASES: dict[str, tuple[Any, Any]] = {
    "Record": (Record, tst.records()),
    "StreamEntry": (StreamEntry, tst.stream_entries()),
    "Put": (Put, tst.puts()),
    "Delete": (Delete, tst.deletes()),
    "Append": (Append, tst.appends()),
    "Check": (Check, tst.checks()),
    "Op": (Op, tst.ops()),
    "CommitResult": (CommitResult, tst.commit_results()),
    "Message": (Message, tst.messages()),
    "ResponseFormat": (ResponseFormat, tst.response_formats()),
    "CompletionRequest": (CompletionRequest, tst.completion_requests()),
    "Usage": (Usage, tst.usages()),
    "CompletionResult": (CompletionResult, tst.completion_results()),
    "CompletionChunk": (CompletionChunk, tst.completion_chunks()),
    "SecretRef": (SecretRef, tst.secret_refs()),
    "ErrorInfo": (ErrorInfo, tst.error_infos()),
    "Event": (Event, tst.events()),
    "FileEntry": (FileEntry, tst.file_entries()),
    "Capabilities": (Capabilities, tst.capabilities()),
    "PluginManifest": (PluginManifest, tst.plugin_manifests()),
    "Problem": (Problem, tst.problems()),
    "RetryPolicy": (RetryPolicy, tst.retry_policies()),
    "StepDefaults": (StepDefaults, tst.step_defaults()),
    "InputSpec": (InputSpec, tst.input_specs()),
    "LLMStep": (LLMStep, tst.llm_steps()),
    "PluginStep": (PluginStep, tst.plugin_steps()),
    "MapStep": (MapStep, tst.map_steps()),
    "ParallelStep": (ParallelStep, tst.parallel_steps()),
    "Step": (Step, tst.steps()),
    "Pipeline": (Pipeline, tst.pipelines()),
    "Budget": (contracts.Budget, tst.budgets()),
    "InputRequest": (contracts.InputRequest, tst.input_requests()),
    "ApprovalRequest": (contracts.ApprovalRequest, tst.approval_requests()),
    "InputStep": (contracts.InputStep, tst.input_steps()),
    "ApprovalStep": (contracts.ApprovalStep, tst.approval_steps()),
    "StorageFinding": (contracts.StorageFinding, tst.storage_findings()),
}
for _event_type in (
    RunStarted,
    RunSucceeded,
    RunFailed,
    RunCancelledEvent,
    StepStarted,
    StepRetrying,
    StepSucceeded,
    StepFailedEvent,
    StepSkipped,
    ChunkStreamed,
    CacheHit,
    contracts.StepWaiting,
    contracts.InputProvided,
):
    CASES[_event_type.__name__] = (_event_type, tst.events(_event_type))


def test_every_exported_data_type_has_a_round_trip_case() -> None:
    """Each attrs class that taskloom.contracts exports is covered by CASES."""
    exported = {
        name
        for name in contracts.__all__
        if isinstance(getattr(contracts, name), type) and attrs.has(getattr(contracts, name))
    }
    assert exported - set(CASES) == set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_through_json(name: str) -> None:
    """dumps then loads gives back an equal instance, and the JSON is stable."""
    cls, strategy = CASES[name]

    @given(strategy)
    def check(value: Any) -> None:
        data = serde.dumps(value, cls)
        back = serde.loads(data, cls)
        assert back == value
        assert type(back) is type(value)
        assert serde.dumps(back, cls) == data
        json.loads(data)  # plain JSON, no NaN or Infinity

    check()


@given(tst.events())
def test_events_carry_their_stable_tag(event: Any) -> None:
    """An event's JSON has ``type`` set to its stable name from EVENT_TYPES."""
    data = serde.unstructure(event, Event)
    assert contracts.EVENT_TYPES[data["type"]] is type(event)


@given(tst.ops())
def test_ops_carry_their_tag(op: Any) -> None:
    """An operation's JSON has ``op`` set to put, delete, append or check."""
    data = serde.unstructure(op, Op)
    assert data["op"] == type(op).__name__.lower()


def test_secrets_serialize_as_the_mask() -> None:
    """A Secret becomes the mask in JSON, never its value."""
    assert serde.dumps(Secret("hunter2")) == json.dumps(contracts.MASK).encode()


_PIPELINE: dict[str, Any] = {
    "taskloom": "pipeline/v1",
    "name": "p",
    "steps": [
        {"id": "a", "prompt": "hi"},
        {
            "id": "g",
            "parallel": [
                {"id": "b", "prompt": "x"},
                {"id": "c", "uses": "tool", "retry": {"max_attempts": 2}},
            ],
        },
    ],
}


def _with(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(data))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


MALFORMED: list[tuple[str, Any, Any, str]] = [
    (
        "wrong type",
        {"namespace": "n", "key": "k", "value": "", "version": "1", "updated_at": 1.0},
        Record,
        "$.version",
    ),
    (
        "bool is not an int",
        {"namespace": "n", "key": "k", "value": "", "version": True, "updated_at": 1.0},
        Record,
        "$.version",
    ),
    (
        "missing field",
        {"namespace": "n", "value": "", "version": 1, "updated_at": 1.0},
        Record,
        "key",
    ),
    (
        "bad base64",
        {"op": "put", "namespace": "n", "key": "k", "value": "not base64!"},
        Op,
        "value",
    ),
    (
        "bad role",
        {"messages": [{"role": "bogus", "content": "x"}]},
        CompletionRequest,
        "$.messages[0].role",
    ),
    (
        "bad nested content",
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 5}]},
        CompletionRequest,
        "$.messages[1].content",
    ),
    ("bad step field", _with(_PIPELINE, ("steps", 0, "prompt"), 5), Pipeline, "$.steps[0].prompt"),
    (
        "bad nested step",
        _with(_PIPELINE, ("steps", 1, "parallel", 1, "retry", "max_attempts"), "x"),
        Pipeline,
        "$.steps[1].parallel[1].retry.max_attempts",
    ),
    ("unknown field", _with(_PIPELINE, ("steps", 0, "promt"), "typo"), Pipeline, "promt"),
    ("step of no kind", _with(_PIPELINE, ("steps", 0), {"id": "z"}), Pipeline, "prompt"),
    ("unknown event", {"type": "run.exploded", "run_id": "r", "at": 1.0}, Event, "run.exploded"),
    ("usage below zero", {"prompt_tokens": -1}, Usage, "$.prompt_tokens"),
    (
        "validator",
        {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0},
        CompletionRequest,
        "$.max_tokens",
    ),
    (
        "validator in a nested object",
        _with(_PIPELINE, ("steps", 1, "parallel", 1, "retry", "max_attempts"), 0),
        Pipeline,
        "$.steps[1].parallel[1].retry.max_attempts",
    ),
    (
        "renamed field",
        {"id": "m", "map": "inputs.xs", "as": "1bad", "step": {"id": "b", "prompt": "x"}},
        MapStep,
        "$.as",
    ),
    (
        "regex validator",
        {"path": "a", "size": 1, "sha256": "xyz"},
        FileEntry,
        "$.sha256",
    ),
]


@pytest.mark.parametrize(("why", "data", "cls", "named"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_data_names_the_path(why: str, data: Any, cls: Any, named: str) -> None:
    """Malformed data raises DecodeError (a TaskloomError) whose message names the field."""
    with pytest.raises(DecodeError) as caught:
        serde.structure(data, cls)
    assert isinstance(caught.value, TaskloomError)
    assert named in str(caught.value), f"{why}: {caught.value} (path {caught.value.path})"
    if named.startswith("$"):
        assert caught.value.path == named


@pytest.mark.parametrize("text", [b"{", b"[1,", b"\xff", b"NaN"])
def test_text_that_is_not_json_is_a_decode_error(text: bytes) -> None:
    """Bytes that are not JSON raise DecodeError, never a bare ValueError."""
    with pytest.raises(DecodeError):
        serde.loads(text, Usage)


@given(st.sampled_from(sorted(CASES)), st.data())
def test_extra_fields_are_refused(name: str, data: st.DataObject) -> None:
    """Adding an unknown field to any type's JSON makes decoding fail, naming the field."""
    cls, strategy = CASES[name]
    raw = serde.unstructure(data.draw(strategy), cls)
    raw["zz_unknown"] = 1
    with pytest.raises(DecodeError, match="zz_unknown"):
        serde.structure(raw, cls)
