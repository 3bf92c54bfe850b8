"""httpcore's network backend on asyncio protocols: the executors' sockets.

httpcore reads and writes through a "network backend" (its documented
extension point, ``network_backend=``). Its default on asyncio goes through
anyio, which costs a cancel scope and a timer for every read and write and a
dict plus a ``poll`` system call each time the pool asks an idle connection
whether the server closed it. At 1,000 calls 100 at a time that was a third of
the executor's CPU. ``AsyncioBackend`` keeps httpcore (HTTP/1.1 by h11,
keep-alive, its pool) and gives it plain asyncio streams:

* a read waits on one future, with a timer only while it waits;
* a request's head and body, written one after the other by httpcore, leave
  in one system call when httpcore turns to read the response (a write larger
  than ``_COALESCE_BYTES`` goes at once and waits while the socket is full);
* "did the server close this idle connection?" is answered from what the
  protocol already saw (bytes or end of stream), without a system call;
* reading pauses while ``_HIGH_WATER`` bytes wait unread, so a consumer that
  stops reading holds a bounded buffer.

Errors are httpcore's own (``ConnectError``, ``ReadTimeout``...), which
httpcore's pool and our transport already handle.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

_HIGH_WATER = 256 * 1024
"""Unread bytes at which the socket stops being read until the consumer catches up."""
_COALESCE_BYTES = 64 * 1024
"""Largest write held back to leave together with the next one."""
_HAPPY_EYEBALLS_DELAY_S = 0.25
"""Wait before trying the next address of a host (anyio's default, RFC 8305)."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """One connection: an asyncio protocol that is also httpcore's network stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._held: list[bytes] = []
        self._held_size = 0
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _HIGH_WATER and not self._reading_paused:
            assert self._transport is not None
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake(self._reader)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(self._reader)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        self._wake(self._reader)
        self._wake(self._drainer)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(self._drainer)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, waiter: asyncio.Future[None], timeout: float | None) -> None:
        """Wait for ``waiter``; TimeoutError after ``timeout`` seconds (None: no limit)."""
        if timeout is None:
            await waiter
            return
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    # -- httpcore.AsyncNetworkStream -----------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:
            self._flush()
        buffer = self._buffer
        if not buffer and not self._eof and not self._lost:
            waiter = self._reader = self._loop.create_future()
            try:
                await self._wait(waiter, timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no bytes from the server in {timeout:g} s") from None
            finally:
                self._reader = None
        if buffer:
            if len(buffer) <= max_bytes:
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:max_bytes])
                del buffer[:max_bytes]
            if self._reading_paused and len(buffer) <= _HIGH_WATER // 4:
                assert self._transport is not None
                self._reading_paused = False
                self._transport.resume_reading()
            return data
        if self._error is not None:
            raise httpcore.ReadError(f"the connection broke: {self._error}")
        return b""  # the server closed the connection: h11 says what that means here

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._held.append(buffer)
        self._held_size += len(buffer)
        if self._held_size <= _COALESCE_BYTES:
            return  # leaves with the next write, or when httpcore turns to read
        self._flush()
        if not self._writing_paused:
            return
        waiter = self._drainer = self._loop.create_future()
        try:
            await self._wait(waiter, timeout)
        except TimeoutError:
            raise httpcore.WriteTimeout(f"the server took no bytes in {timeout:g} s") from None
        finally:
            self._drainer = None
        if self._lost:
            raise httpcore.WriteError(f"the connection broke: {self._error}")

    def _flush(self) -> None:
        held = self._held
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_size = 0
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def aclose(self) -> None:
        self._held.clear()
        self._held_size = 0
        if self._transport is not None:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        assert self._transport is not None
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout(f"the TLS handshake took over {timeout:g} s") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(f"the TLS handshake failed: {exc}") from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # the pool asks idle connections: did the server close?
            return bool(self._buffer) or self._eof or self._lost
        transport = self._transport
        if transport is None:
            return None
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


def _set_options(stream: AsyncioStream, options: Iterable[SocketOption] | None) -> None:
    sock: socket.socket | None = stream.get_extra_info("socket")
    for option in options or ():
        assert sock is not None
        sock.setsockopt(*option)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio: see the module docstring."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = AsyncioStream(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: stream,
                    host,
                    port,
                    local_addr=None if local_address is None else (local_address, 0),
                    happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY_S,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting took over {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _set_options(stream, socket_options)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = AsyncioStream(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_unix_connection(lambda: stream, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting took over {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _set_options(stream, socket_options)
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
