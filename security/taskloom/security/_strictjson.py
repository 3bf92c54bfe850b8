"""Strict JSON for signed and untrusted documents.

``json.loads`` is lenient in ways an attacker can use: duplicate keys (the last
wins, while another parser may keep the first), NaN and Infinity, floats whose
text has many spellings, recursion deep enough to raise ``RecursionError``,
integers long enough to raise ``ValueError``. ``loads_strict`` refuses all of
these and always raises ``MalformedInput`` (or ``InputTooLarge``), never a raw
``ValueError``, ``UnicodeError`` or ``RecursionError``.

The size cap is checked first, on the byte length, before anything is decoded;
nesting depth is measured on the text with the strings removed, before the
parser (which recurses) ever sees it.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, NoReturn

from taskloom.security._errors import InputTooLarge, MalformedInput

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects that strict parsing accepts."""

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer magnitude that every JSON implementation reads exactly (RFC 8785)."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,15})")


def _refuse(message: str, what: str) -> NoReturn:
    raise MalformedInput(f"{what}: {message}")


def _pairs_hook(what: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    _refuse(f"duplicate key {key[:64]!r}; each key may appear once", what)
                seen.add(key)
        return result

    return hook


def _parse_int_hook(what: str) -> Any:
    def parse_int(text: str) -> int:
        if not _INTEGER.fullmatch(text) or text == "-0":
            _refuse(f"integer {text[:32]!r} is not in canonical form or out of range", what)
        value = int(text)
        if abs(value) > MAX_SAFE_INTEGER:
            _refuse(f"integer {text[:32]} is outside +-(2**53 - 1)", what)
        return value

    return parse_int


def _parse_float_hook(what: str, allow: bool) -> Any:
    def parse_float(text: str) -> float:
        if allow:
            value = float(text)
            if value in (float("inf"), float("-inf")):
                _refuse(f"number {text[:32]!r} is out of range", what)
            return value
        _refuse(f"number {text[:32]!r} is not an integer; signed documents hold no floats", what)

    return parse_float


def _parse_constant_hook(what: str) -> Any:
    def parse_constant(text: str) -> float:
        _refuse(f"{text} is not JSON", what)

    return parse_constant


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting in ``text`` once strings are removed (0 for a scalar)."""
    brackets = _BRACKETS.findall(_STRING.sub("", text))
    if not brackets:
        return 0
    return max(accumulate(_DELTA[b] for b in brackets))


def loads_strict(
    data: bytes,
    *,
    max_bytes: int,
    what: str = "document",
    max_depth: int = MAX_DEPTH,
    allow_floats: bool = False,
) -> Any:
    """Parse ``data`` (UTF-8 JSON bytes) strictly; ``what`` names the document in errors.

    Refused: more than ``max_bytes`` bytes (``InputTooLarge``, checked first), a
    BOM, bytes that are not UTF-8, lone surrogate escapes, duplicate keys,
    floats and exponents, NaN and Infinity, integers beyond +-(2**53 - 1) or
    written non-canonically (``-0``), nesting deeper than ``max_depth``, and
    anything after the value but whitespace. Everything else ``MalformedInput``.
    ``allow_floats`` admits finite non-integers, for documents that are hashed
    as stored bytes rather than signed as canonical ones (audit entries).
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
    if raw.startswith(b"\xef\xbb\xbf"):
        _refuse("starts with a byte order mark; write UTF-8 without a BOM", what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"{what}: not valid UTF-8 at byte {exc.start}") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        _refuse(f"nested {depth} levels deep; the limit is {max_depth}", what)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs_hook(what),
            parse_int=_parse_int_hook(what),
            parse_float=_parse_float_hook(what, allow_floats),
            parse_constant=_parse_constant_hook(what),
        )
    except MalformedInput:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedInput(f"{what}: not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(text):
        # Escaped surrogates are fine in pairs; a lone one decodes to text that is
        # not Unicode. Only documents that escape surrogates pay for this check.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            _refuse("contains a lone surrogate escape, which is not valid Unicode", what)
    return value
