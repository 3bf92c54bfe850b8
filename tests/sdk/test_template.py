"""Templates: references only, typed single references, text rendering, clear errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskloom.sdk._pipeline.template import (
    Ref,
    Scope,
    TemplateRenderError,
    TemplateSyntaxError,
    compile_json,
    compile_text,
    parse,
    refs,
    to_text,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def scope(**outputs: Any) -> Scope:
    return Scope(
        {"doc": {"title": "T", "tags": ["a", "b"]}, "n": 3}, outputs, {"item": "it", "index": 2}
    )


def test_parse_splits_literals_and_references() -> None:
    """parse() returns literal pieces and references with kind, name and path."""
    pieces = parse("a {{ inputs.doc.title }} b {{steps.s.output.0}}{{item}}")
    assert pieces[0] == "a "
    assert pieces[1] == Ref(kind="inputs", name="doc", path=("title",), source="inputs.doc.title")
    assert pieces[3] == Ref(kind="steps", name="s", path=("0",), source="steps.s.output.0")
    assert pieces[4] == Ref(kind="local", name="item", path=(), source="item")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{{ inputs.x", "unclosed"),
        ("{{}}", "empty"),
        ("{{inputs}}", "needs an input name"),
        ("{{steps.a}}", "must name a step's output"),
        ("{{steps.a.result}}", "must name a step's output"),
        ("{{inputs.x + 1}}", "not a reference"),
        ("{{ inputs.__class__.__mro__ }}", "inputs"),
        ("{{'{}'.format(1)}}", "not a reference"),
        ("{{ {{inputs.x}} }}", "opens twice"),
        ("{{9lives}}", "unknown template root"),
    ],
)
def test_bad_templates_raise_syntax_errors_with_hints(text: str, fragment: str) -> None:
    """Malformed templates raise TemplateSyntaxError saying what is wrong, with a hint."""
    if fragment == "inputs":
        # dunder names are plain dict keys: they parse, and can only look up JSON keys
        ref = parse(text)[0]
        assert isinstance(ref, Ref) and (ref.name, ref.path) == ("__class__", ("__mro__",))
        with pytest.raises(TemplateRenderError):
            compile_text(text)(scope())
        return
    with pytest.raises(TemplateSyntaxError) as info:
        parse(text)
    assert fragment in info.value.message
    assert info.value.hint


def test_single_reference_keeps_type_text_is_json() -> None:
    """A string of exactly one template is the value itself; mixed text renders JSON."""
    assert compile_text("{{inputs.doc}}")(scope()) == {"title": "T", "tags": ["a", "b"]}
    assert compile_text("{{inputs.n}}")(scope()) == 3
    assert compile_text("n={{inputs.n}} tags={{inputs.doc.tags}}")(scope()) == 'n=3 tags=["a","b"]'
    assert compile_text("{{inputs.doc.tags.1}}")(scope()) == "b"
    assert compile_text("{{item}}#{{index}}")(scope()) == "it#2"
    assert compile_text("no templates")(scope()) == "no templates"


def test_paths_into_null_give_null_and_missing_keys_fail() -> None:
    """A path through null is null (on_error: continue outputs); a missing key is an error."""
    assert compile_text("{{steps.a.output.x.y}}")(scope(a=None)) is None
    with pytest.raises(TemplateRenderError, match="no key 'zz'"):
        compile_text("{{inputs.doc.zz}}")(scope())
    with pytest.raises(TemplateRenderError, match="out of range"):
        compile_text("{{inputs.doc.tags.5}}")(scope())
    with pytest.raises(TemplateRenderError, match="not a list index"):
        compile_text("{{inputs.doc.tags.x}}")(scope())
    with pytest.raises(TemplateRenderError, match="cannot look up"):
        compile_text("{{inputs.n.x}}")(scope())


def test_compile_json_renders_nested_values_and_refs_lists_paths() -> None:
    """compile_json renders templates anywhere in a JSON value; refs() reports their paths."""
    value = {"a": ["{{inputs.n}}", {"b": "x{{item}}"}], "c": 1}
    assert compile_json(value)(scope()) == {"a": [3, {"b": "xit"}], "c": 1}
    assert [(path, str(ref)) for path, ref in refs(value)] == [
        (".a[0]", "inputs.n"),
        (".a[1].b", "item"),
    ]


@given(json_values)
def test_single_reference_round_trips_any_json(value: Any) -> None:
    """Any JSON value passes through a single reference unchanged."""
    assert compile_text("{{inputs.v}}")(Scope({"v": value}, {})) == value


@given(json_values, st.text(alphabet="abc {}", max_size=6))
def test_text_rendering_is_prefix_plus_json(value: Any, prefix: str) -> None:
    """Mixed text renders a value as the string itself or its compact JSON."""
    prefix = "p" + prefix.replace("{{", "").rstrip("{")
    rendered = compile_text(prefix + "{{inputs.v}}")(Scope({"v": value}, {}))
    expected = (
        value
        if isinstance(value, str)
        else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    )
    assert rendered == prefix + expected == prefix + to_text(value)
