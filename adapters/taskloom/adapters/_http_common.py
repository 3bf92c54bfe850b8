"""What the HTTP executors share: the httpx boundary, status mapping, Retry-After, SSE.

The OpenAI-compatible and the Anthropic executors differ only in how a request
is written and how a reply is read. Everything else lives here, once:

* ``translate_httpx`` is the one place where httpx exceptions become taskloom's
  typed errors (``HTTPX_ERRORS`` is the table; a test checks that it covers
  every exception class httpx exports), in the manner of httpx's own
  ``map_httpcore_exceptions``.
* ``error_from_status`` maps an HTTP status and its body to a typed error, and
  ``parse_retry_after`` reads how long the provider asked us to wait.
* ``SSEDecoder`` turns bytes into server-sent events and notices a stream that
  stops in the middle of a line or an event.
* ``HTTPExecutor`` holds one ``httpx.AsyncClient`` (one connection pool, split
  into shards by ``ShardedTransport`` when it is large) per executor, the
  timeouts (``Deadline``), the size cap and the lifecycle; the protocol
  modules subclass it and supply four hooks.

No secret ever appears in a message built here: every text that came from the
provider passes through ``Redactor.scrub`` first, because providers (and test
servers) sometimes quote the key they refused.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import contextlib
import email.utils
import json
import logging
import math
import re
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal, NoReturn

import httpx

from taskloom.contracts import (
    MASK,
    AuthenticationFailed,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    MalformedResponse,
    ProviderUnavailable,
    RateLimited,
    Secret,
    SecretRef,
    SecretStore,
    Usage,
    UsageError,
)

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Largest reply body (and largest single SSE line or event) an executor reads."""

_MAX_QUOTED_CHARS = 400
FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "error", "other"]
_logger = logging.getLogger("taskloom.adapters.http")


# --- secrets ------------------------------------------------------------------


class Redactor:
    """Replaces the executor's secret values in any text that could reach a caller."""

    __slots__ = ("_values",)

    def __init__(self, *secrets: Secret | None) -> None:
        self._values = tuple(s.reveal() for s in secrets if s is not None and len(s) > 0)

    def scrub(self, text: str) -> str:
        """``text`` with every secret value replaced by the mask."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text


def quote(text: str, redactor: Redactor) -> str:
    """A provider's text, scrubbed of secrets and shortened, for use inside a message."""
    text = redactor.scrub(text.strip())
    if len(text) > _MAX_QUOTED_CHARS:
        text = text[:_MAX_QUOTED_CHARS] + "..."
    return text


# --- typed access to decoded JSON ----------------------------------------------


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


# --- Retry-After -------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s))")
_MAX_WAIT_S = 24 * 3600.0
_PROVIDER_RESETS: tuple[tuple[str, str], ...] = (
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
    ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining"),
    ("anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining"),
    ("anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-input-tokens-remaining"),
    ("anthropic-ratelimit-output-tokens-reset", "anthropic-ratelimit-output-tokens-remaining"),
)
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _clamp(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_WAIT_S)


def _parse_seconds(text: str) -> float | None:
    try:
        return _clamp(float(text))
    except ValueError:
        return None


def _parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``, or bare seconds."""
    text = text.strip()
    plain = _parse_seconds(text)
    if plain is not None:
        return plain
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return _clamp(sum(float(n) * _UNIT_S[u] for n, u in parts))


def _parse_instant(text: str, now: float) -> float | None:
    """Seconds from ``now`` until an HTTP date or an RFC 3339 timestamp."""
    text = text.strip()
    when: datetime | None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:
        return None
    return _clamp(when.timestamp() - now)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """How long the provider asked us to wait, in seconds, or None when it did not say.

    In order: ``retry-after-ms`` (OpenAI), ``Retry-After`` as seconds or an HTTP
    date (RFC 9110), then the providers' reset headers: OpenAI's
    ``x-ratelimit-reset-*`` durations and Anthropic's ``anthropic-ratelimit-*-reset``
    timestamps. Of the reset headers, those whose ``remaining`` is 0 are the
    limits that were hit, so the longest of those wins; when none says so, the
    shortest reset is the earliest moment worth trying again. Waits are clamped
    to [0, 24 h]; anything unreadable is ignored.
    """
    clock = time.time() if now is None else now
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        ms = _parse_seconds(raw_ms)
        if ms is not None:
            return _clamp(ms / 1000.0)
    raw = headers.get("retry-after")
    if raw is not None:
        seconds = _parse_seconds(raw)
        if seconds is None:
            seconds = _parse_instant(raw, clock)
        if seconds is not None:
            return seconds
    exhausted: list[float] = []
    others: list[float] = []
    for reset_name, remaining_name in _PROVIDER_RESETS:
        value = headers.get(reset_name)
        if value is None:
            continue
        wait = _parse_instant(value, clock) if reset_name.startswith("anthropic") else None
        if wait is None:
            wait = _parse_duration(value)
        if wait is None:
            continue
        (exhausted if headers.get(remaining_name, "").strip() == "0" else others).append(wait)
    if exhausted:
        return max(exhausted)
    if others:
        return min(others)
    return None


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

    Never raises: a body that is not JSON gives its first bytes as the message.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "", body[:_MAX_QUOTED_CHARS].decode("utf-8", "replace")
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
        message = json.dumps(message)[:_MAX_QUOTED_CHARS]
    return kind, message


def error_from_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    provider: str,
    redactor: Redactor,
) -> ExecutorError:
    """The typed error for a reply with a non-2xx ``status``."""
    kind, message = error_details(body)
    said = quote(message, redactor)
    said_part = f": {said}" if said else ""
    where = f"{provider} answered HTTP {status}"
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
        return ProviderUnavailable(
            f"{where} (provider unavailable){said_part}; try again later", status=status
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


def _raise_translated(exc: BaseException, *, provider: str, redactor: Redactor) -> NoReturn:
    for cls, target, text in HTTPX_ERRORS:
        if isinstance(exc, cls):
            detail = quote(str(exc), redactor)
            detail_part = f" ({type(exc).__name__}: {detail})" if detail else ""
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
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


def translate_httpx(*, provider: str, redactor: Redactor, timeout_s: float) -> HTTPXBoundary:
    """Turn every httpx exception (and our own total timeout) into a typed error."""
    return HTTPXBoundary(provider=provider, redactor=redactor, timeout_s=timeout_s)


_HTTPX_BASES = (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError)


class Deadline:
    """``asyncio.timeout_at`` for one task, as a cheap re-enterable sync context manager.

    Why not ``asyncio.timeout``: it is entered once per call and once per
    streamed chunk, and costs about 8 us each time; this costs a timer handle.
    When the deadline passes inside the block, the task is cancelled and the
    block's CancelledError becomes TimeoutError (a cancellation from elsewhere
    stays a cancellation), as asyncio.timeout does.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_task", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self._fired = False
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    def _fire(self) -> None:
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise UsageError("a Deadline is entered inside a task")
        self._task = task
        self._fired = False
        self._cancelling = task.cancelling()
        loop = task.get_loop()
        if self.when <= loop.time():
            raise TimeoutError
        self._handle = loop.call_at(self.when, self._fire)
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        assert self._handle is not None and self._task is not None
        self._handle.cancel()
        if not self._fired:
            return
        ours = self._task.uncancel() <= self._cancelling
        if ours and typ is not None and issubclass(typ, asyncio.CancelledError):
            raise TimeoutError from exc


# --- server-sent events --------------------------------------------------------------------


class ServerSentEvent:
    """One dispatched event: its ``event`` name (``message`` by default) and ``data``."""

    __slots__ = ("data", "event")

    def __init__(self, event: str, data: str) -> None:
        self.event = event
        self.data = data

    def __repr__(self) -> str:
        return f"ServerSentEvent(event={self.event!r}, data={self.data!r})"


class SSEDecoder:
    """Incremental decoder of ``text/event-stream`` (the WHATWG rules).

    Lines end in CR LF, LF or CR (a CR at the end of one chunk waits for the
    next, so a split CR LF is one line end). ``finish()`` raises when the bytes
    did not end cleanly: a partial line or an event without its blank line
    means the stream was cut off. One event (with its partial line) may not
    exceed ``max_bytes`` characters, so a server cannot make us buffer forever.
    """

    __slots__ = ("_buffer", "_data", "_data_size", "_decoder", "_event", "_max_bytes")

    def __init__(self, *, max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``."""
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise MalformedResponse("the event stream is not valid UTF-8") from exc
        buffer = self._buffer + text
        lines = buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if buffer.endswith("\r"):
            # the LF of a CR LF may still come: keep that line open
            lines.pop()
            self._buffer = lines.pop() + "\r"
        else:
            self._buffer = lines.pop()
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        if self._data_size + len(self._buffer) > self._max_bytes:
            raise MalformedResponse(
                f"one server-sent event is larger than {self._max_bytes} characters; "
                "the server is sending something other than an LLM stream"
            )
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data))
            self._event = ""
            self._data = []
            self._data_size = 0
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
        elif name == "event":
            self._event = value
        return None

    def finish(self) -> list[ServerSentEvent]:
        """The events still pending at the end of the bytes; raises if one was cut off."""
        events: list[ServerSentEvent] = []
        if self._buffer.endswith("\r"):
            event = self._line(self._buffer[:-1])
            self._buffer = ""
            if event is not None:
                events.append(event)
        if self._buffer or self._data or self._event:
            raise MalformedResponse(
                "the event stream was cut off in the middle of an event; the connection "
                "broke or the server stopped early: try again"
            )
        return events


async def iter_sse(
    response: httpx.Response, *, deadline: float, max_bytes: int
) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of ``response``; reading each chunk must finish before ``deadline``."""
    decoder = SSEDecoder(max_bytes=max_bytes)
    chunks = response.aiter_bytes()
    limit = Deadline(deadline)
    while True:
        with limit:
            chunk = await anext(chunks, None)
        if chunk is None:
            break
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.finish():
        yield event


# --- the executor base ----------------------------------------------------------------------


class _Counted(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    __slots__ = ("_inner", "_release")

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        await self._inner.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """One connection pool made of several httpcore pools; each request goes to the least busy.

    Why: httpcore 1.0's pool re-scans all its connections for every idle one on
    each request event, which is quadratic in the pool size. With 100
    connections that scan dominates (1,000 calls at concurrency 100 took 10 s
    instead of 0.5 s). Shards of at most ``SHARD_SIZE`` connections keep each
    scan small, while the executor still holds one client and one pool of
    ``max_connections`` reused connections.
    """

    SHARD_SIZE: ClassVar[int] = 16

    def __init__(self, shards: list[httpx.AsyncBaseTransport]) -> None:
        if not shards:
            raise UsageError("ShardedTransport needs at least one shard")
        self._shards = shards
        self._busy = [0] * len(shards)

    @property
    def busy(self) -> tuple[int, ...]:
        """Responses open on each shard (for tests and diagnostics)."""
        return tuple(self._busy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._busy[index] -= 1
            raise

        def release() -> None:
            self._busy[index] -= 1

        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Counted(response.stream, release)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def pooled_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """``max_connections`` pooled keep-alive connections, sharded when there are many."""
    count = -(-max_connections // ShardedTransport.SHARD_SIZE)
    base, extra = divmod(max_connections, count)

    def shard(size: int) -> httpx.AsyncHTTPTransport:
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        return httpx.AsyncHTTPTransport(limits=limits)

    if count == 1:
        return shard(max_connections)
    return ShardedTransport([shard(base + (i < extra)) for i in range(count)])


def _plain_length(headers: httpx.Headers) -> int | None:
    """Content-Length when the body is not compressed (else the decoded size is unknown).

    One pass over the raw headers: ``Headers.get`` scans them all on every call.
    """
    length: int | None = None
    for key, value in headers.raw:
        name = key.lower()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return None
    return length


class StreamState:
    """What a protocol's event handler learned so far about a streamed reply."""

    __slots__ = ("done", "finish_reason", "model", "usage")

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.model: str | None = None


class Parsed:
    """A decoded non-streamed reply, before latency is attached."""

    __slots__ = ("finish_reason", "model", "text", "usage")

    def __init__(
        self, *, text: str, finish_reason: FinishReason, usage: Usage, model: str | None
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage
        self.model = model


def check_secret(api_key: object, owner: str) -> Secret | None:
    """``api_key`` if it is a Secret or None; a plain string is refused unseen."""
    if api_key is None or isinstance(api_key, Secret):
        return api_key
    raise UsageError(
        f"{owner}: api_key must be a taskloom Secret (or None), got {type(api_key).__name__}; "
        "wrap it as Secret(value) in code, or give {'secret': NAME} in a config"
    )


def _positive(value: object, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(f"{owner}: {name} must be a positive number, got {value!r}")
    return float(value)


class HTTPExecutor(abc.ABC):
    """An LLM executor speaking JSON over HTTP with one pooled ``httpx.AsyncClient``.

    Subclasses set ``provider`` and ``path`` and implement ``_headers``,
    ``_payload``, ``_parse`` and ``_on_event``. Calls never retry on their own:
    retrying is the engine's policy, and a typed error tells it whether to.
    ``total_timeout_s`` bounds the wall time of a call from sending the request
    to the last byte (for a stream, including time the consumer spends between
    chunks); ``read_timeout_s`` bounds each wait for bytes.

    The pool belongs to the event loop of the first call. Used from another
    loop while that one is alive, calls raise UsageError; used again after it
    closed (``asyncio.run`` called twice), the executor opens a new pool and
    leaves the old loop's sockets, which can no longer be closed, to the
    garbage collector. Prefer one executor per loop, closed with ``aclose()``.
    """

    provider: ClassVar[str] = "http"
    path: ClassVar[str] = "/"

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None = None,
        api_key: Secret | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 120.0,
        max_connections: int = 100,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UsageError(f"{owner}: base_url must start with http:// or https://")
        if model is not None and not isinstance(model, str):
            raise UsageError(f"{owner}: model must be a string or None")
        self._api_key = check_secret(api_key, owner)
        self._redactor = Redactor(self._api_key)
        self._base_url = base_url.rstrip("/")
        self._url = self._base_url + self.path
        self._model = model
        self._extra_headers = dict(headers or {})
        for key, value in self._extra_headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise UsageError(f"{owner}: headers must map strings to strings")
        self._connect_timeout_s = _positive(connect_timeout_s, "connect_timeout_s", owner)
        self._read_timeout_s = _positive(read_timeout_s, "read_timeout_s", owner)
        self._total_timeout_s = _positive(total_timeout_s, "total_timeout_s", owner)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise UsageError(f"{owner}: max_connections must be an integer >= 1")
        if max_connections < 1:
            raise UsageError(f"{owner}: max_connections must be an integer >= 1")
        self._max_connections = max_connections
        self._max_bytes = int(_positive(max_response_bytes, "max_response_bytes", owner))
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r}, model={self._model!r})"

    # -- hooks -----------------------------------------------------------------------

    @abc.abstractmethod
    def _headers(self) -> dict[str, str]:
        """Protocol headers, including authentication."""

    @abc.abstractmethod
    def _payload(self, request: CompletionRequest, model: str, *, stream: bool) -> dict[str, Any]:
        """The JSON body for ``request``."""

    @abc.abstractmethod
    def _parse(self, data: Any) -> Parsed:
        """Decode a whole reply body (already JSON-decoded)."""

    @abc.abstractmethod
    def _on_event(self, event: ServerSentEvent, state: StreamState) -> str | None:
        """Handle one stream event; return a text delta, or None; set ``state.done`` at the end."""

    # -- lifecycle --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{type(self).__name__} is closed: create a new executor")

    def _get_client(self) -> httpx.AsyncClient:
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise UsageError(
                    f"{type(self).__name__} is in use on another event loop; "
                    "create one executor per event loop"
                )
            # the loop its connections belonged to is gone (asyncio.run called again)
            self._client = None
        if self._client is None:
            self._loop = loop
            headers = {"user-agent": "taskloom/0.1", **self._extra_headers, **self._headers()}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(
                    self._read_timeout_s,
                    connect=self._connect_timeout_s,
                    pool=self._total_timeout_s,
                ),
                transport=self._transport or pooled_transport(self._max_connections),
                follow_redirects=False,
                trust_env=self._transport is None,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; later calls raise UsageError."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    async def __aenter__(self) -> HTTPExecutor:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_client", None) is not None and not getattr(self, "_closed", True):
            warnings.warn(
                f"{type(self).__name__} was never closed: call aclose() or use 'async with'",
                ResourceWarning,
                stacklevel=2,
            )

    # -- calls -------------------------------------------------------------------------

    def _model_for(self, request: CompletionRequest) -> str:
        model = request.model or self._model
        if not model:
            raise InvalidRequest(
                f"{type(self).__name__}: no model given; set 'model' on the step or a "
                "default model on the executor"
            )
        return model

    def _translate(self) -> HTTPXBoundary:
        return translate_httpx(
            provider=self.provider, redactor=self._redactor, timeout_s=self._total_timeout_s
        )

    async def _send(self, request: CompletionRequest, *, stream: bool) -> httpx.Response:
        """Send the request and return the open response after checking its status."""
        client = self._get_client()
        body = json.dumps(
            self._payload(request, self._model_for(request), stream=stream),
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        http_request = client.build_request(
            "POST", self._url, content=body, headers={"content-type": "application/json"}
        )
        response = await client.send(http_request, stream=True)
        if response.status_code // 100 != 2:
            try:
                error_body = await self._read_capped(response, for_error=True)
            finally:
                await response.aclose()
            raise error_from_status(
                response.status_code,
                error_body,
                response.headers,
                provider=self.provider,
                redactor=self._redactor,
            )
        return response

    async def _read_capped(self, response: httpx.Response, *, for_error: bool = False) -> bytes:
        """The body, refusing to read more than ``max_response_bytes``."""
        limit = min(self._max_bytes, 64 * 1024) if for_error else self._max_bytes
        length = _plain_length(response.headers)
        if length is not None and length <= limit:
            return await response.aread()
        if length is not None and not for_error:
            raise MalformedResponse(
                f"{self.provider}: the reply is {length} bytes, over the {limit}-byte limit "
                "(max_response_bytes); the server is not answering like an LLM API"
            )
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > limit:
                if for_error:
                    parts.append(part[: limit - (size - len(part))])
                    break
                raise MalformedResponse(
                    f"{self.provider}: the reply is over the {limit}-byte limit "
                    "(max_response_bytes); the server is not answering like an LLM API"
                )
            parts.append(part)
        return b"".join(parts)

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        """One completion; failures are the typed errors of taskloom.contracts."""
        self._check_open()
        start = time.monotonic()
        limit = Deadline(asyncio.get_running_loop().time() + self._total_timeout_s)
        with self._translate(), limit:
            response = await self._send(request, stream=False)
            try:
                body = await self._read_capped(response)
            finally:
                await response.aclose()
        parsed = self._parse(decode_json(body, f"the {self.provider} reply"))
        latency = time.monotonic() - start
        _logger.debug("%s completion in %.3f s", self.provider, latency)
        return CompletionResult(
            text=parsed.text,
            finish_reason=parsed.finish_reason,
            usage=parsed.usage,
            model=parsed.model,
            latency_s=latency,
        )

    def stream(self, request: CompletionRequest, /) -> AsyncGenerator[CompletionChunk, None]:
        """Stream a completion by server-sent events.

        Text deltas are yielded as they arrive (index 0, 1, ...); one last chunk
        with an empty delta carries the finish reason and the usage (EX2). A
        stream that ends before the protocol's end marker raises
        MalformedResponse. Closing the iterator, or cancelling the task that
        reads it, closes the response and its connection.
        """
        self._check_open()
        return self._stream(request)

    async def _stream(self, request: CompletionRequest) -> AsyncGenerator[CompletionChunk, None]:
        self._check_open()
        deadline = asyncio.get_running_loop().time() + self._total_timeout_s
        with self._translate():
            with Deadline(deadline):
                response = await self._send(request, stream=True)
            try:
                index = 0
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    # some servers answer a streamed request with one JSON reply
                    with Deadline(deadline):
                        body = await self._read_capped(response)
                    parsed = self._parse(decode_json(body, f"the {self.provider} reply"))
                    if parsed.text:
                        yield CompletionChunk(delta=parsed.text, index=index)
                        index += 1
                    yield CompletionChunk(
                        delta="",
                        index=index,
                        finish_reason=parsed.finish_reason,
                        usage=parsed.usage,
                    )
                    return
                state = StreamState()
                events = iter_sse(response, deadline=deadline, max_bytes=self._max_bytes)
                async with contextlib.aclosing(events):
                    async for event in events:
                        delta = self._on_event(event, state)
                        if delta:
                            yield CompletionChunk(delta=delta, index=index)
                            index += 1
                        if state.done:
                            break
                if not state.done:
                    raise MalformedResponse(
                        f"{self.provider}: the stream was cut off before its end marker; "
                        "the connection broke or the server stopped early: try again"
                    )
                yield CompletionChunk(
                    delta="",
                    index=index,
                    finish_reason=state.finish_reason or "other",
                    usage=state.usage,
                )
            finally:
                await response.aclose()


# --- configuration ---------------------------------------------------------------------------

_COMMON_SETTINGS = frozenset(
    {
        "type",
        "base_url",
        "model",
        "api_key",
        "headers",
        "connect_timeout_s",
        "read_timeout_s",
        "total_timeout_s",
        "max_connections",
        "max_response_bytes",
    }
)
_AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})


async def settings_to_kwargs(
    settings: Mapping[str, Any],
    secrets: SecretStore | None,
    *,
    type_name: str,
    extra: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Constructor arguments from a config table, resolving ``api_key`` in ``secrets``.

    A literal key is refused (its value is never repeated in the message): configs
    and pipelines hold references such as ``{"secret": "openai_api_key"}`` only.
    """
    where = f"executor type {type_name!r}"
    if not isinstance(settings, Mapping):
        raise UsageError(f"{where}: settings must be a table (a dict)")
    unknown = sorted(set(settings) - _COMMON_SETTINGS - extra)
    if unknown:
        allowed = ", ".join(sorted(_COMMON_SETTINGS | extra))
        raise UsageError(f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {allowed}")
    declared = settings.get("type", type_name)
    if declared != type_name:
        raise UsageError(f"{where}: settings say type={declared!r}")
    kwargs = {k: v for k, v in settings.items() if k not in ("type", "api_key")}
    if "base_url" not in kwargs and "base_url" not in extra:
        raise UsageError(f"{where}: base_url is required, e.g. 'https://api.openai.com/v1'")
    headers = kwargs.get("headers")
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise UsageError(f"{where}: headers must be a table of strings")
        bad = sorted(k for k in headers if isinstance(k, str) and k.lower() in _AUTH_HEADERS)
        if bad:
            raise UsageError(
                f"{where}: header(s) {', '.join(bad)} would put a credential in the config; "
                'use api_key = { secret = "NAME" } instead'
            )
    raw_key = settings.get("api_key")
    if raw_key is None:
        return kwargs
    if isinstance(raw_key, str):
        raise UsageError(
            f"{where}: api_key must be a secret reference such as "
            '{"secret": "openai_api_key"} (TOML: api_key = { secret = "openai_api_key" }), '
            "never the key itself; store the key with `taskloom secrets set openai_api_key`"
        )
    if isinstance(raw_key, SecretRef):
        name = raw_key.secret
    elif isinstance(raw_key, Mapping) and set(raw_key) == {"secret"}:
        name = SecretRef(secret=raw_key["secret"]).secret
    else:
        raise UsageError(
            f"{where}: api_key must be a secret reference such as {{'secret': 'openai_api_key'}}"
        )
    if secrets is None:
        raise UsageError(f"{where}: api_key refers to secret {name!r} but no SecretStore was given")
    kwargs["api_key"] = await secrets.get(name)
    return kwargs
