"""Typed access to a decoded JSON reply: each mismatch is a MalformedResponse naming its path.

The protocol modules read provider replies through these helpers so that a
server answering in an unexpected shape gets a message saying where, rather
than a KeyError or TypeError reaching the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from taskloom.contracts import MalformedResponse


def decode_json(body: bytes | str, what: str) -> Any:
    """Parse JSON or raise MalformedResponse naming ``what`` was not JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedResponse(
            f"{what} is not valid JSON ({type(exc).__name__}): the server does not speak "
            "the expected protocol; check base_url"
        ) from exc


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def expect_object(value: object, path: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else MalformedResponse naming ``path``."""
    if not isinstance(value, dict):
        raise MalformedResponse(f"{path} should be an object but is {_kind(value)}")
    return value


def expect_list(value: object, path: str) -> list[Any]:
    """``value`` if it is a JSON array, else MalformedResponse naming ``path``."""
    if not isinstance(value, list):
        raise MalformedResponse(f"{path} should be an array but is {_kind(value)}")
    return value


def require(obj: Mapping[str, Any], key: str, path: str) -> Any:
    """``obj[key]``, or MalformedResponse saying that ``path.key`` is missing."""
    try:
        return obj[key]
    except KeyError:
        raise MalformedResponse(f"{path}.{key} is missing from the reply") from None


def opt_str(value: object, path: str) -> str | None:
    """A JSON string or null, else MalformedResponse naming ``path``."""
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"{path} should be a string or null but is {_kind(value)}")


def token_count(value: object, path: str) -> int:
    """A non-negative integer token count (null counts as 0)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise MalformedResponse(f"{path} should be a non-negative integer but is {value!r}")
