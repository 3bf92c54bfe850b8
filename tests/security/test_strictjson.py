"""Strict JSON parsing: canonical documents pass, every trick is a MalformedInput."""

from __future__ import annotations

import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.security import InputTooLarge, MalformedInput, loads_strict
from taskloom.security._strictjson import MAX_SAFE_INTEGER

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(json_values)
def test_canonical_documents_parse_to_their_value(value: object) -> None:
    """Any float-free value serialized canonically parses back to itself."""
    assert loads_strict(rfc8785.dumps(value), max_bytes=1 << 20) == value


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_security_errors(data: bytes) -> None:
    """Whatever the bytes, the parser raises MalformedInput or agrees with json.loads."""
    try:
        value = loads_strict(data, max_bytes=1 << 20)
    except MalformedInput:
        return
    assert value == json.loads(data)


@settings(max_examples=200)
@given(st.text(alphabet='{}[]",:0123456789.eE-+ \\unNaIfity', max_size=80))
def test_json_like_text_never_raises_anything_but_security_errors(text: str) -> None:
    """Near-JSON text is refused cleanly, or parsed exactly as json.loads parses it."""
    try:
        value = loads_strict(text.encode(), max_bytes=1 << 20)
    except MalformedInput:
        return
    assert value == json.loads(text)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"a":1,"a":1}', "duplicate"),
        (b'{"a":{"b":1,"b":2}}', "duplicate"),
        (b"[1.5]", "float"),
        (b"[1.0]", "float"),
        (b"[1E3]", "float"),
        (b"[NaN]", "NaN"),
        (b"[-Infinity]", "Infinity"),
        (b"[-0]", "canonical"),
        (b"[9007199254740992]", "2**53"),
        (b"[" + b"9" * 5000 + b"]", "2**53"),
        (b"[-0 ]", "canonical"),
        (b'{"a":-0}', "canonical"),
        (b'\xef\xbb\xbf{"a":1}', "byte order mark"),
        (b'{"a":1}\x00', "JSON"),
        (b'{"a":1}{"b":2}', "JSON"),
        (b'"\xc3\x28"', "UTF-8"),
        (b'"\\udc00"', "surrogate"),
        (b"[" * 33 + b"]" * 33, "nested"),
    ],
)
def test_each_trick_is_refused_with_a_clear_message(data: bytes, fragment: str) -> None:
    """Duplicate keys, floats, NaN, big or odd integers, BOM, trailing data, depth: refused."""
    with pytest.raises(MalformedInput) as info:
        loads_strict(data, max_bytes=1 << 20, what="test doc")
    assert fragment in str(info.value)
    assert "test doc" in str(info.value)
    assert "set_int_max_str_digits" not in str(info.value)


def test_negative_zero_inside_strings_is_just_text() -> None:
    """'-0' in a string is not a number; only the number -0 is refused."""
    assert loads_strict(b'{"v":"-0","w":-1}', max_bytes=100) == {"v": "-0", "w": -1}


def test_nesting_at_the_limit_is_accepted() -> None:
    """Exactly 32 levels parse; 33 do not."""
    assert loads_strict(b"[" * 32 + b"]" * 32, max_bytes=1000) == json.loads("[" * 32 + "]" * 32)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Depth counts containers, so '[[[[' inside a string is just text."""
    text = '{"a":"' + "[" * 100 + '\\"{"}'
    assert loads_strict(text.encode(), max_bytes=1000) == {"a": "[" * 100 + '"{'}


def test_pathological_nesting_is_refused_without_recursion_error() -> None:
    """A million open brackets is a MalformedInput, never a RecursionError."""
    with pytest.raises(MalformedInput):
        loads_strict(b"[" * 1_000_000, max_bytes=2_000_000)


def test_the_size_cap_comes_first() -> None:
    """Over-size input is InputTooLarge even when it is also malformed."""
    with pytest.raises(InputTooLarge) as info:
        loads_strict(b"\xff" * 101, max_bytes=100)
    assert (info.value.size, info.value.limit) == (101, 100)
    assert loads_strict(b"[" + b" " * 98 + b"]", max_bytes=100) == []


def test_surrogate_pairs_are_accepted() -> None:
    """An escaped surrogate pair is a valid character, unlike a lone surrogate."""
    assert loads_strict(b'"\\ud83d\\ude00"', max_bytes=100) == "\U0001f600"


def test_floats_are_admitted_only_on_request() -> None:
    """allow_floats admits finite floats (audit entries) but still refuses NaN and overflow."""
    assert loads_strict(b"[1.5]", max_bytes=100, allow_floats=True) == [1.5]
    with pytest.raises(MalformedInput):
        loads_strict(b"[NaN]", max_bytes=100, allow_floats=True)
    with pytest.raises(MalformedInput):
        loads_strict(b"[1e999]", max_bytes=100, allow_floats=True)
