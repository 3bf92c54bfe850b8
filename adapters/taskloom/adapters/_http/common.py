"""What the HTTP executors share: the executor base class and its hooks.

The OpenAI-compatible and the Anthropic executors differ only in how a request
is written and how a reply is read. Everything else is written once:

* ``HTTPExecutor`` (here) holds one connection pool per executor (an httpx
  transport, called directly: see ``_send``), the timeouts, the size cap and
  the lifecycle; the protocol modules subclass it and supply four hooks.
* ``errors`` maps statuses and httpx exceptions to typed errors;
  ``retry_after`` reads how long the provider asked us to wait;
  ``sse`` decodes server-sent events; ``transport`` chooses the pool
  (``pool``, on the asyncio sockets of ``network``) and holds ``Deadline``
  and the size cap; ``jsonbody`` gives typed
  access to replies; ``settings`` reads a config table.

This module re-exports their names, so ``common``
keeps offering everything it did before the split.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import time
import warnings
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

import httpx

from taskloom.adapters._http.errors import (
    HTTPX_ERRORS,
    HTTPXBoundary,
    Redactor,
    error_details,
    error_from_status,
    error_from_stream_event,
    quote,
    translate_httpx,
)
from taskloom.adapters._http.jsonbody import (
    decode_json,
    expect_list,
    expect_object,
    opt_str,
    require,
    token_count,
)
from taskloom.adapters._http.keys import check_secret, key_problem
from taskloom.adapters._http.reply import FinishReason, Parsed, StreamState
from taskloom.adapters._http.retry_after import parse_retry_after
from taskloom.adapters._http.settings import settings_to_kwargs
from taskloom.adapters._http.sse import ServerSentEvent, SSEDecoder, iter_sse
from taskloom.adapters._http.transport import (
    ACCEPT_ENCODING,
    MAX_RESPONSE_BYTES,
    CheckedTransport,
    Deadline,
    iter_decoded,
    plain_length,
    pooled_transport,
    read_plain,
)
from taskloom.contracts import (
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ExecutorError,
    InvalidRequest,
    MalformedResponse,
    Refused,
    Secret,
    UsageError,
    mask_url,
)

__all__ = [
    "HTTPX_ERRORS",
    "MAX_RESPONSE_BYTES",
    "Deadline",
    "FinishReason",
    "HTTPExecutor",
    "HTTPXBoundary",
    "Parsed",
    "Redactor",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamState",
    "check_secret",
    "decode_json",
    "error_details",
    "error_from_status",
    "error_from_stream_event",
    "expect_list",
    "expect_object",
    "iter_sse",
    "opt_str",
    "parse_retry_after",
    "pooled_transport",
    "quote",
    "require",
    "settings_to_kwargs",
    "token_count",
    "translate_httpx",
]

_logger = logging.getLogger("taskloom.adapters.http")
_httpx_logger = logging.getLogger("httpx")


def _sets_cookie(headers: httpx.Headers) -> bool:
    """Whether a reply sets a cookie (one pass over its raw headers)."""
    return any(name.lower() == b"set-cookie" for name, _ in headers.raw)


def _positive(value: object, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(f"{owner}: {name} must be a positive number, got {value!r}")
    return float(value)


class HTTPExecutor(abc.ABC):
    """An LLM executor speaking JSON over HTTP through one pool of keep-alive connections.

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
    finish_ends_stream: ClassVar[bool] = False
    """Whether a stream that ends after its finish reason is complete without an end marker."""

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
        try:  # parsed once: httpx parses a text URL again on every request
            self._url = httpx.URL(self._base_url + self.path)
        except httpx.InvalidURL as exc:
            raise UsageError(f"{owner}: base_url is not a valid URL ({exc})") from None
        self._model = model
        self._extra_headers = dict(headers or {})
        for key, value in self._extra_headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise UsageError(f"{owner}: headers must map strings to strings")
            if key_problem(key) is not None or (value and key_problem(value) is not None):
                raise UsageError(
                    f"{owner}: header {key if key.isascii() and key.isprintable() else '?'!r}"
                    " has a name or value an HTTP header cannot carry (non-ASCII, a control "
                    "character, or spaces at its ends)"
                )
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
        self._timeouts = {
            "connect": self._connect_timeout_s,
            "read": self._read_timeout_s,
            "write": self._read_timeout_s,
            "pool": self._total_timeout_s,
        }
        self._pool: httpx.AsyncBaseTransport | None = None
        self._request_headers: list[tuple[bytes, bytes]] = []
        self._headers_url: httpx.URL | None = None  # the URL whose Host they carry
        self._cookies = httpx.Cookies()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        # a key in the URL's userinfo or query never reaches a log line or error text
        shown = mask_url(self._base_url)
        return f"{type(self).__name__}(base_url={shown!r}, model={self._model!r})"

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

    def _get_pool(self) -> httpx.AsyncBaseTransport:
        """The pool of this loop's connections, opened on first use."""
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise UsageError(
                    f"{type(self).__name__} is in use on another event loop; "
                    "create one executor per event loop"
                )
            # the loop its connections belonged to is gone (asyncio.run called again)
            self._pool = None
        if self._pool is None:
            self._loop = loop
            self._headers_url = None  # a new pool merges the headers again, as a new client did
            self._pool = CheckedTransport(
                self._transport or pooled_transport(self._max_connections, self._url)
            )
        if self._headers_url is not self._url:
            self._request_headers = self._merged_headers()
            self._headers_url = self._url
        return self._pool

    def _merged_headers(self) -> list[tuple[bytes, bytes]]:
        """Every request's headers but its length, merged once as httpx would merge them.

        Later sources win, names compared without case: httpx's defaults, ours,
        the executor's ``headers``, the protocol's (the key), the content type.
        """
        merged = httpx.Headers({"accept": "*/*", "connection": "keep-alive"})
        merged.update(
            {
                "user-agent": "taskloom/0.1",
                "accept-encoding": ACCEPT_ENCODING,
                **self._extra_headers,
                **self._headers(),
                "content-type": "application/json",
            }
        )
        for name in ("content-length", "transfer-encoding"):  # each request sets its length
            merged.pop(name, None)
        if "host" not in merged:
            merged["host"] = self._url.netloc.decode("ascii")
        return merged.raw

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; later calls raise UsageError."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is asyncio.get_running_loop():
            await pool.aclose()

    async def __aenter__(self) -> HTTPExecutor:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None and not getattr(self, "_closed", True):
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

    def _refused(self, refusal: str) -> Refused:
        shown = quote(refusal, self._redactor) or "(no text)"
        return Refused(
            f"{self.provider}: the model refused to answer: {shown}; rephrase the prompt "
            "(retrying the same request gets the same refusal)",
            refusal=self._redactor.scrub(refusal),
        )

    def _translate(self) -> HTTPXBoundary:
        return translate_httpx(
            provider=self.provider, redactor=self._redactor, timeout_s=self._total_timeout_s
        )

    async def _send(self, request: CompletionRequest, *, stream: bool) -> httpx.Response:
        """Send the request and return the open response after checking its status.

        What ``httpx.AsyncClient.send`` would do, without redoing per call what
        is the same for every call of an executor (merging headers and URLs,
        choosing a mount, an auth flow and redirect loop that never act here):
        the request is built from headers merged once and handed to the pool.
        Redirects are not followed (a 3xx is an error, as before); cookies a
        server sets are kept and sent back, as an httpx client does.
        """
        pool = self._get_pool()
        body = json.dumps(
            self._payload(request, self._model_for(request), stream=stream),
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        http_request = httpx.Request(
            "POST",
            self._url,
            headers=[*self._request_headers, (b"Content-Length", b"%d" % len(body))],
            stream=httpx.ByteStream(body),
            extensions={"timeout": self._timeouts},
        )
        if self._cookies:
            self._cookies.set_cookie_header(http_request)
        response = await pool.handle_async_request(http_request)
        response.request = http_request
        if _sets_cookie(response.headers):
            self._cookies.extract_cookies(response)
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line httpx's client logs
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                http_request.method,
                http_request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        if response.status_code // 100 != 2:
            raise await self._status_error(response)
        return response

    async def _status_error(self, response: httpx.Response) -> ExecutorError:
        """The typed error of a non-2xx reply (the body it quotes stays in this frame)."""
        try:
            error_body = await self._read_capped(response, for_error=True)
        finally:
            await response.aclose()
        return error_from_status(
            response.status_code,
            error_body,
            response.headers,
            provider=self.provider,
            redactor=self._redactor,
        )

    async def _read_capped(self, response: httpx.Response, *, for_error: bool = False) -> bytes:
        """The body, refusing to read more than ``max_response_bytes``."""
        limit = min(self._max_bytes, 64 * 1024) if for_error else self._max_bytes
        length = plain_length(response.headers)
        if length is not None and length <= limit:
            return await read_plain(response)
        if length is not None and not for_error:
            raise MalformedResponse(
                f"{self.provider}: the reply is {length} bytes, over the {limit}-byte limit "
                "(max_response_bytes); the server is not answering like an LLM API"
            )
        parts: list[bytes] = []
        size = 0
        chunks = iter_decoded(response)
        async with contextlib.aclosing(chunks):
            async for part in chunks:
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
        with self._translate():
            parsed = await self._fetch(request, limit)
        latency = time.monotonic() - start
        _logger.debug("%s completion in %.3f s", self.provider, latency)
        return CompletionResult(
            text=parsed.text,
            finish_reason=parsed.finish_reason,
            usage=parsed.usage,
            model=parsed.model,
            latency_s=latency,
        )

    async def _fetch(self, request: CompletionRequest, limit: Deadline) -> Parsed:
        """Send, read and parse one reply (its own frame: a failure leaves it, and the
        body it held, behind; see ``HTTPXBoundary``)."""
        with limit:
            response = await self._send(request, stream=False)
            try:
                body = await self._read_capped(response)
            finally:
                await response.aclose()
        return self._parsed(body)

    def _parsed(self, body: bytes) -> Parsed:
        parsed = self._parse(decode_json(body, f"the {self.provider} reply"))
        if parsed.refusal is not None:
            raise self._refused(parsed.refusal)
        return parsed

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
                        parsed = self._parsed(await self._read_capped(response))
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
                said: list[str] = []  # the text so far: a refusal may come at the end
                events = iter_sse(response, deadline=deadline, max_bytes=self._max_bytes)
                async with contextlib.aclosing(events):
                    async for event in events:
                        delta = self._on_event(event, state)
                        if delta:
                            said.append(delta)
                            yield CompletionChunk(delta=delta, index=index)
                            index += 1
                        if state.done:
                            break
                if not state.done and self.finish_ends_stream and state.finish_reason:
                    state.done = True  # complete, only the [DONE] marker is missing
                if not state.done:
                    raise MalformedResponse(
                        f"{self.provider}: the stream was cut off before its end marker; "
                        "the connection broke or the server stopped early: try again"
                    )
                if state.refusal is not None:
                    raise self._refused("".join(state.refusal) or "".join(said))
                yield CompletionChunk(
                    delta="",
                    index=index,
                    finish_reason=state.finish_reason or "other",
                    usage=state.usage,
                )
            finally:
                await response.aclose()
