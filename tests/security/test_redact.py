"""Redactor: known secret values and their encodings are scrubbed from text and data."""

from __future__ import annotations

import base64
import binascii
import json
import pickle
import re
from collections import namedtuple
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from taskloom.contracts import MASK, ErrorInfo, Secret, StepFailedEvent, UsageError, serde
from taskloom.security import Redactor
from taskloom.security._redact import MIN_EMBEDDED_BASE64, MIN_SECRET_LENGTH

secrets_st = st.text(min_size=8, max_size=40).filter(lambda s: s.strip("*") != "")
noise_st = st.text(max_size=30)

ENCODINGS = {
    "plain": lambda s: s,
    "b64": lambda s: base64.b64encode(s.encode()).decode(),
    "b64-nopad": lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
    "b64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "b64url-nopad": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "quote": lambda s: quote(s, safe=""),
    "quote-slash": quote,
    "quote_plus": quote_plus,
    "quote-lower": lambda s: re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s)),
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
    "json": lambda s: json.dumps(s)[1:-1],
    "json-utf8": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
}


@given(
    secret=secrets_st,
    encoding=st.sampled_from(sorted(ENCODINGS)),
    before=noise_st,
    after=noise_st,
)
def test_an_encoded_secret_in_surrounding_text_is_masked(
    secret: str, encoding: str, before: str, after: str
) -> None:
    """Each encoding of a secret, embedded anywhere in text, is replaced by MASK."""
    encoded = ENCODINGS[encoding](secret)
    out = Redactor([Secret(secret)]).redact(before + encoded + after)
    assert encoded not in out
    assert secret not in out
    assert MASK in out


@given(secrets=st.lists(secrets_st, min_size=1, max_size=4), data=st.data())
def test_no_known_secret_survives_in_mixed_text(secrets: list[str], data: st.DataObject) -> None:
    """Text interleaving several secrets and noise holds none of them after redaction."""
    parts = data.draw(st.lists(st.one_of(noise_st, st.sampled_from(secrets)), max_size=8))
    out = Redactor(secrets).redact("".join(parts))
    for secret in secrets:
        assert secret not in out


def _pure_run(encoded_len: int, start: int, length: int, encoded: str) -> str:
    """The base64 characters of ``encoded`` that only bytes [start, start+length) decide."""
    chars = []
    for i in range(encoded_len):
        first_bit, last_bit = 6 * i, 6 * i + 5
        if start * 8 <= first_bit and last_bit < (start + length) * 8:
            chars.append(encoded[i])
    return "".join(chars)


@given(secret=secrets_st, before=st.binary(max_size=10), after=st.binary(max_size=10))
def test_base64_of_a_longer_string_holding_the_secret_is_masked(
    secret: str, before: bytes, after: bytes
) -> None:
    """In base64 of bytes around the secret (``user:secret`` in Basic auth), the characters
    that depend on the secret alone are masked, whatever the alignment."""
    raw = secret.encode()
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = alphabet(before + raw + after).decode()
        run = _pure_run(len(encoded), len(before), len(raw), encoded)
        assume(len(run) >= MIN_EMBEDDED_BASE64)
        out = Redactor([secret]).redact(f"Authorization: Basic {encoded}\n")
        assert run not in out
        assert MASK in out


def test_longer_values_win_over_their_prefixes() -> None:
    """A secret that starts with another is masked whole, not leaving its tail."""
    redactor = Redactor(["abcd1234", "abcd1234efgh"])
    assert redactor.redact("x abcd1234efgh y abcd1234") == f"x {MASK} y {MASK}"


def test_a_value_with_stars_is_not_spelled_again_by_the_mask() -> None:
    """A secret holding '*' does not reappear where MASK meets the surrounding text."""
    secret = "d****"
    out = Redactor([secret]).redact("dd****")
    assert secret not in out


@pytest.mark.parametrize("value", ["", "a", "abc", "****", "*" * 20])
def test_short_and_star_only_values_are_ignored(value: str) -> None:
    """Values under MIN_SECRET_LENGTH characters, or made only of '*', are not added."""
    redactor = Redactor()
    assert redactor.add(value) is False
    assert len(redactor) == 0
    assert redactor.redact(f"x{value}y") == f"x{value}y"


def test_add_reports_new_values_only() -> None:
    """add returns True for a new value and False for one already known."""
    redactor = Redactor()
    assert MIN_SECRET_LENGTH == 4
    assert redactor.add(Secret("abcd")) is True
    assert redactor.add("abcd") is False
    assert len(redactor) == 1


def test_add_refuses_other_types() -> None:
    """Only Secret and str can be added; other types are a UsageError that shows no value."""
    with pytest.raises(UsageError) as info:
        Redactor().add(b"secret-bytes")  # type: ignore[arg-type]
    assert "secret-bytes" not in str(info.value)


def test_an_empty_redactor_returns_text_unchanged() -> None:
    """With no secrets known, redact is the identity."""
    assert Redactor().redact("anything at all") == "anything at all"


Point = namedtuple("Point", "x y")


def test_redact_data_walks_containers_and_keys() -> None:
    """Dict keys and values, lists, tuples, namedtuples and sets are redacted; other
    values are kept, and a Secret in the data becomes MASK."""
    secret = "tok-1234567890"
    data = {
        secret: [f"Bearer {secret}", (1, None, secret), {secret, "ok"}],
        "n": 3,
        "b": b"raw",
        "p": Point(secret, 2.5),
        "s": Secret("other value"),
        "f": frozenset({secret}),
    }
    out = Redactor([secret]).redact_data(data)
    assert out == {
        MASK: [f"Bearer {MASK}", (1, None, MASK), {MASK, "ok"}],
        "n": 3,
        "b": b"raw",
        "p": Point(MASK, 2.5),
        "s": MASK,
        "f": frozenset({MASK}),
    }
    assert type(out["p"]) is Point
    assert data[secret][0] == f"Bearer {secret}"  # the input is not changed


def test_redact_data_rebuilds_attrs_events() -> None:
    """An event (an attrs instance) comes back as the same type with its text redacted."""
    secret = "sk-abcdef123456"
    event = StepFailedEvent(
        run_id="r1",
        at=1.0,
        step_id="s",
        error=ErrorInfo(type="AuthenticationFailed", message=f"401 for key {secret}"),
    )
    out = Redactor([secret]).redact_data(event)
    assert type(out) is StepFailedEvent
    assert out.error.message == f"401 for key {MASK}"
    assert secret.encode() not in serde.dumps(out, serde.Event)


def test_a_redactor_shows_and_pickles_no_value() -> None:
    """The repr gives a count only, and pickling is refused."""
    redactor = Redactor(["supersecretvalue"])
    assert "supersecretvalue" not in repr(redactor)
    assert "1" in repr(redactor)
    with pytest.raises(TypeError):
        pickle.dumps(redactor)


def test_unrelated_base64_is_left_alone() -> None:
    """Redaction does not mask text that merely looks encoded."""
    redactor = Redactor(["sk-abcdefghijklmnop"])
    text = "sha=" + binascii.hexlify(b"unrelated").decode() + " " + base64.b64encode(b"x").decode()
    assert redactor.redact(text) == text


def test_update_adds_many_at_once_and_counts_the_new_ones() -> None:
    """update adds several values with one rebuild and returns how many were new."""
    redactor = Redactor(["first-secret"])
    assert redactor.update(["first-secret", "second-secret", "ab", Secret("third-secret")]) == 2
    assert len(redactor) == 3
    assert redactor.redact("second-secret third-secret") == f"{MASK} {MASK}"


def test_a_very_long_value_is_redacted() -> None:
    """A value thousands of characters long (a PEM key, say) compiles and is masked."""
    value = "k" * 5000 + "-end"
    out = Redactor([value]).redact(f"<{value}> and {base64.b64encode(value.encode()).decode()}")
    assert value not in out
    assert out.startswith(f"<{MASK}> and ")


@given(secrets=st.lists(secrets_st, min_size=2, max_size=6, unique=True), data=st.data())
def test_many_secrets_sharing_prefixes_are_each_masked(
    secrets: list[str], data: st.DataObject
) -> None:
    """Secrets that share prefixes (one trie branch) are each masked wherever they occur."""
    stem = data.draw(st.text(min_size=4, max_size=8), label="stem")
    values = [stem + s for s in secrets]
    text = " | ".join(data.draw(st.permutations(values), label="order"))
    out = Redactor(values).redact(text)
    for value in values:
        assert value not in out
