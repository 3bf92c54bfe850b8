"""The pipeline JSON Schema: generated from the types, checked in, and true to the examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from taskloom.contracts import serde
from taskloom.contracts._pipeline import LLMStep, MapStep, ParallelStep, Pipeline, PluginStep
from taskloom.contracts.schema import pipeline_json_schema

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "examples" / "pipeline.schema.json"


def _is_pipeline(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("taskloom") == "pipeline/v1"


# examples/ also holds other JSON (a trust store...): only pipelines are checked here.
EXAMPLE_PIPELINES = sorted(p for p in (ROOT / "examples").glob("*.json") if _is_pipeline(p))


def test_checked_in_schema_equals_generated() -> None:
    """examples/pipeline.schema.json is exactly what pipeline_json_schema() generates."""
    assert json.loads(CHECKED_IN.read_text(encoding="utf-8")) == pipeline_json_schema(), (
        "regenerate it: python -c 'import json; from taskloom.contracts.schema import "
        "pipeline_json_schema as s; print(json.dumps(s(), indent=2))' "
        "> examples/pipeline.schema.json"
    )


def test_schema_mirrors_the_attrs_types() -> None:
    """Every attrs field appears (with JSON renames), required fields are required, no extras."""
    defs = pipeline_json_schema()["$defs"]
    for cls in (Pipeline, LLMStep, PluginStep, ParallelStep, MapStep):
        schema = defs[cls.__name__]
        names = {{"with_": "with", "as_": "as"}.get(f.name, f.name) for f in cls.__attrs_attrs__}
        assert set(schema["properties"]) == names
        assert schema["additionalProperties"] is False
    assert defs["PluginStep"]["required"] == ["id", "uses"]
    assert defs["MapStep"]["required"] == ["id", "map", "step"]
    assert defs["MapStep"]["properties"]["as"]["default"] == "item"
    assert defs["ParallelStep"]["required"] == ["id", "parallel"]
    assert {"required": ["prompt"]} in defs["LLMStep"]["anyOf"]
    assert len(defs["Step"]["oneOf"]) == 6
    assert defs["InputStep"]["required"] == ["id", "input"]
    assert defs["ApprovalStep"]["required"] == ["id", "approval"]
    assert defs["InputStep"]["properties"]["on_timeout"]["enum"] == ["fail", "default"]
    assert "taskloom" in defs["Pipeline"]["required"]


@pytest.fixture(scope="module")
def validator() -> Any:
    import jsonschema

    schema = pipeline_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_examples_include_the_pipelines() -> None:
    """The schema check below sees the shipped example pipelines."""
    names = {p.name for p in EXAMPLE_PIPELINES}
    assert {"hello.json", "map_documents.json"} <= names


@pytest.mark.parametrize("path", EXAMPLE_PIPELINES, ids=lambda p: p.name)
def test_every_example_pipeline_satisfies_the_schema(validator: Any, path: Path) -> None:
    """Each examples/*.json pipeline validates against the published schema."""
    data = json.loads(path.read_text(encoding="utf-8"))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []


def test_schema_agrees_with_the_converter_on_bad_pipelines(validator: Any) -> None:
    """Pipelines the converter refuses (unknown field, two kinds, missing id) fail the schema."""
    base = {"taskloom": "pipeline/v1", "name": "x"}
    for steps in (
        [{"id": "a", "prompt": "x", "bogus": 1}],
        [{"id": "a", "prompt": "x", "uses": "y"}],
        [{"prompt": "x"}],
        [{"id": "a", "map": "{{inputs.x}}"}],
    ):
        data = {**base, "steps": steps}
        assert list(validator.iter_errors(data)), steps
        with pytest.raises(Exception):  # noqa: B017 - any DecodeError path is fine here
            serde.structure(data, Pipeline)
