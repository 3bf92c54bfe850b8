"""No secret value leaks: a property test over random secret strings, through every way a
value gets shown or stored — repr, str, f-strings, log records, pickling, the converter,
and the Redactor's scrubbing of error texts and event payloads.

A secret "appears" in an output only if it is absent from the output made the same way
from a different secret of the same length: a random secret such as ``"Secret('"`` is
part of every ``Secret``'s repr and reveals nothing.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import pickle
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskloom.contracts import (
    MASK,
    AuthenticationFailed,
    ChunkStreamed,
    ErrorInfo,
    Event,
    RunFailed,
    Secret,
    SecretRef,
    StepFailedEvent,
    serde,
)
from taskloom.security import Redactor

secrets_st = st.text(min_size=8, max_size=40).filter(lambda s: s.strip("*") != "")


def _other(secret: str) -> str:
    """A different secret of the same length, to tell a leak from the output's skeleton."""
    for ch in "\x01\x02":
        if ch * len(secret) != secret:
            return ch * len(secret)
    raise AssertionError("unreachable: a string cannot equal two different fills")


def assert_no_leak(
    secret: str, render: Callable[[str], str], forms: Callable[[str], list[str]] | None = None
) -> None:
    """``render(secret)`` shows no form of ``secret`` (itself, or each of ``forms(secret)``)
    beyond what ``render`` shows for another secret of the same length."""
    shown = render(secret)
    baseline = render(_other(secret))
    for form in forms(secret) if forms is not None else [secret]:
        if form in shown:
            assert form in baseline, f"{form!r} leaked into {shown!r}"


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        quote(secret, safe=""),
        quote_plus(secret),
        raw.hex(),
    ]


@given(secret=secrets_st)
def test_a_secret_never_shows_in_repr_str_or_format(secret: str) -> None:
    """repr, str, f-strings with any conversion or spec, %-formatting and containers of a
    Secret show the mask, never the value."""
    renders: list[Callable[[str], str]] = [
        lambda s: repr(Secret(s)),
        lambda s: str(Secret(s)),
        lambda s: f"{Secret(s)}",
        lambda s: f"{Secret(s)!r}",
        lambda s: f"{Secret(s)!s}",
        lambda s: f"{Secret(s):>60}",
        lambda s: "%s %r" % (Secret(s), Secret(s)),  # noqa: UP031
        lambda s: str([Secret(s)]),
        lambda s: repr({"api_key": Secret(s), "nested": (Secret(s),)}),
        lambda s: repr(SecretRef(secret="api_key")) + repr(Secret(Secret(s))),
    ]
    for render in renders:
        assert_no_leak(secret, render)
    assert MASK in str(Secret(secret))


def _log_text(secret: str) -> str:
    """Everything a formatter writes for a few ways of logging a Secret."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(args)s %(extra_key)s"))
    logger = logging.getLogger("taskloom.tests.leaks")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    value = Secret(secret)
    try:
        extra = {"extra_key": value}
        logger.warning("token=%s cfg=%r", value, {"api_key": value}, extra=extra)
        logger.info(value, extra=extra)
        logger.error("config %s", {"nested": [value, (value,)]}, extra=extra)
        try:
            raise RuntimeError(value)
        except RuntimeError:
            logger.exception("failed", extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@given(secret=secrets_st)
def test_a_secret_never_shows_in_log_records(secret: str) -> None:
    """Log records holding a Secret, alone, in a dict, as message, extra or exception
    argument, format to text without the value."""
    assert_no_leak(secret, _log_text)


def test_log_records_show_the_mask(caplog: pytest.LogCaptureFixture) -> None:
    """caplog's records of a Secret and of a dict holding one show MASK."""
    value = "sk-caplog-0123456789"
    with caplog.at_level(logging.INFO, logger="taskloom.tests.caplog"):
        log = logging.getLogger("taskloom.tests.caplog")
        log.info("key %s", Secret(value))
        log.info("cfg %s", {"api_key": Secret(value)})
    assert value not in caplog.text
    assert [r.getMessage() for r in caplog.records] == [
        f"key {MASK}",
        f"cfg {{'api_key': Secret({MASK!r})}}",
    ]


@given(secret=secrets_st)
def test_a_secret_refuses_pickling_and_copies_stay_masked(secret: str) -> None:
    """Pickling a Secret, or anything holding one, raises TypeError at every protocol;
    copies are the same object."""
    value = Secret(secret)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for obj in (value, {"k": value}, [value]):
            with pytest.raises(TypeError):
                pickle.dumps(obj, protocol=protocol)
    assert copy.copy(value) is value
    assert copy.deepcopy({"k": value})["k"] is value


@attrs.frozen(kw_only=True)
class _Config:
    api_key: Secret
    ref: SecretRef
    extra: dict[str, Secret]


@given(secret=secrets_st)
def test_the_converter_never_serializes_a_value(secret: str) -> None:
    """serde.dumps of a Secret, a SecretRef, and structures holding them writes no value."""

    def render(s: str) -> str:
        config = _Config(api_key=Secret(s), ref=SecretRef(secret="api_key"), extra={"x": Secret(s)})
        blobs = [
            serde.dumps(config),
            serde.dumps(Secret(s)),
            serde.dumps({"api_key": Secret(s), "list": [Secret(s)]}),
            serde.dumps(SecretRef(secret="openai_api_key")),
        ]
        return "\n".join(b.decode("utf-8") for b in blobs)

    assert_no_leak(secret, render, _forms)
    assert serde.unstructure(Secret(secret)) == MASK


@given(secret=secrets_st, before=st.text(max_size=20), after=st.text(max_size=20))
def test_redacted_error_texts_hold_no_encoding_of_the_secret(
    secret: str, before: str, after: str
) -> None:
    """An error text quoting the secret plainly, base64- and URL-encoded, keeps none of
    them once the Redactor has scrubbed it."""
    redactor = Redactor([Secret(secret)])

    def render(s: str) -> str:
        raw = s.encode()
        exc = AuthenticationFailed(
            f"{before}401 for key {s}; header Basic {base64.b64encode(raw).decode()}; "
            f"url ?key={quote_plus(s)}&k2={base64.urlsafe_b64encode(raw).decode().rstrip('=')}"
            f"{after}",
            status=401,
        )
        return redactor.redact(str(exc))

    assert_no_leak(secret, render, _forms)


@given(secret=secrets_st, before=st.text(max_size=20))
def test_redacted_event_payloads_serialize_without_the_secret(secret: str, before: str) -> None:
    """Events whose texts quote the secret (plainly or encoded) serialize, after
    redact_data, to JSON holding no form of it."""

    def render(s: str) -> str:
        raw = s.encode()
        events: list[Event] = [
            StepFailedEvent(
                run_id="r",
                at=1.0,
                step_id="call",
                error=ErrorInfo(type="AuthenticationFailed", message=f"{before}key {s} refused"),
            ),
            RunFailed(
                run_id="r",
                at=2.0,
                error=ErrorInfo(type="X", message=f"b64 {base64.b64encode(raw).decode()}"),
            ),
            ChunkStreamed(run_id="r", at=3.0, step_id="call", delta=f"echo {quote(s, safe='')}"),
        ]
        redactor = Redactor([s])
        blobs = [serde.dumps(redactor.redact_data(event), Event) for event in events]
        return "\n".join(blob.decode("utf-8") for blob in blobs)

    assert_no_leak(secret, render, _forms)
