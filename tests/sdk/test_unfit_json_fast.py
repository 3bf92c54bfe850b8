"""unfit_json skips plain scalars without building their paths, and finds what it did."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from taskloom.sdk._pipeline.checks import _MAX_INT, _PLAIN, MAX_INPUT_DEPTH, unfit_json


def _full_walk(value: Any, path: str = "$", *, most: int = 20) -> list[tuple[str, str, str]]:
    """unfit_json as it was before the skip: every child pushed with its path."""

    def valid(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    found: list[tuple[str, str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack and len(found) < most:
        item, where, depth = stack.pop()
        if depth > MAX_INPUT_DEPTH:
            found.append((where, f"it nests more than {MAX_INPUT_DEPTH} levels deep", "flatten it"))
            continue
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -_MAX_INT < item < _MAX_INT:
                found.append(
                    (where, "an integer of more than 4,300 digits", "write it as a string")
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                found.append((where, f"{item!r} is not a JSON number", "use a number"))
        elif isinstance(item, str):
            if not valid(item):
                reason = "text that is not valid Unicode (a lone surrogate)"
                found.append((where, reason, "use valid Unicode text"))
        elif isinstance(item, list | tuple):
            for index in range(len(item) - 1, -1, -1):
                stack.append((item[index], f"{where}[{index}]", depth + 1))
        elif isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                if not isinstance(key, str):
                    found.append((where, f"an object key that is not text ({key!r})", _PLAIN))
                elif not valid(key):
                    reason = "an object key that is not valid Unicode (a lone surrogate)"
                    found.append((where, reason, "use valid Unicode text"))
                else:
                    name = f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]"
                    stack.append((child, name, depth + 1))
        else:
            found.append((where, f"a {type(item).__name__} is not JSON data", _PLAIN))
    return found


class Text(str):
    """A str subclass (takes the full check)."""


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.booleans().map(lambda up: 10**4301 if up else -(10**4301))
    | st.floats()
    | st.text(max_size=5)
    | st.just("a\ud800")
    | st.builds(Text, st.text(max_size=3))
    | st.just(b"bytes")
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.text(max_size=3) | st.just("k\udc00") | st.integers(), inner, max_size=4
        )
    ),
    max_leaves=30,
)


@given(_values, st.integers(1, 20))
def test_unfit_json_finds_what_the_full_walk_finds(value: Any, most: int) -> None:
    """Skipping plain scalars changes no finding, path, order or count."""
    assert unfit_json(value, most=most) == _full_walk(value, most=most)


def test_a_scalar_too_deep_is_still_reported() -> None:
    """A plain scalar below the depth limit is reported as nesting too deep, as before."""
    value: Any = 1
    for _ in range(MAX_INPUT_DEPTH + 1):
        value = [value]
    deep = f"it nests more than {MAX_INPUT_DEPTH} levels deep"
    where = "$" + "[0]" * (MAX_INPUT_DEPTH + 1)
    assert unfit_json(value) == [(where, deep, "flatten it")]
    assert _full_walk(value) == [(where, deep, "flatten it")]
    assert unfit_json({"a": value[0]}) == _full_walk({"a": value[0]})
