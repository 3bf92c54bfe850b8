"""Pipeline loading and validation: every problem at once, each with a JSON path and a hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from engine_support import FakeExecutor, pipeline

from taskloom.contracts import LLMStep, MapStep, Pipeline, PipelineInvalid, Problem
from taskloom.sdk import ExecutorRegistry, load_pipeline, validate_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def registry(*ids: str) -> ExecutorRegistry:
    reg = ExecutorRegistry()
    for executor_id in ids or ("fake",):
        reg.register(executor_id, FakeExecutor())
    return reg


def problems(data: Any, **kwargs: Any) -> list[Problem]:
    kwargs.setdefault("registry", registry())
    with pytest.raises(PipelineInvalid) as info:
        validate_pipeline(data, **kwargs)
    found = list(info.value.problems)
    assert str(info.value).count("\n  - ") == len(found)
    return found


def has(found: list[Problem], path: str, text: str) -> bool:
    return any(p.path == path and text in p.message for p in found)


@pytest.mark.parametrize("name", ["hello.json", "map_documents.json"])
def test_examples_are_valid(name: str) -> None:
    """The shipped example pipelines load and validate."""
    loaded = load_pipeline(EXAMPLES / name)
    assert isinstance(validate_pipeline(loaded, registry=registry()), Pipeline)


def test_load_from_path_text_and_dict_agree() -> None:
    """A file path, JSON text and a dict give the same Pipeline."""
    path = EXAMPLES / "hello.json"
    text = path.read_text()
    assert load_pipeline(path) == load_pipeline(str(path)) == load_pipeline(text)
    assert load_pipeline(json.loads(text)) == load_pipeline(path)


def test_load_reports_bad_json_and_missing_files() -> None:
    """Invalid JSON and unreadable files are PipelineInvalid with a clear message."""
    with pytest.raises(PipelineInvalid, match="not valid JSON"):
        load_pipeline('{"taskloom": ')
    with pytest.raises(PipelineInvalid, match="cannot read"):
        load_pipeline("/nonexistent/pipeline.json")


def test_needs_absent_and_empty_differ() -> None:
    """`needs` absent is None (depends on the previous step); `needs: []` is a root."""
    loaded = load_pipeline(
        pipeline({"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "needs": []})
    )
    assert isinstance(loaded.steps[0], LLMStep) and loaded.steps[0].needs is None
    assert isinstance(loaded.steps[1], LLMStep) and loaded.steps[1].needs == ()


def test_every_unknown_field_is_reported_with_a_suggestion() -> None:
    """All unknown fields anywhere (top, defaults, inputs, steps, map bodies) are reported."""
    data = pipeline(
        {"id": "a", "promt": "x", "prompt": "y"},
        {"id": "m", "map": "{{inputs.xs}}", "step": {"id": "b", "prompt": "x", "modle": "m"}},
        {"id": "c", "uses": "u", "wiht": {}},
        inputs={"xs": {"type": "array", "requird": True}},
        defaults={"retyr": {}},
        extra_top=1,
    )
    found = problems(data, plugin_steps={"u"})
    assert has(found, "$.extra_top", "unknown field")
    assert has(found, "$.defaults.retyr", "unknown field")
    assert has(found, "$.inputs['xs'].requird", "unknown field")
    assert has(found, "$.steps[0].promt", "unknown field")
    assert has(found, "$.steps[1].step.modle", "unknown field")
    assert has(found, "$.steps[2].wiht", "unknown field")
    hints = {p.path: p.hint for p in found}
    assert hints["$.steps[0].promt"] == "did you mean 'prompt'?"
    assert hints["$.steps[2].wiht"] == "did you mean 'with'?"


def test_type_errors_of_different_steps_are_all_reported() -> None:
    """A bad value in one step does not hide the bad value of another."""
    found = problems(
        pipeline(
            {"id": "a", "prompt": 3},
            {"id": "b", "prompt": "x", "temperature": "hot"},
            {"id": "c", "prompt": "x", "on_error": "explode"},
            {"id": "not valid!", "prompt": "x"},
        )
    )
    paths = {p.path for p in found}
    assert {"$.steps[0].prompt", "$.steps[1].temperature", "$.steps[2].on_error"} <= paths
    assert any(p.path.startswith("$.steps[3]") for p in found)


def test_semantic_problems_are_all_reported_at_once() -> None:
    """Duplicates, unknown needs, cycles, bad references, executors and plugins: one report."""
    found = problems(
        pipeline(
            {"id": "a", "prompt": "{{steps.b.output}} {{inputs.missing}}"},
            {"id": "b", "prompt": "x", "executor": "ghost"},
            {"id": "b", "uses": "nothing"},
            {"id": "c", "prompt": "x", "needs": ["d"]},
            {"id": "d", "prompt": "x", "needs": ["c", "zz"]},
            {"id": "e", "prompt": "{{ unclosed"},
            {"id": "f", "prompt": "{{item}}"},
            output="{{steps.nope.output}}",
        ),
        registry=registry("one", "two"),
    )
    assert has(found, "$.steps[2].id", "duplicate step id 'b'")
    assert has(found, "$.steps[4].needs[1]", "unknown step 'zz'")
    assert any("cycle" in p.message and "c -> d -> c" in p.message for p in found)
    assert has(found, "$.steps[0].prompt", "undeclared input 'missing'")
    assert has(found, "$.steps[1].executor", "unknown executor 'ghost'")
    assert any(p.hint == "known executors: one, two" for p in found)
    assert has(found, "$.steps[2].uses", "unknown plugin step 'nothing'")
    assert has(found, "$.steps[5].prompt", "bad template")
    assert has(found, "$.steps[6].prompt", "unknown template root 'item'")
    assert has(found, "$.output", "unknown step 'nope'")
    assert all(p.hint for p in found if "unknown executor" in p.message or "cycle" in p.message)


def test_references_must_be_to_steps_certain_to_have_finished() -> None:
    """A step may reference its ancestors only: earlier in order, or through needs."""
    ok = pipeline(
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "x", "needs": []},
        {"id": "c", "prompt": "{{steps.a.output}} {{steps.b.output}}", "needs": ["a", "b"]},
        {"id": "d", "prompt": "{{steps.a.output}}"},
    )
    validate_pipeline(ok, registry=registry())
    found = problems(
        pipeline(
            {"id": "a", "prompt": "x"},
            {"id": "b", "prompt": "{{steps.a.output}}", "needs": []},
            {"id": "c", "prompt": "{{steps.d.output}}"},
            {"id": "d", "prompt": "x"},
        )
    )
    assert has(found, "$.steps[1].prompt", "not certain to have finished")
    assert has(found, "$.steps[2].prompt", "not certain to have finished")
    hint = next(p.hint for p in found if p.path == "$.steps[1].prompt")
    assert "needs" in hint


def test_group_and_map_rules() -> None:
    """Inner steps cannot have needs; map must be one list reference; locals only in maps."""
    found = problems(
        pipeline(
            {"id": "g", "parallel": [{"id": "x", "prompt": "1", "needs": []}]},
            {"id": "m", "map": "docs: {{inputs.xs}}", "step": {"id": "s", "prompt": "{{item}}"}},
            {"id": "n", "map": "{{inputs.s}}", "as": "index", "step": {"id": "t", "prompt": "p"}},
            {"id": "e", "parallel": []},
            {"id": "r", "prompt": "{{steps.s.output}}"},
            inputs={"xs": {"type": "array"}, "s": {"type": "string"}},
        )
    )
    assert has(found, "$.steps[0].parallel[0].needs", "cannot have 'needs'")
    assert has(found, "$.steps[1].map", "exactly one reference")
    assert has(found, "$.steps[2].map", "not a list")
    assert has(found, "$.steps[2].as", "cannot be 'index'")
    assert has(found, "$.steps[3].parallel", "at least one step")
    refer = next(p for p in found if p.path == "$.steps[4].prompt")
    assert "body of map 'm'" in refer.hint


def test_map_body_sees_item_index_and_as_name() -> None:
    """Inside a map's step, the `as` name and `index` are valid roots."""
    data = pipeline(
        {
            "id": "m",
            "map": "{{inputs.xs}}",
            "as": "doc",
            "step": {"id": "s", "prompt": "{{doc.t}} {{index}}"},
        },
        inputs={"xs": {"type": "array"}},
    )
    loaded = validate_pipeline(data, registry=registry())
    assert isinstance(loaded.steps[0], MapStep)
    found = problems(
        pipeline(
            {
                "id": "m",
                "map": "{{inputs.xs}}",
                "as": "doc",
                "step": {"id": "s", "prompt": "{{item}}"},
            },
            inputs={"xs": {"type": "array"}},
        )
    )
    assert has(found, "$.steps[0].step.prompt", "unknown template root 'item'")


def test_inputs_missing_wrong_and_unknown_are_reported_with_pipeline_problems() -> None:
    """Inputs are checked with the pipeline, and all their problems are listed."""
    data = pipeline(
        {"id": "a", "prompt": "{{inputs.n}}", "executor": "ghost"},
        inputs={
            "n": {"type": "integer"},
            "flag": {"type": "boolean"},
            "name": {"type": "string"},
            "opt": {"type": "string", "required": False},
            "dflt": {"type": "array", "default": [1]},
        },
    )
    found = problems(data, inputs={"n": True, "flag": "yes", "extra": 1})
    assert has(found, "inputs.n", "must be of type integer")
    assert has(found, "inputs.flag", "must be of type boolean")
    assert has(found, "inputs.name", "missing required input")
    assert has(found, "inputs.extra", "unknown input")
    assert has(found, "$.steps[0].executor", "unknown executor")
    assert not any(p.path in ("inputs.opt", "inputs.dflt") for p in found)


def test_format_marker_and_required_fields() -> None:
    """The format marker, name and steps are required; a step must say what kind it is."""
    found = problems({"steps": [{"id": "a"}]})
    assert has(found, "$.taskloom", "missing or unsupported format")
    assert has(found, "$.name", "missing required field")
    assert has(found, "$.steps[0]", "cannot tell what kind of step")
    found = problems({"taskloom": "pipeline/v9", "name": "x", "steps": []})
    assert has(found, "$.taskloom", "unsupported format 'pipeline/v9'")


def test_no_executor_registered_is_a_problem() -> None:
    """An LLM step with no executor anywhere (and none registered) is reported."""
    found = problems(pipeline({"id": "a", "prompt": "x"}), registry=ExecutorRegistry())
    assert has(found, "$.steps[0].executor", "no executor")


def test_extract_json_and_on_truncated_are_checked_against_the_step_kind() -> None:
    """extract_json on a text step and on_truncated on a JSON step are reported with hints."""
    found = problems(
        pipeline(
            {"id": "a", "prompt": "p", "extract_json": True},
            {"id": "b", "prompt": "p", "response_format": {"type": "json"}, "on_truncated": "fail"},
        )
    )
    assert has(found, "$.steps[0].extract_json", "JSON steps only")
    assert has(found, "$.steps[1].on_truncated", "text steps")
