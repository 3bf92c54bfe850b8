"""Validation never crashes: for any JSON pipeline and inputs, validate and run agree.

Either both accept, or both raise ``PipelineInvalid`` whose problems each carry a
path; never another exception (an ``AttributeError``, a ``RecursionError``, an
"internal error"), whatever the document: wrong types anywhere, deep nesting,
huge numbers, NaN and Infinity, lone surrogates and odd strings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from taskloom.contracts import PipelineInvalid, StepFailed

odd_text = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        [
            "",
            " ",
            "\ud800",
            "a\x00b",
            "{{",
            "}}",
            "{{inputs.x}}",
            "{{steps.a.output}}",
            "{{ inputs }}",
            "{{item}}",
            "é" * 3,
            "\u202e",
            "[/oops]",
            "$ref",
        ]
    ),
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, -1, 2**53 + 1, 10**4000, -(10**4200)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for n in range(levels):
        value = [value] if n % 2 else {"k": value}
    return value


deep_values = st.builds(deep, st.sampled_from([20, 60, 150]), scalars)
anything = st.one_of(json_values, deep_values)

step_ids = st.sampled_from(["a", "b", "c", "", "a b", "steps", 1, None])
templates = st.sampled_from(
    ["hi", "{{inputs.x}}", "{{steps.a.output}}", "{{steps.zz.output}}", "{{item}}", "{{", "x}}"]
)


@st.composite
def steps(draw: st.DrawFn, depth: int = 0) -> Any:
    kind = draw(st.sampled_from(["llm", "map", "parallel", "plugin", "junk"]))
    step: dict[str, Any] = {"id": draw(step_ids)}
    if kind == "llm":
        step["prompt"] = draw(st.one_of(templates, anything))
    elif kind == "map":
        step["map"] = draw(st.one_of(st.just("{{inputs.x}}"), anything))
        step["step"] = draw(steps(depth + 1)) if depth < 2 else {"id": "in", "prompt": "p"}
    elif kind == "parallel":
        step["parallel"] = (
            draw(st.lists(steps(depth + 1), max_size=3)) if depth < 2 else draw(anything)
        )
    elif kind == "plugin":
        step["uses"] = draw(st.one_of(st.just("nope"), anything))
    else:
        return draw(anything)
    for key in draw(
        st.lists(
            st.sampled_from(
                ["needs", "retry", "timeout_s", "on_error", "response_format", "cache", "extra"]
            ),
            max_size=2,
        )
    ):
        step[key] = draw(
            st.one_of(anything, st.just({"type": "json", "json_schema": {"type": "objec"}}))
        )
    return step


@st.composite
def pipelines(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(anything)
    doc: dict[str, Any] = {"taskloom": draw(st.sampled_from(["pipeline/v1", "pipeline/v1", "x"]))}
    doc["steps"] = draw(st.one_of(st.lists(steps(), max_size=4), anything))
    if draw(st.booleans()):
        doc["inputs"] = draw(
            st.one_of(
                st.just({"x": {"type": "array"}}),
                st.just({"x": {"type": "string", "default": "d"}}),
                st.dictionaries(odd_text, anything, max_size=2),
                anything,
            )
        )
    for key in draw(st.lists(st.sampled_from(["output", "defaults", "name", "extra"]), max_size=2)):
        doc[key] = draw(anything)
    return doc


inputs_strategy = st.one_of(
    st.none(),
    st.just({"x": ["a", "b"]}),
    st.dictionaries(st.sampled_from(["x", "y", "\ud800"]), anything, max_size=2),
    st.dictionaries(st.integers(0, 3), anything, max_size=2),
    anything,
)


def _outcome(action: Any) -> str:
    """'ok', or 'invalid' (every problem has a path); anything else fails the test."""
    try:
        action()
    except PipelineInvalid as exc:
        assert exc.problems, "PipelineInvalid without problems"
        for problem in exc.problems:
            assert isinstance(problem.path, str) and problem.path, problem
            assert problem.message, problem
        return "invalid"
    return "ok"


@given(pipeline=pipelines(), inputs=inputs_strategy)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_validate_and_run_agree_and_never_crash(pipeline: Any, inputs: Any) -> None:
    """validate and run both accept, or both raise PipelineInvalid with paths; nothing else.

    Paths start with ``$`` inside the pipeline and with ``inputs.`` for given inputs.
    """
    engine, _ = make_engine(FakeExecutor())

    async def both() -> tuple[str, str]:
        async with engine:
            checked = _outcome(lambda: engine.validate(pipeline, inputs))

            ran = "ok"
            try:
                await engine.run(pipeline, inputs)
            except PipelineInvalid as exc:
                assert exc.problems and all(p.path for p in exc.problems)
                ran = "invalid"
            except StepFailed:
                ran = "ok"  # valid, then a step failed at run time: not validation's business
            return checked, ran

    checked, ran = asyncio.run(both())
    event(f"validate: {checked}")
    assert checked == ran, (checked, ran)


def _agree(pipeline: Any, inputs: Any) -> str:
    engine, _ = make_engine(FakeExecutor())

    async def both() -> tuple[str, str]:
        async with engine:
            checked = _outcome(lambda: engine.validate(pipeline, inputs))
            try:
                await engine.run(pipeline, inputs)
            except PipelineInvalid as exc:
                assert exc.problems and all(p.path for p in exc.problems)
                return checked, "invalid"
            return checked, "ok"

    checked, ran = asyncio.run(both())
    assert checked == ran, (checked, ran)
    return checked


input_types = st.sampled_from([None, "string", "number", "integer", "boolean", "array", "object"])


@given(kind=input_types, value=anything)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_input_value_is_accepted_or_refused_alike(kind: str | None, value: Any) -> None:
    """A valid pipeline with any input value: validate and run agree, never crash."""
    spec: dict[str, Any] = {} if kind is None else {"type": kind}
    doc = {
        "taskloom": "pipeline/v1",
        "name": "p",
        "inputs": {"x": spec},
        "steps": [{"id": "a", "prompt": "say {{inputs.x}}"}],
        "output": "{{inputs.x}}",
    }
    event(f"validate: {_agree(doc, {'x': value})}")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("number", float("nan")),
        ("number", float("inf")),
        ("number", -float("inf")),
        ("array", [1.0, {"a": float("nan")}]),
        ("string", "\ud800"),
        ("object", {"k\udfff": 1}),
        ("object", {"k": ["\udfff"]}),
        ("integer", 10**5000),
        ("array", deep(1500)),
        ("array", deep(5000, "leaf")),
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "nested-nan",
        "lone-surrogate",
        "surrogate-key",
        "nested-surrogate",
        "huge-int",
        "deep-1500",
        "deep-5000",
    ],
)
def test_inputs_run_refuses_are_refused_by_validate_with_a_path(kind: str, value: Any) -> None:
    """NaN, infinities, lone surrogates, 5,000-digit integers and deep nesting in an input:
    validate refuses them as run does, with the input's path, never an internal error."""
    doc = {
        "taskloom": "pipeline/v1",
        "name": "p",
        "inputs": {"x": {"type": kind}},
        "steps": [{"id": "a", "prompt": "say {{inputs.x}}"}],
    }
    assert _agree(doc, {"x": value}) == "invalid"
    with pytest.raises(PipelineInvalid) as caught:
        make_engine(FakeExecutor())[0].validate(doc, {"x": value})
    assert [p.path for p in caught.value.problems] == ["inputs.x"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"taskloom": "pipeline/v1", "name": "p", "steps": [], "n": ' + "9" * 5000 + "}",
            "digits",
        ),
        ('{"taskloom": "pipeline/v1", "name": "p", "steps": [], "n": NaN}', "NaN"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_pipeline_text_that_json_cannot_hold_is_invalid_not_internal(
    text: str, reason: str
) -> None:
    """Pipeline text with a 5,000-digit integer, NaN or 100,000 levels: PipelineInvalid at $."""
    with pytest.raises(PipelineInvalid, match=reason) as caught:
        make_engine(FakeExecutor())[0].validate(text)
    assert [p.path for p in caught.value.problems] == ["$"]


def test_steps_of_the_wrong_shape_are_problems_not_attribute_errors() -> None:
    """'"steps": ["a"]' and other non-objects in a step list are reported with their paths."""
    doc = {"taskloom": "pipeline/v1", "name": "p", "steps": ["a", None, 5, [], {"id": "b"}]}
    with pytest.raises(PipelineInvalid) as caught:
        make_engine(FakeExecutor())[0].validate(doc)
    paths = {p.path for p in caught.value.problems}
    assert {f"$.steps[{i}]" for i in range(5)} <= paths


def test_validate_reports_every_problem_of_a_file() -> None:
    """Seven independent mistakes in one pipeline: all seven are reported at once."""
    doc = {
        "taskloom": "pipeline/v1",
        "name": 5,
        "inputs": {"x": {"type": "strin"}},
        "defaults": {"temperature": "hot"},
        "steps": [
            {"id": "a", "prompt": "{{inputs.nope}}"},
            {"id": "a", "prompt": "dup", "needs": ["zz"]},
            {
                "id": "m",
                "map": "{{inputs.x}}",
                "step": {"id": "s", "prompt": "{{item}}"},
                "retry": 3,
            },
            {
                "id": "j",
                "prompt": "p",
                "response_format": {"type": "json", "json_schema": {"type": 1}},
            },
        ],
    }
    with pytest.raises(PipelineInvalid) as caught:
        make_engine(FakeExecutor())[0].validate(doc)
    paths = {p.path for p in caught.value.problems}
    expected = {
        "$.name",
        "$.inputs['x'].type",
        "$.defaults.temperature",
        "$.steps[0].prompt",
        "$.steps[1].id",
        "$.steps[1].needs[0]",
        "$.steps[2].retry",
        "$.steps[3].response_format.json_schema.type",
    }
    missing = {e for e in expected if not any(p.startswith(e) for p in paths)}
    assert not missing, (missing, paths)


def test_a_broken_pipeline_still_reports_the_problems_of_its_inputs() -> None:
    """A structural mistake does not hide the given inputs' problems (or the reverse)."""
    doc = {
        "taskloom": "pipeline/v1",
        "name": "p",
        "inputs": {"n": {"type": "integer"}, "s": {"type": "strin"}},
        "steps": [{"id": "a", "prompt": "{{inputs.n}}", "temprature": 0}],
    }
    with pytest.raises(PipelineInvalid) as caught:
        make_engine(FakeExecutor())[0].validate(doc, {"n": "five", "extra": 1, "s": 3})
    paths = {p.path for p in caught.value.problems}
    assert {"$.steps[0].temprature", "inputs.n", "inputs.extra"} <= paths, paths
    assert any(p.startswith("$.inputs") for p in paths), paths
    assert "inputs.s" not in paths  # its spec is broken: that is the problem reported


@pytest.mark.parametrize("inputs", [[1], ["ab"], 5, "x=1", {1: "a"}])
def test_inputs_that_are_no_json_object_are_invalid(inputs: Any) -> None:
    """Inputs given as a list, a number, text or with non-text names: PipelineInvalid at inputs."""
    doc = {"taskloom": "pipeline/v1", "name": "p", "steps": [{"id": "a", "prompt": "p"}]}
    assert _agree(doc, inputs) == "invalid"
    with pytest.raises(PipelineInvalid) as caught:
        make_engine(FakeExecutor())[0].validate(doc, inputs)
    assert [p.path for p in caught.value.problems] == ["inputs"]


_BASE = {"taskloom": "pipeline/v1", "name": "p", "steps": [{"id": "a", "prompt": "p"}]}


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({**_BASE, "output": deep(3000)}, "$.output"),
        ({**_BASE, "inputs": {"x": {"type": "array", "default": deep(3000)}}}, "$.inputs.x"),
        ({**_BASE, "output": {"n": 10**4400}}, "$.output.n"),
        ({**_BASE, "output": [1, float("nan")]}, "$.output[1]"),
        ({**_BASE, "output": {"k\ud800": 1}}, "$.output"),
    ],
    ids=["deep-output", "deep-default", "huge-int", "nan", "surrogate-key"],
)
def test_a_pipeline_document_json_cannot_hold_is_invalid_with_its_path(
    doc: dict[str, Any], path: str
) -> None:
    """Deep nesting, huge integers, NaN or lone surrogates anywhere in a pipeline given as a
    dict: PipelineInvalid naming where, from validate and run alike (not a RecursionError)."""
    assert _agree(doc, None) == "invalid"
    with pytest.raises(PipelineInvalid) as caught:
        make_engine(FakeExecutor())[0].validate(doc)
    assert any(p.path.startswith(path) for p in caught.value.problems), caught.value.problems
