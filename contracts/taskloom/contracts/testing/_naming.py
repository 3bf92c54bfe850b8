"""Failure messages that name the invariant: every suite runs its test bodies inside
``naming_invariant``, which puts the broken invariant (code and statement, read from
the protocol's docstring) and the test in front of whatever assertion failed.

A bare ``AssertionError`` from a third-party adapter's run says nothing; with this
the first line of every failure reads like
``ST6 violated (``scan`` returns records in key order ...) in test_st6_...``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from taskloom.contracts.testing._recording import Trail

_CODE = re.compile(r"[a-z]{2}\d+")
_STATEMENT = re.compile(r"^\s*([A-Z]{2}\d+)\s+(.*?)(?=^\s*[A-Z]{2}\d+\s|\Z)", re.M | re.S)


def statements(protocol: type) -> dict[str, str]:
    """Invariant code (``ST6``) -> its statement, one line, from ``protocol``'s docstring."""
    doc = protocol.__doc__ or ""
    return {code: " ".join(text.split()) for code, text in _STATEMENT.findall(doc)}


def codes_of(test_name: str) -> list[str]:
    """The invariant codes a test name starts with: ``test_st1_st2_x`` -> [ST1, ST2]."""
    codes = []
    for part in test_name.removeprefix("test_").split("_"):
        if not _CODE.fullmatch(part):
            break
        codes.append(part.upper())
    return codes


def current_test() -> str:
    """The name of the innermost ``test_*`` function on the call stack ("" if none)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name.startswith("test_"):
            return frame.f_code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def headline(protocol: type, test_name: str) -> str:
    """``ST6 violated (statement) in test_st6_x``: the first line of a failure."""
    known = statements(protocol)
    codes = codes_of(test_name)
    if len(codes) > 2:
        named = ", ".join(codes)
    else:
        named = "; ".join(f"{c} ({known.get(c, 'unknown invariant')})" for c in codes)
    return f"{named or protocol.__name__} violated in {test_name or 'the suite'}"


@contextmanager
def naming_invariant(protocol: type, test_name: str, trail: Trail | None = None) -> Iterator[None]:
    """Re-raise an assertion or ``pytest.fail`` inside with the invariant in front and the
    last calls on the adapter (``trail``) after; an unexpected exception from the adapter
    becomes such an assertion too (chained)."""
    head = headline(protocol, test_name)
    try:
        yield
    except AssertionError as exc:
        if str(exc).startswith(head):
            raise
        raise AssertionError(f"{head}:\n{exc}{trail.text() if trail else ''}") from exc
    except pytest.fail.Exception as exc:
        if str(exc).startswith(head):
            raise
        pytest.fail(f"{head}:\n{exc.msg}{trail.text() if trail else ''}", pytrace=True)
    except TimeoutError as exc:
        raise AssertionError(
            f"{head}:\nthe test did not finish in time: a call to the adapter never returned"
            f"{trail.text() if trail else ''}"
        ) from exc
    except Exception as exc:
        raise AssertionError(
            f"{head}:\nthe adapter raised {type(exc).__name__}: {exc}"
            f"{trail.text() if trail else ''}"
        ) from exc
