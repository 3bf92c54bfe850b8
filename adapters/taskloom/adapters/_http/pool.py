"""The executors' connection pool: httpcore's HTTP/1.1 connections, handed out in O(1).

``ConnectionPool`` is an httpx transport holding up to ``max_connections``
keep-alive connections. Each speaks HTTP/1.1 through httpcore's own
``AsyncHTTP11Connection`` (h11, keep-alive expiry, noticing a server that
closed it), on the asyncio sockets of ``network.py``; ``_Connection`` opens
the socket (and TLS) for it. Only the bookkeeping around them is ours, because httpcore's
``AsyncConnectionPool`` re-examines every connection and every queued request
on each request and each close: quadratic in the pool size (1,000 calls at
concurrency 100 took 10 s instead of 0.5 s with one pool of 100), and still
a quarter of a call's CPU when split into pools of 4. Here:

* idle connections wait on a stack per origin; a request takes the most
  recently used one that is still good (not expired, not closed by the
  server), or opens a new one while fewer than ``max_connections`` are open;
* otherwise it waits, first come first served, for a connection to be
  handed to it as it is released (or for its slot, when the released one
  closed), at most the request's ``pool`` timeout (``httpx.PoolTimeout``);
* a connection is released when its response body is closed: back on the
  stack if httpcore left it idle, dropped if it closed it (a body not read to
  the end, a server that said ``connection: close``, an error, a
  cancellation), and the oldest idle connection is dropped once expired.

httpcore's exceptions become httpx's (as httpx's own transport maps them),
so callers see one set of exceptions whatever the transport.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable

import httpcore
import httpx
from httpcore._synchronization import AsyncLock

from taskloom.adapters._http.network import AsyncioBackend
from taskloom.contracts import UsageError

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
"""Every httpcore exception a caller can meet and the httpx one it becomes."""

KEEPALIVE_EXPIRY_S = 5.0
"""How long an idle connection is kept (httpx's default)."""

_Key = tuple[bytes, bytes, int]
"""An origin as a dict key (httpcore's Origin compares equal but does not hash)."""


def as_httpx(exc: Exception) -> Exception:
    """The httpx exception for an httpcore one (anything else is returned as it is)."""
    for cls in type(exc).__mro__:
        target = _HTTPCORE_TO_HTTPX.get(cls)
        if target is not None:
            return target(str(exc))
    return exc


class _Connection:
    """One keep-alive connection: a socket (TLS when https) and httpcore's HTTP/1.1 on it.

    What ``httpcore.AsyncHTTPConnection`` does, minus a lock. httpcore's locks
    are anyio's ``Lock`` on asyncio, which yields to the event loop on every
    acquire even when free: three times per request (the connection's request
    lock, then the HTTP/1.1 state lock when the request starts and when its
    response closes), each a trip of the whole coroutine stack through the
    loop. The pool gives a connection to one request at a time, so these locks
    are never contended: this class needs no request lock, and gives the
    HTTP/1.1 connection an ``asyncio.Lock``, which is as correct (it waits when
    held) and returns at once when free. That is about a tenth of a fan-out
    call's CPU and of its wall time.
    """

    __slots__ = ("_backend", "_failed", "_http", "_keepalive_expiry", "_tls", "key", "origin")

    def __init__(
        self,
        origin: httpcore.Origin,
        key: _Key,
        *,
        tls: Callable[[], ssl.SSLContext],
        keepalive_expiry: float,
        backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        self.origin = origin
        self.key = key
        self._tls = tls
        self._keepalive_expiry = keepalive_expiry
        self._backend = backend
        self._http: httpcore.AsyncHTTP11Connection | None = None
        self._failed = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if self._http is None:
            try:
                stream = await self._connect(request)
            except BaseException:
                self._failed = True
                raise
            http = httpcore.AsyncHTTP11Connection(
                origin=self.origin, stream=stream, keepalive_expiry=self._keepalive_expiry
            )
            if isinstance(getattr(http, "_state_lock", None), AsyncLock):  # else: slower
                http._state_lock = asyncio.Lock()  # type: ignore[assignment]
            self._http = http
        return await self._http.handle_async_request(request)

    async def _connect(self, request: httpcore.Request) -> httpcore.AsyncNetworkStream:
        timeouts = request.extensions.get("timeout") or {}
        timeout = timeouts.get("connect")
        host = self.origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, self.origin.port, timeout)
        if self.origin.scheme != b"https":
            return stream
        try:
            return await stream.start_tls(
                self._tls(),
                server_hostname=request.extensions.get("sni_hostname") or host,
                timeout=timeout,
            )
        except BaseException:
            await stream.aclose()
            raise

    def is_available(self) -> bool:
        """Whether it is connected and idle: ready for a request."""
        return self._http is not None and self._http.is_available()

    def has_expired(self) -> bool:
        """Whether it idled past keep-alive, the server closed it, or it never connected."""
        return self._failed if self._http is None else self._http.has_expired()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class _Body(httpx.AsyncByteStream):
    """A response body on a pooled connection: errors become httpx's, and closing it
    gives the connection back to the pool."""

    __slots__ = ("_connection", "_inner", "_pool")

    def __init__(
        self,
        inner: AsyncIterable[bytes],
        pool: ConnectionPool,
        connection: _Connection,
    ) -> None:
        self._inner = inner
        self._pool: ConnectionPool | None = pool
        self._connection = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            mapped = as_httpx(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        close = getattr(self._inner, "aclose", None)
        try:
            if close is not None:
                await close()  # httpcore leaves the connection idle, or closes it
        except Exception as exc:
            mapped = as_httpx(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            await pool._release(self._connection)


class _Waiter:
    """A request waiting for a connection: what it is handed, and for which origin."""

    __slots__ = ("future", "key")

    def __init__(self, key: _Key, future: asyncio.Future[_Connection | None]):
        self.key = key
        self.future = future


class ConnectionPool(httpx.AsyncBaseTransport):
    """Up to ``max_connections`` keep-alive HTTP/1.1 connections: see the module docstring."""

    def __init__(
        self,
        max_connections: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise UsageError("ConnectionPool: max_connections must be an integer >= 1")
        if max_connections < 1:
            raise UsageError("ConnectionPool: max_connections must be an integer >= 1")
        self._max = max_connections
        self._ssl_context = ssl_context  # made when a first https connection needs one
        self._backend = network_backend or AsyncioBackend()
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots = 0  # connections open or being opened, and slots handed to waiters
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._closed = False
        self._url = ""  # the URL of the last request, and its httpcore form below
        self._target: tuple[httpcore.URL, _Key] | None = None

    @property
    def max_connections(self) -> int:
        """The most connections open at once."""
        return self._max

    @property
    def connections(self) -> tuple[_Connection, ...]:
        """The connections open now, idle or in use (for tests and diagnostics)."""
        return tuple(self._open)

    @property
    def in_use(self) -> int:
        """Connections serving a request now (opened or reserved and not yet released)."""
        return self._slots - sum(len(stack) for stack in self._idle.values())

    def _core_target(self, url: httpx.URL) -> tuple[httpcore.URL, _Key]:
        text = str(url)
        if text != self._url:  # an executor sends every request to one URL
            core = httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            )
            origin = core.origin
            self._target = (core, (origin.scheme, origin.host, origin.port))
            self._url = text
        assert self._target is not None
        return self._target

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url, key = self._core_target(request.url)
        core = httpcore.Request(
            method=request.method,
            url=url,
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        timeouts = request.extensions.get("timeout")
        connection = await self._acquire(key, url, timeouts.get("pool") if timeouts else None)
        try:
            response = await connection.handle_async_request(core)
        except BaseException as exc:
            await self._release(connection)  # httpcore closed it, or left it idle
            if isinstance(exc, Exception):
                mapped = as_httpx(exc)
                if mapped is not exc:
                    raise mapped from exc
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, self, connection),
            extensions=response.extensions,
            request=request,
        )

    # -- the bookkeeping ---------------------------------------------------------------

    async def _acquire(self, key: _Key, url: httpcore.URL, timeout: float | None) -> _Connection:
        """A connection for ``key``: idle and good, new, or handed over by a release."""
        if self._closed:
            raise UsageError("the connection pool is closed")
        stack = self._idle.get(key)
        while stack:
            connection = stack.pop()
            if connection.is_available() and not connection.has_expired():
                return connection
            await self._drop(connection)
            self._slots -= 1
        if self._slots < self._max or await self._evict_other_origin(key):
            self._slots += 1
            return self._new(key, url)
        handed = await self._wait(key, timeout)
        return handed if handed is not None else self._new(key, url)

    def _new(self, key: _Key, url: httpcore.URL) -> _Connection:
        connection = _Connection(
            url.origin,
            key,
            tls=self._tls,
            keepalive_expiry=self._keepalive_expiry,
            backend=self._backend,
        )
        self._open.add(connection)
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # as httpx makes it: SSL_CERT_FILE/DIR, else certifi
            self._ssl_context = httpx.create_ssl_context(trust_env=True)
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def _evict_other_origin(self, key: _Key) -> bool:
        """Close one idle connection to another origin, freeing its slot for ``key``."""
        for other, stack in self._idle.items():
            if other != key and stack:
                await self._drop(stack.pop(0))
                self._slots -= 1
                return True
        return False

    async def _wait(self, key: _Key, timeout: float | None) -> _Connection | None:
        """Wait for a released connection (or, None, for a freed slot)."""
        waiter = _Waiter(key, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except BaseException as exc:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                await self._pass_on(future.result())  # handed over as it was stopped
            else:
                future.cancel()  # releases skip it
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(
                    f"no connection of the {self._max} became free in {timeout:g} s"
                ) from None
            raise

    async def _release(self, connection: _Connection) -> None:
        """Take back ``connection`` after its request: reuse it, or free its slot."""
        if self._closed:
            await self._drop(connection)
        elif connection.is_available():
            await self._pass_on(connection)
        else:
            await self._drop(connection)
            await self._pass_on(None)

    async def _pass_on(self, connection: _Connection | None) -> None:
        """Give an idle connection (or a freed slot, None) to the first waiter, else keep it."""
        if self._closed:
            if connection is not None:
                await self._drop(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue  # it timed out or was cancelled
            if connection is not None and waiter.key != connection.key:
                await self._drop(connection)  # of no use to it: its slot is
                connection = None
            waiter.future.set_result(connection)
            return
        if connection is None:
            self._slots -= 1
            return
        stack = self._idle.setdefault(connection.key, [])
        if stack and stack[0].has_expired():  # the oldest idle one, once it expires
            await self._drop(stack.pop(0))
            self._slots -= 1
        stack.append(connection)

    async def _drop(self, connection: _Connection) -> None:
        self._open.discard(connection)
        with contextlib.suppress(Exception):  # closing a broken socket: nothing to save
            await connection.aclose()

    async def aclose(self) -> None:
        """Close every connection; waiting requests fail with UsageError."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(UsageError("the connection pool was closed"))
        self._idle.clear()
        for connection in list(self._open):
            await self._drop(connection)
        self._slots = 0
