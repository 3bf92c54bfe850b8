"""Replies checked by full JSON Schema 2020-12 (jsonschema), and schemas checked at validation."""

from __future__ import annotations

from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine, pipeline
from hypothesis import event, given, settings
from hypothesis import strategies as st

from taskloom.contracts import PipelineInvalid, StepFailed
from taskloom.sdk._pipeline.replyschema import ReplySchema, extract_json, schema_problems

FAST = {"max_attempts": 2, "initial_delay_s": 0, "jitter": 0}

# What Pydantic's model_json_schema() writes for a model with a nested model and a list.
PYDANTIC_LIKE: dict[str, Any] = {
    "$defs": {
        "Item": {
            "properties": {
                "name": {"title": "Name", "type": "string", "minLength": 1},
                "qty": {"title": "Qty", "type": "integer", "exclusiveMinimum": 0},
            },
            "required": ["name", "qty"],
            "title": "Item",
            "type": "object",
            "additionalProperties": False,
        }
    },
    "properties": {
        "items": {"items": {"$ref": "#/$defs/Item"}, "title": "Items", "type": "array"},
        "contact": {"type": "string", "format": "email"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
    "required": ["items"],
    "title": "Order",
    "type": "object",
}


def _json_step(schema: Any) -> dict[str, Any]:
    return {
        "id": "a",
        "prompt": "give json",
        "response_format": {"type": "json", "json_schema": schema},
        "retry": FAST,
    }


@pytest.mark.parametrize(
    ("reply", "where"),
    [
        ({"items": [{"name": "x", "qty": 0}]}, "$.items[0].qty"),
        ({"items": [{"name": "", "qty": 1}]}, "$.items[0].name"),
        ({"items": [{"name": "x", "qty": 1, "extra": 1}]}, "$.items[0]"),
        ({"items": [], "contact": "not-an-email"}, "$.contact"),
        ({"items": [], "code": "abcd"}, "$.code"),
    ],
)
def test_violations_behind_ref_format_and_pattern_are_reported_with_their_path(
    reply: dict[str, Any], where: str
) -> None:
    """Keywords the old checker ignored ($ref, exclusiveMinimum, pattern, format) now count."""
    problems = ReplySchema(PYDANTIC_LIKE).problems(reply)
    assert problems, reply
    assert any(p.startswith(f"{where}: ") for p in problems), problems


def test_every_violation_is_listed() -> None:
    """All violations of one reply are reported, not only the first."""
    reply = {"items": [{"name": "", "qty": -1}, {"qty": "2"}], "contact": "nope"}
    problems = ReplySchema(PYDANTIC_LIKE).problems(reply)
    paths = {p.split(":")[0] for p in problems}
    assert {"$.items[0].name", "$.items[0].qty", "$.items[1]", "$.items[1].qty", "$.contact"} <= (
        paths
    )


def test_a_valid_reply_has_no_problems() -> None:
    """A reply that satisfies the Pydantic-style schema passes."""
    reply = {"items": [{"name": "x", "qty": 2}], "contact": "a@b.example", "code": "ABC"}
    assert ReplySchema(PYDANTIC_LIKE).problems(reply) == []


async def test_a_reply_violating_a_referenced_model_fails_the_step() -> None:
    """A run whose replies break the $ref'd model fails with the violation's JSON path."""
    engine, fake = make_engine(
        FakeExecutor(reply=lambda _r: '{"items": [{"name": "bolt", "qty": 0}]}')
    )
    async with engine:
        with pytest.raises(StepFailed, match=r"\$\.items\[0\]\.qty"):
            await engine.run(pipeline(_json_step(PYDANTIC_LIKE)))
    assert fake.calls["give json"] == 2


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "objec"}, "$.steps[0].response_format.json_schema.type"),
        ({"properties": {"a": {"minLength": -1}}}, ".json_schema.properties.a.minLength"),
        ({"$ref": "#/$defs/Missing"}, "$.steps[0].response_format.json_schema.$ref"),
        ({"$ref": "https://example.com/remote.json"}, ".json_schema.$ref"),
        ({"required": "name"}, ".json_schema.required"),
        ({"type": "string", "pattern": "("}, ".json_schema.pattern"),
        ({"patternProperties": {"[": {}}}, ".json_schema.patternProperties"),
        ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, ".json_schema"),
    ],
)
async def test_an_invalid_schema_is_refused_at_validation(schema: Any, where: str) -> None:
    """A schema that is no 2020-12 schema, or whose $ref dangles, is PipelineInvalid with a path."""
    engine, fake = make_engine()
    async with engine:
        with pytest.raises(PipelineInvalid) as caught:
            engine.validate(pipeline(_json_step(schema)))
    paths = [p.path for p in caught.value.problems]
    assert any(p.endswith(where) for p in paths), paths
    assert fake.calls == {}


def test_a_schema_nested_too_deeply_is_a_problem_not_a_crash() -> None:
    """A schema nested thousands of levels deep is reported, not a RecursionError."""
    schema: dict[str, Any] = {}
    for _ in range(5000):
        schema = {"items": schema}
    assert schema_problems(schema) == [
        ("", "the schema is nested too deeply or its $refs loop without end")
    ]


def test_refs_inside_enum_data_are_not_references() -> None:
    """A "$ref" key inside enum/const data is data; a property named "enum" is a schema."""
    assert schema_problems({"enum": [{"$ref": "#/nowhere"}], "const": {"$ref": "#/x"}}) == []
    found = schema_problems({"properties": {"enum": {"$ref": "#/nowhere"}}})
    assert [path for path, _ in found] == [".properties.enum.$ref"]


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, "1" * 5000, '{"a": ' + "9" * 4500 + "}"]
)
def test_replies_too_deep_or_too_long_to_parse_are_value_errors(text: str) -> None:
    """A pathological reply is a ValueError (retryable MalformedResponse), never a crash."""
    with pytest.raises(ValueError, match="reply"):
        extract_json(text)


def test_a_recursive_schema_that_terminates_is_accepted() -> None:
    """A tree schema that refers to itself through properties is valid and checks replies."""
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["kids"],
            }
        },
        "$ref": "#/$defs/node",
    }
    assert schema_problems(tree) == []
    assert ReplySchema(tree).problems({"kids": [{"kids": []}]}) == []
    assert [p.split(":")[0] for p in ReplySchema(tree).problems({"kids": [{}]})] == ["$.kids[0]"]


_keywords = st.sampled_from(
    [
        "type",
        "properties",
        "items",
        "required",
        "enum",
        "const",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "multipleOf",
        "minLength",
        "anyOf",
        "allOf",
        "oneOf",
        "not",
        "$ref",
        "$defs",
        "additionalProperties",
        "patternProperties",
        "prefixItems",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "contains",
        "uniqueItems",
        "$id",
        "$anchor",
    ]
)
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        [
            "string",
            "object",
            "array",
            "integer",
            "(",
            "[a-z]+",
            "email",
            "#",
            "#/$defs/a",
            "#/$defs/b",
            "a",
            "uuid",
            "date",
        ]
    ),
)
_schemas = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(_keywords, st.sampled_from(["a", "b", "("])), inner, max_size=4),
    ),
    max_leaves=15,
)
_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(schema=_schemas, value=_values)
@settings(max_examples=400, deadline=None)
def test_a_schema_validation_accepts_never_crashes_on_any_reply(schema: Any, value: Any) -> None:
    """If schema_problems accepts a schema, checking any reply against it returns a list."""
    if schema_problems(schema):
        event("schema refused")
        return
    event("schema accepted")
    problems = ReplySchema(schema).problems(value)
    assert isinstance(problems, list)
    assert all(p.startswith("$") for p in problems)
