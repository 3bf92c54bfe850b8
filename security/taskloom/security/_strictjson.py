"""Strict JSON for signed and untrusted documents.

``json.loads`` is lenient in ways an attacker can use: duplicate keys (the last
wins, while another parser may keep the first), NaN and Infinity, floats whose
text has many spellings, recursion deep enough to raise ``RecursionError``,
integers long enough to raise ``ValueError``. ``loads_strict`` refuses all of
these and always raises ``MalformedInput`` (or ``InputTooLarge``), never a raw
``ValueError``, ``UnicodeError`` or ``RecursionError``.

The size cap is checked first, on the byte length, before anything is decoded.
Nesting is bounded twice: the C parser stops runaway nesting with a
``RecursionError`` (caught), and the parsed value is then walked once,
iteratively, for the depth limit and the integer range.
"""

from __future__ import annotations

import json
import re
from typing import Any

from taskloom.security._errors import InputTooLarge, MalformedInput

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects that strict parsing accepts."""

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer magnitude that every JSON implementation reads exactly (RFC 8785)."""

# "Unrolled" string pattern: runs of plain characters are consumed in one step.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NEGATIVE_ZERO = re.compile(r"-0(?![0-9.eE])")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Refusal(Exception):
    """Raised inside the parser's hooks; ``loads_strict`` turns it into MalformedInput."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refusal(f"duplicate key {key[:64]!r}; each key may appear once")
            seen.add(key)
    return result


def _no_float(text: str) -> float:
    raise _Refusal(f"number {text[:32]!r} is not an integer; signed documents hold no floats")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refusal(f"number {text[:32]!r} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise _Refusal(f"{text} is not JSON")


# Decoders are built once: json.loads with hooks would build a new one per call.
_STRICT = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_float=_no_float, parse_constant=_no_constant
)
_WITH_FLOATS = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_float=_finite_float, parse_constant=_no_constant
)


def _check_tree(value: Any, max_depth: int) -> None:
    """Nesting depth and integer range, one level at a time: no recursion, no per-node calls."""
    level = [value]
    depth = 1
    while True:
        children: list[Any] = []
        extend = children.extend
        for node in level:
            extend(node.values() if type(node) is dict else node)
        kinds = set(map(type, children))
        if int in kinds:
            numbers = [child for child in children if type(child) is int]
            if max(numbers) > MAX_SAFE_INTEGER or min(numbers) < -MAX_SAFE_INTEGER:
                raise _Refusal("an integer is outside +-(2**53 - 1)")
        if dict not in kinds and list not in kinds:
            return
        depth += 1
        if depth > max_depth:
            raise _Refusal(f"nested deeper than the limit of {max_depth} levels")
        level = [child for child in children if type(child) is dict or type(child) is list]


def loads_strict(
    data: bytes,
    *,
    max_bytes: int,
    what: str = "document",
    max_depth: int = MAX_DEPTH,
    allow_floats: bool = False,
    schema_bounded: bool = False,
) -> Any:
    """Parse ``data`` (UTF-8 JSON bytes) strictly; ``what`` names the document in errors.

    Refused: more than ``max_bytes`` bytes (``InputTooLarge``, checked first), a
    BOM, bytes that are not UTF-8, lone surrogate escapes, duplicate keys,
    floats and exponents, NaN and Infinity, integers beyond +-(2**53 - 1) or
    written non-canonically (``-0``), nesting deeper than ``max_depth``, and
    anything after the value but whitespace. Everything else ``MalformedInput``.
    ``allow_floats`` admits finite non-integers, for documents that are hashed
    as stored bytes rather than signed as canonical ones (audit entries).
    ``schema_bounded`` skips the depth and integer-range walk, for a caller that
    checks the result against a fixed schema which itself bounds both (every
    integer range-checked, no field that admits arbitrary nesting); runaway
    nesting is still stopped by the parser.

    The parser runs first (it is C, and it stops runaway nesting with a
    RecursionError, which is caught); depth and integer range are then checked
    in one iterative walk of the result.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedInput(f"{what}: expected bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise InputTooLarge(
            f"{what} is {size} bytes; the limit is {max_bytes}: refuse it, or raise the limit "
            "only if you expect documents this large",
            size=size,
            limit=max_bytes,
        )
    raw = bytes(data)
    try:
        if raw.startswith(b"\xef\xbb\xbf"):
            raise _Refusal("starts with a byte order mark; write UTF-8 without a BOM")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refusal(f"not valid UTF-8 at byte {exc.start}") from None
        try:
            value = (_WITH_FLOATS if allow_floats else _STRICT).decode(text)
        except RecursionError:
            raise _Refusal(f"nested far deeper than the limit of {max_depth} levels") from None
        except ValueError as exc:
            if "integer string conversion" in str(exc):
                raise _Refusal(
                    "an integer has thousands of digits, outside +-(2**53 - 1)"
                ) from None
            raise _Refusal(f"not valid JSON ({exc})") from None
        # With ``schema_bounded`` the caller's schema bounds depth and integers itself.
        if not schema_bounded and (type(value) is dict or type(value) is list):
            _check_tree(value, max_depth)
        elif (
            not schema_bounded
            and type(value) is int
            and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
        ):
            raise _Refusal(f"integer {str(value)[:32]} is outside +-(2**53 - 1)")
        # Single-character membership tests run at memchr speed; the costlier
        # searches run only on documents that hold a '-' or a backslash at all.
        if "-" in text and "-0" in text and _NEGATIVE_ZERO.search(_STRING.sub("", text)):
            raise _Refusal("the number -0 is not in canonical form; write 0")
        if "\\" in text and _SURROGATE_ESCAPE.search(text):
            # Escaped surrogates are fine in pairs; a lone one decodes to text that
            # is not Unicode. Only documents that escape surrogates pay for this.
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise _Refusal(
                    "contains a lone surrogate escape, which is not valid Unicode"
                ) from None
    except _Refusal as exc:
        raise MalformedInput(f"{what}: {exc}") from None
    return value
