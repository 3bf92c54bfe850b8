"""The HTTP executors' connection pool, per-task deadline and reply size cap.

``pooled_transport`` builds one pool of keep-alive connections, split into
shards of httpcore pools by ``PooledTransport`` (on the asyncio sockets of
``network.py``); ``Deadline`` bounds a call's
wall time cheaply enough to re-enter for every streamed chunk; and
``MAX_RESPONSE_BYTES`` with ``plain_length`` lets an executor refuse a reply
that is too large before reading it.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from typing import Any, ClassVar, Protocol
from urllib.request import getproxies

import httpcore
import httpx

from taskloom.adapters._http.network import AsyncioBackend
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


_HTTPCORE_TO_HTTPX: dict[type[Exception], type[httpx.HTTPError]] = {
    # most specific first: the first class in an exception's MRO that is here wins
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}
"""Every httpcore exception and the httpx one it becomes (as httpx's own transport maps them)."""


def _as_httpx(exc: Exception) -> Exception:
    """The httpx exception for an httpcore one (anything else is returned as it is)."""
    for cls in type(exc).__mro__:
        target = _HTTPCORE_TO_HTTPX.get(cls)
        if target is not None:
            return target(str(exc))
    return exc


class Pool(Protocol):
    """What ``PooledTransport`` needs of one shard: an httpcore connection pool."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on a pooled connection; the response body is still to be read."""

    async def aclose(self) -> None:
        """Close every connection of the pool."""


class _Body(httpx.AsyncByteStream):
    """A response body read from an httpcore pool: errors become httpx's, and closing
    it tells its shard that the connection is free."""

    __slots__ = ("_index", "_inner", "_owner")

    def __init__(self, inner: AsyncIterable[bytes], owner: PooledTransport, index: int) -> None:
        self._inner = inner
        self._owner: PooledTransport | None = owner
        self._index = index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            mapped = _as_httpx(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._busy[self._index] -= 1
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception as exc:
                mapped = _as_httpx(exc)
                if mapped is exc:
                    raise
                raise mapped from exc


class PooledTransport(httpx.AsyncBaseTransport):
    """One pool of keep-alive connections made of several httpcore pools (shards);
    each request goes to the least busy shard.

    Why shards: httpcore 1.0's pool re-scans all its connections for every idle
    one on each request event, which is quadratic in the pool size. With 100
    connections that scan dominates (1,000 calls at concurrency 100 took 10 s
    instead of 0.5 s). Shards of at most ``SHARD_SIZE`` connections keep each
    scan small, while the executor still holds one pool of ``max_connections``
    reused connections. Choosing the least busy of 25 shards is a ``min`` over 25
    integers; a shard counts a request from its send until its body is closed.

    Why not ``httpx.AsyncHTTPTransport`` per shard: this speaks to httpcore
    directly (one request object and one body wrapper per call instead of two
    of each), and ``asyncio_shards`` gives httpcore the asyncio network backend
    of ``network.py`` instead of anyio's. At 1,000 calls 100 at a time, the
    CPU per call fell by half (``python -m benchmarks --group executors``).
    """

    SHARD_SIZE: ClassVar[int] = 4

    def __init__(self, shards: Sequence[Pool]) -> None:
        if not shards:
            raise UsageError("PooledTransport needs at least one shard")
        self._shards = list(shards)
        self._busy = [0] * len(self._shards)
        self._url: httpx.URL | None = None
        self._core_url: httpcore.URL | None = None

    @classmethod
    def asyncio_shards(
        cls, max_connections: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> PooledTransport:
        """``max_connections`` connections in shards of at most ``SHARD_SIZE``, on asyncio."""
        count = -(-max_connections // cls.SHARD_SIZE)
        base, extra = divmod(max_connections, count)
        backend = AsyncioBackend()
        return cls(
            [
                httpcore.AsyncConnectionPool(
                    ssl_context=ssl_context,
                    max_connections=base + (i < extra),
                    max_keepalive_connections=base + (i < extra),
                    network_backend=backend,
                )
                for i in range(count)
            ]
        )

    @property
    def busy(self) -> tuple[int, ...]:
        """Requests open on each shard (for tests and diagnostics)."""
        return tuple(self._busy)

    def _target(self, url: httpx.URL) -> httpcore.URL:
        if url is not self._url:  # an executor sends every request to one URL object
            self._core_url = httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            )
            self._url = url
        assert self._core_url is not None
        return self._core_url

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=self._target(request.url),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(core)
        except BaseException as exc:
            busy[index] -= 1
            if isinstance(exc, Exception):
                mapped = _as_httpx(exc)
                if mapped is not exc:
                    raise mapped from exc
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, self, index),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


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
    return PooledTransport.asyncio_shards(max_connections, ssl_context=ssl_context)


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
