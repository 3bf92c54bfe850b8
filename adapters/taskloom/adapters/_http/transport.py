"""The HTTP executors' connection pool, per-task deadline and reply size cap.

``pooled_transport`` builds the executor's pool of keep-alive connections
(``pool.ConnectionPool``, or httpx's transport through a proxy the environment
names) and ``CheckedTransport`` checks each request against the network
grants; ``Deadline`` bounds a call's wall time cheaply enough to re-enter for
every streamed chunk; ``MAX_RESPONSE_BYTES`` with ``plain_length`` lets an
executor refuse a reply that is too large before reading it, and
``read_plain`` / ``iter_decoded`` read a body within that cap.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator
from typing import Any
from urllib.request import getproxies

import httpx

from taskloom.adapters._http.pool import ConnectionPool
from taskloom.contracts import MalformedResponse, UsageError, check_network

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Largest reply body (and largest single SSE line or event) an executor reads."""


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


class CheckedTransport(httpx.AsyncBaseTransport):
    """Checks every request's URL with ``taskloom.contracts.check_network`` before it is
    sent: a plugin's executor reaches only the hosts its manifest declared, whatever
    its base URL says by then (a re-pointed URL, a wrapper around the executor)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check_network(str(request.url))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def pooled_transport(max_connections: int, url: httpx.URL) -> httpx.AsyncBaseTransport:
    """The transport an executor uses for ``url`` when it was given none.

    ``max_connections`` pooled keep-alive connections on asyncio, or, when the
    environment names a proxy for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``... and
    ``NO_PROXY``, read by httpx exactly as an ``httpx.AsyncClient`` reads them),
    httpx's own transport through that proxy. TLS verification trusts
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, as httpx does.
    """
    if getproxies():  # where httpx reads proxies from; empty in most environments
        # httpx keeps its proxy rules (patterns, NO_PROXY, all://) inside the client:
        # ask a client configured from the environment which transport it would use
        router = httpx.AsyncClient(trust_env=True)
        chosen = router._transport_for_url(url)
        if chosen is not router._transport:
            return chosen
    ssl_context = httpx.create_ssl_context(trust_env=True) if url.scheme == "https" else None
    return ConnectionPool(max_connections, ssl_context=ssl_context)


def plain_length(headers: httpx.Headers) -> int | None:
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


async def read_plain(response: httpx.Response) -> bytes:
    """The whole body of a reply that is not compressed and whose length was checked.

    Reads the transport's stream itself: ``Response.aread`` passes each chunk
    through httpx's decoder and chunker layers, which change nothing here.
    """
    stream = response.stream
    if response.is_stream_consumed or not isinstance(stream, httpx.AsyncByteStream):
        return await response.aread()  # a mock's body, read when it was built
    parts = [part async for part in stream]
    return parts[0] if len(parts) == 1 else b"".join(parts)


ACCEPT_ENCODING = "gzip, deflate"
"""What the executors accept: the encodings ``iter_decoded`` decompresses itself."""

_STEP = 64 * 1024
"""Most bytes one decompression step may produce: a gzip bomb grows memory by this
much at a time, and reading stops as soon as the caller's cap is passed."""


def _decompressor(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    return zlib.decompressobj()  # deflate: zlib-wrapped; raw deflate is tried on error


async def iter_decoded(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body of ``response``, decompressed in steps of at most 64 KiB.

    httpx decompresses each received chunk whole, so a few kilobytes of gzip can
    become gigabytes in memory before a size cap is checked. Here gzip and
    deflate are decompressed with ``max_length``, so a caller that stops at its
    cap holds at most the cap plus one step. Other encodings (a server ignoring
    ``Accept-Encoding``) fall back to httpx's decoders.
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if response.is_stream_consumed:  # the body was read already (a mock): it is in memory
        async for part in response.aiter_bytes():
            yield part
        return
    if encoding in ("", "identity"):
        async for part in response.aiter_raw():
            yield part
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        async for part in response.aiter_bytes():
            yield part
        return
    decoder = _decompressor(encoding)
    first = True
    try:
        async for raw in response.aiter_raw():
            if first and encoding == "deflate":
                try:
                    out = decoder.decompress(raw, _STEP)
                except zlib.error:  # raw deflate without the zlib wrapper, as some send
                    decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                    out = decoder.decompress(raw, _STEP)
            else:
                out = decoder.decompress(raw, _STEP)
            first = False
            if out:
                yield out
            while decoder.unconsumed_tail:
                out = decoder.decompress(decoder.unconsumed_tail, _STEP)
                if out:
                    yield out
        rest = decoder.flush()
    except zlib.error as exc:
        raise MalformedResponse(
            f"the reply's {encoding} encoding is broken ({exc}); the server sent damaged "
            "data: try again"
        ) from None
    if rest:
        yield rest
