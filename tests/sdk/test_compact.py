"""The compact pipeline a run record keeps: it rebuilds the same pipeline, and is small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings

from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import CompletionRequest, Message, Pipeline, PipelineInvalid, serde
from taskloom.contracts.testing.strategies import pipelines
from taskloom.sdk import Engine, ExecutorRegistry, cache_key, load_pipeline, pipeline_digest
from taskloom.sdk._pipeline.compact import compact_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@settings(max_examples=300)
@given(pipelines())
def test_compact_form_rebuilds_an_equal_pipeline_with_the_same_digest(pipeline: Pipeline) -> None:
    compact = compact_pipeline(pipeline)
    rebuilt = serde.structure(json.loads(json.dumps(compact)), Pipeline)
    assert rebuilt == pipeline  # so its unstructured form, which the digest hashes, is equal
    assert compact["taskloom"] == "pipeline/v1"


def _scripted() -> ExecutorRegistry:
    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor())
    return registry


def _keys(data: Any) -> int:
    if isinstance(data, dict):
        return len(data) + sum(_keys(v) for v in data.values())
    if isinstance(data, list):
        return sum(_keys(v) for v in data)
    return 0


@given(pipelines())
def test_compact_form_never_has_more_keys_than_the_full_one(pipeline: Pipeline) -> None:
    assert _keys(compact_pipeline(pipeline)) <= _keys(serde.unstructure(pipeline))


def test_values_equal_to_a_default_but_of_another_type_are_kept() -> None:
    # needs=[] (start at once) differs from no needs (after the previous step)
    pipeline = load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": "p",
            "steps": [
                {"id": "a", "prompt": "x"},
                {"id": "b", "prompt": "y", "needs": [], "stream": False},
            ],
        }
    )
    compact = compact_pipeline(pipeline)
    assert compact["steps"] == [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "needs": []}]
    assert serde.structure(compact, Pipeline) == pipeline


def test_every_example_round_trips() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        raw = json.loads(path.read_text())
        if raw.get("taskloom") != "pipeline/v1":
            continue
        pipeline = load_pipeline(raw)
        assert serde.structure(compact_pipeline(pipeline), Pipeline) == pipeline, path.name


async def test_the_run_record_keeps_the_compact_form_and_resume_uses_it() -> None:
    steps = [{"id": f"s{i}", "prompt": "next"} for i in range(50)]
    pipeline = load_pipeline({"taskloom": "pipeline/v1", "name": "chain", "steps": steps})
    async with Engine(registry=_scripted()) as engine:
        result = await engine.run(pipeline)
        assert engine.runstore is not None
        record = await engine.runstore.load_run(result.run_id)
        assert record.pipeline == {"taskloom": "pipeline/v1", "name": "chain", "steps": steps}
        assert record.pipeline_digest == pipeline_digest(pipeline)
        again = await engine.resume(result.run_id)  # from the stored copy
        assert again.output == result.output


@pytest.mark.parametrize("number", [2**53, -(2**60), float("nan"), float("inf")])
async def test_a_number_json_cannot_carry_exactly_is_a_pipeline_problem(number: Any) -> None:
    raw = {
        "taskloom": "pipeline/v1",
        "name": "p",
        "steps": [{"id": "a", "prompt": "x"}],
        "output": {"n": [1, number]},
    }
    async with Engine(registry=_scripted()) as engine:
        with pytest.raises(PipelineInvalid) as caught:
            await engine.run(raw)
        assert [(p.path, p.hint) for p in caught.value.problems] == [
            ("$.output.n[1]", "write it as a string" if isinstance(number, int) else "use a number")
        ]
        assert engine.runstore is not None
        assert await engine.runstore.list_runs() == []  # refused before anything was stored


def test_a_request_with_a_seed_beyond_json_range_still_has_a_stable_cache_key() -> None:
    messages: Any = (Message(role="user", content="x"),)
    big = CompletionRequest(messages=messages, seed=2**60)
    other = CompletionRequest(messages=messages, seed=2**60 + 1)
    assert cache_key("e", big) == cache_key("e", big)
    assert cache_key("e", big) != cache_key("e", other)


@pytest.mark.parametrize(
    ("output", "path", "words"),
    [
        ({1: "x"}, "$.output", "is not text"),
        ({"k": {1, 2}}, "$.output.k", "set is not JSON data"),
        ({"k": [object()]}, "$.output.k[0]", "object is not JSON data"),
    ],
)
async def test_a_pipeline_object_holding_what_json_cannot_is_a_pipeline_problem(
    output: Any, path: str, words: str
) -> None:
    """A Pipeline built in Python skips the JSON pass: its digest step names the bad value."""
    pipeline = attrs.evolve(
        load_pipeline(
            {"taskloom": "pipeline/v1", "name": "p", "steps": [{"id": "a", "prompt": "x"}]}
        ),
        output=output,
    )
    async with Engine(registry=_scripted()) as engine:
        with pytest.raises(PipelineInvalid) as caught:
            engine.validate(pipeline)
    assert [(p.path, words in p.message) for p in caught.value.problems] == [(path, True)]


def test_a_fallback_cache_key_never_matches_a_request_holding_the_same_texts() -> None:
    """Numbers written as text for the key cannot collide with a request that has texts."""
    from taskloom.contracts import ResponseFormat

    messages: Any = (Message(role="user", content="x"),)
    big = CompletionRequest(
        messages=messages,
        response_format=ResponseFormat(type="json", json_schema={"maximum": 2**53 + 1}),
    )
    text = CompletionRequest(
        messages=messages,
        response_format=ResponseFormat(type="json", json_schema={"maximum": str(2**53 + 1)}),
    )
    assert cache_key("e", big) != cache_key("e", text)
