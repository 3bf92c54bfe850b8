"""Where a failed HTTP call becomes one of taskloom's typed errors.

``error_from_status`` maps a non-2xx status and its body (OpenAI's, Anthropic's
or FastAPI's error shape) to a typed error; ``error_from_stream_event`` does the
same for an ``error`` object sent inside a stream. ``translate_httpx`` is the
one place where httpx exceptions become typed errors (``HTTPX_ERRORS`` is the
table; a test checks that it covers every exception class httpx exports), in
the manner of httpx's own ``map_httpcore_exceptions``.

No secret ever appears in a message built here: every text that came from the
provider passes through ``Redactor.scrub`` first, because providers (and test
servers) sometimes quote the key they refused; whole texts are scrubbed before
they are cut to length, and a cut that ends in the start of a key masks that
start too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import quote as url_quote
from urllib.parse import quote_plus

import httpx

from taskloom.adapters._http.retry_after import parse_retry_after
from taskloom.contracts import (
    MASK,
    AuthenticationFailed,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    MalformedResponse,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RetryableError,
    RetryForbidden,
    Secret,
)

_MAX_QUOTED_CHARS = 400


# --- secrets ------------------------------------------------------------------


_PERCENT = re.compile(r"%[0-9A-F]{2}")
_MIN_PARTIAL = 4
"""Shortest start of a key that ``Redactor.scrub_cut`` masks at the end of a cut text."""


def _forms(value: str) -> list[str]:
    """The value and the encodings a server or an exception may echo it in: base64
    (standard and URL-safe, padded or not) and percent-encoding, longest first."""
    raw = value.encode("utf-8")
    found = {value}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode("ascii")
        found.update((text, text.rstrip("=")))
    for quoted in (url_quote(value, safe=""), url_quote(value), quote_plus(value)):
        found.update((quoted, _PERCENT.sub(lambda m: m.group(0).lower(), quoted)))
    return sorted((f for f in found if len(f) >= _MIN_PARTIAL), key=len, reverse=True)


class Redactor:
    """Replaces the executor's secret values in any text that could reach a caller.

    It knows each value and its base64 and percent-encoded forms (a Basic auth
    header, a URL that quoted the key). ``taskloom.security.Redactor`` does the
    same with more encodings for the engine; the adapters cannot import it.
    """

    __slots__ = ("_forms", "_values")

    def __init__(self, *secrets: Secret | None) -> None:
        self._values = tuple(s.reveal() for s in secrets if s is not None and len(s) > 0)
        self._forms = tuple(form for value in self._values for form in _forms(value))

    def scrub(self, text: str) -> str:
        """``text`` with every secret value, plain or encoded, replaced by the mask."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def scrub_cut(self, text: str) -> str:
        """``scrub``, and a start of a value left at the end of ``text`` by a cut masked too."""
        text = self.scrub(text)
        for value in self._values:
            for size in range(min(len(value) - 1, len(text)), _MIN_PARTIAL - 1, -1):
                if text.endswith(value[:size]):
                    return text[:-size] + MASK
        return text


def quote(text: str, redactor: Redactor) -> str:
    """A provider's text, scrubbed of secrets and then shortened, for use inside a message."""
    text = redactor.scrub(text.strip())
    if len(text) > _MAX_QUOTED_CHARS:
        text = redactor.scrub_cut(text[:_MAX_QUOTED_CHARS]) + "..."
    return text


# --- status codes --------------------------------------------------------------------

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
)
_TIMEOUT_STATUSES = frozenset({408, 504})
_RETRYABLE_STATUSES = frozenset({409, 425, 500, 502, 503, 529})
_AUTH_STATUSES = frozenset({401, 403})


def error_details(body: bytes) -> tuple[str, str]:
    """``(kind, message)`` from an error body in OpenAI's, Anthropic's or FastAPI's shape.

    Never raises: a body that is not JSON gives its text as the message (whole: it is
    cut to length by ``quote`` only after secrets were masked, so a key straddling
    the cut cannot leak its first characters).
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "", body.decode("utf-8", "replace")
    kind, message = "", ""
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            kind = " ".join(
                str(error[k]) for k in ("type", "code") if isinstance(error.get(k), str)
            )
            message = error.get("message") or error.get("detail") or ""
        elif isinstance(error, str):
            message = error
        if not message and "detail" in data:
            message = data["detail"]
    if not isinstance(message, str):
        message = json.dumps(message)
    return kind, message


def error_from_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    provider: str,
    redactor: Redactor,
) -> ExecutorError:
    """The typed error for a reply with a non-2xx ``status``.

    ``x-should-retry: false`` (OpenAI's and Anthropic's servers send it) turns what
    would be retryable into ``RetryForbidden``, and ``true`` a refused request
    (``InvalidRequest``, never refused credentials) into a retryable one; 429
    ``insufficient_quota`` is ``QuotaExceeded`` (no wait refills an empty
    account); the wait the provider asked for (``Retry-After`` and the reset
    headers) rides on every retryable error, a 503's and a 529's included.
    """
    error = _error_for_status(status, body, headers, provider=provider, redactor=redactor)
    should_retry = headers.get("x-should-retry", "").strip().lower()
    if should_retry == "true" and type(error) is InvalidRequest:
        # the provider says this one is transient (as the official SDKs obey it)
        error = ProviderUnavailable(
            f"{error} (the provider marked it worth retrying: x-should-retry: true)",
            status=status,
        )
    if isinstance(error, RetryableError):
        if should_retry == "false":
            return RetryForbidden(
                f"{error} (the provider said not to retry this request: x-should-retry: false)",
                status=status,
            )
        if error.retry_after is None:
            error.retry_after = parse_retry_after(headers)
    return error


def _error_for_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    provider: str,
    redactor: Redactor,
) -> ExecutorError:
    kind, message = error_details(body)
    said = quote(message, redactor)
    said_part = f": {said}" if said else ""
    where = f"{provider} answered HTTP {status}"
    if status == 429 and "insufficient_quota" in kind:
        return QuotaExceeded(
            f"{where} (out of quota){said_part}. The account has no quota or credit left: "
            "add credit or raise the quota; retrying does not help",
            status=status,
        )
    if status == 429:
        retry_after = parse_retry_after(headers)
        wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(
            f"{where} (rate limited){said_part}{wait}. Slow down or raise the provider limit",
            retry_after=retry_after,
            status=status,
        )
    if status in _AUTH_STATUSES:
        return AuthenticationFailed(
            f"{where}: the credentials were refused{said_part}. Check the API key's secret "
            "(taskloom secrets set NAME) and that it may use this model",
            status=status,
        )
    if status in _TIMEOUT_STATUSES:
        return ExecutorTimeout(f"{where} (timed out){said_part}; try again", status=status)
    if status in _RETRYABLE_STATUSES or 500 <= status <= 599:
        retry_after = parse_retry_after(headers)
        wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return ProviderUnavailable(
            f"{where} (provider unavailable){said_part}{wait}; try again later",
            status=status,
            retry_after=retry_after,
        )
    if 300 <= status <= 399:
        location = quote(headers.get("location", "?"), redactor)
        return InvalidRequest(
            f"{where}: a redirect to {location}; point base_url at the final address",
            status=status,
        )
    lowered = f"{kind} {message}".lower()
    if any(marker in lowered for marker in _CONTEXT_MARKERS):
        return InvalidRequest(
            f"{where}: context length exceeded, the prompt does not fit the model's context "
            f"window{said_part}. Shorten the input or lower max_tokens",
            status=status,
            context_length_exceeded=True,
        )
    hint = "check base_url and the model name" if status == 404 else "fix the request"
    return InvalidRequest(f"{where}: the request was refused{said_part}; {hint}", status=status)


def error_from_stream_event(
    payload: Mapping[str, Any], *, provider: str, redactor: Redactor
) -> ExecutorError:
    """The typed error for an ``error`` object sent inside a stream (no status code)."""
    error = payload.get("error", payload)
    kind = ""
    message = ""
    if isinstance(error, dict):
        kind = " ".join(str(error[k]) for k in ("type", "code") if isinstance(error.get(k), str))
        raw = error.get("message")
        message = raw if isinstance(raw, str) else ""
    elif isinstance(error, str):
        message = error
    statuses = {
        "insufficient_quota": 429,
        "rate_limit": 429,
        "overloaded": 529,
        "authentication": 401,
        "permission": 403,
        "invalid_request": 400,
        "not_found": 404,
        "request_too_large": 413,
        "timeout": 504,
    }
    status = next((code for word, code in statuses.items() if word in kind), 500)
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    err = error_from_status(status, body, {}, provider=provider, redactor=redactor)
    err.status = None
    return err


# --- the httpx boundary -----------------------------------------------------------------

HTTPX_ERRORS: tuple[tuple[type[Exception], type[ExecutorError], str], ...] = (
    # most specific first: the first row whose class matches wins
    (httpx.ConnectTimeout, ExecutorTimeout, "connecting to the server timed out"),
    (httpx.ReadTimeout, ExecutorTimeout, "the server stopped sending (read timeout)"),
    (httpx.WriteTimeout, ExecutorTimeout, "sending the request timed out"),
    (httpx.PoolTimeout, ExecutorTimeout, "no free connection in the pool in time"),
    (httpx.TimeoutException, ExecutorTimeout, "the call timed out"),
    (httpx.ConnectError, ProviderUnavailable, "could not connect to the server"),
    (httpx.ReadError, ProviderUnavailable, "the connection broke while reading"),
    (httpx.WriteError, ProviderUnavailable, "the connection broke while sending"),
    (httpx.CloseError, ProviderUnavailable, "the connection failed while closing"),
    (httpx.NetworkError, ProviderUnavailable, "a network error"),
    (httpx.RemoteProtocolError, ProviderUnavailable, "the server broke the HTTP protocol"),
    (httpx.LocalProtocolError, InvalidRequest, "the request is not valid HTTP (check headers)"),
    (httpx.ProtocolError, ProviderUnavailable, "an HTTP protocol error"),
    (httpx.ProxyError, ProviderUnavailable, "the proxy refused or failed"),
    (httpx.UnsupportedProtocol, InvalidRequest, "base_url must start with http:// or https://"),
    (httpx.TransportError, ProviderUnavailable, "a transport error"),
    (httpx.DecodingError, MalformedResponse, "the reply's content encoding is broken"),
    (httpx.TooManyRedirects, InvalidRequest, "too many redirects; point base_url at the target"),
    (httpx.HTTPStatusError, ProviderUnavailable, "the server answered with an error status"),
    (httpx.RequestError, ProviderUnavailable, "the request failed"),
    (httpx.HTTPError, ProviderUnavailable, "an HTTP error"),
    (httpx.InvalidURL, InvalidRequest, "the URL is not valid; check base_url"),
    (httpx.CookieConflict, InvalidRequest, "conflicting cookies"),
    (httpx.StreamError, ProviderUnavailable, "the response stream was closed or consumed"),
)
"""Every httpx exception class and the typed error it becomes."""


def _scrub_chain(exc: BaseException, redactor: Redactor) -> None:
    """Mask secrets in ``exc`` and its causes and drop their frames, in place.

    httpx and h11 quote a header value they refuse, and their frames hold the
    request's headers in locals: a traceback printed with ``capture_locals``
    would show the key. The messages (masked) stay, the library frames go.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        args = current.args
        scrubbed = tuple(redactor.scrub(a) if isinstance(a, str) else a for a in args)
        if scrubbed != args:
            with contextlib.suppress(AttributeError, TypeError):
                current.args = scrubbed
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


def _raise_translated(exc: BaseException, *, provider: str, redactor: Redactor) -> NoReturn:
    for cls, target, text in HTTPX_ERRORS:
        if isinstance(exc, cls):
            detail = quote(str(exc), redactor)
            detail_part = f" ({type(exc).__name__}: {detail})" if detail else ""
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            _scrub_chain(exc, redactor)
            raise target(f"{provider}: {text}{detail_part}", status=status) from exc
    raise exc


class HTTPXBoundary:
    """The context manager ``translate_httpx`` returns.

    A class rather than ``@contextmanager``: it wraps every call, and a plain
    ``__exit__`` costs a fraction of a generator-based one.
    """

    __slots__ = ("_provider", "_redactor", "_timeout_s")

    def __init__(self, *, provider: str, redactor: Redactor, timeout_s: float) -> None:
        self._provider = provider
        self._redactor = redactor
        self._timeout_s = timeout_s

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, TimeoutError):
            raise ExecutorTimeout(
                f"{self._provider}: the call took longer than total_timeout_s="
                f"{self._timeout_s:g}; raise total_timeout_s or ask for a shorter reply"
            ) from exc
        if isinstance(exc, _HTTPX_BASES):
            _raise_translated(exc, provider=self._provider, redactor=self._redactor)
        if isinstance(exc, ExecutorError):
            # A typed error built below (a refused status, a bad reply) leaves without the
            # frames it was raised in: their locals hold the error body or the event that
            # may quote the key. Its causes (a JSON decode error holding the body) lose
            # their frames and have their texts masked, as httpx's do.
            _scrub_chain(exc, self._redactor)
            raise exc


def translate_httpx(*, provider: str, redactor: Redactor, timeout_s: float) -> HTTPXBoundary:
    """Turn every httpx exception (and our own total timeout) into a typed error."""
    return HTTPXBoundary(provider=provider, redactor=redactor, timeout_s=timeout_s)


_HTTPX_BASES = (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError)
