"""The Redactor masks URL-encoded and line-wrapped base64 forms beyond the fixed spellings."""

from __future__ import annotations

import base64
from urllib.parse import quote, urlencode

import pytest

from taskloom.contracts import MASK
from taskloom.security import Redactor

KEY = "sk-proj-AbC/def+ghi=jkl_0123456789?&x y"


@pytest.mark.parametrize(
    "form",
    [
        quote(KEY, safe="").replace("%2F", "%2f"),  # mixed-case escapes
        "".join(f"%{b:02X}" for b in KEY.encode()),  # every byte escaped
        "".join(f"%{b:02x}" for b in KEY.encode()),
        quote(quote(KEY, safe=""), safe=""),  # encoded twice
        urlencode({"key": KEY}).split("=", 1)[1],
    ],
    ids=["mixed-case", "all-escaped", "all-escaped-lower", "double", "form"],
)
def test_percent_encoded_forms_are_masked(form: str) -> None:
    """Any URL-encoded spelling of a key, decoded up to three times, is masked whole."""
    out = Redactor([KEY]).redact(f"GET /v1?key={form}&x=1 HTTP/1.1")
    assert form not in out and MASK in out
    assert out.endswith("&x=1 HTTP/1.1")


def test_line_wrapped_base64_is_masked() -> None:
    """A key's base64 straddling MIME line breaks (76 characters a line) leaks no piece."""
    block = base64.encodebytes(b"header-bytes " + KEY.encode() * 3).decode()
    out = Redactor([KEY]).redact(f"body:\n{block}end")
    joined = "".join(block.split())
    for size in range(0, len(joined) - 12, 6):
        assert joined[size : size + 12] not in out
    assert out.startswith("body:\n") and MASK in out


def test_ordinary_text_with_percents_and_lines_is_kept() -> None:
    """Text with percent signs, escapes and long lines but no key is returned unchanged."""
    text = "100% sure: a%20b, %zz, 50%\nABCDEFGHIJKLMNOP\nqrstuvwxyz0123456789\n"
    assert Redactor([KEY]).redact(text) == text
