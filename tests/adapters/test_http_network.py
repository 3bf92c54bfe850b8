"""The executors' own HTTP plumbing below httpx: the asyncio network backend, the pool
transport, and what ``httpx.AsyncClient`` used to do for them (merged headers,
cookies, proxies from the environment, TLS trust from ``SSL_CERT_FILE``).

Units drive ``AsyncioStream`` with a fake asyncio transport; the rest runs
against in-process servers on 127.0.0.1 over real sockets.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from taskloom.adapters._http import pool as pool_module
from taskloom.adapters._http.network import AsyncioBackend, AsyncioStream
from taskloom.adapters._http.pool import ConnectionPool
from taskloom.adapters.openai import OpenAIExecutor
from taskloom.contracts import (
    NETWORK_GUARD,
    CompletionRequest,
    ExecutorTimeout,
    Message,
    ProviderUnavailable,
    Secret,
    UsageError,
)

KEY = "sk-network-test-7d1e"
REQUEST = CompletionRequest(messages=(Message(role="user", content="hi"),), model="m")
REPLY = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
).encode()


# --- AsyncioStream against a fake asyncio transport ----------------------------------------


class FakeTransport(asyncio.Transport):
    """Records writes and reading pauses; never touches a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.paused = False
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _stream() -> tuple[AsyncioStream, FakeTransport]:
    stream = AsyncioStream(asyncio.get_running_loop())
    fake = FakeTransport()
    stream.connection_made(fake)
    return stream, fake


async def test_head_and_body_leave_in_one_write() -> None:
    """httpcore writes a request's head and body apart; they reach the socket as one write."""
    stream, fake = _stream()
    await stream.write(b"POST / HTTP/1.1\r\n\r\n")
    await stream.write(b"{}")
    assert fake.writes == []
    stream.data_received(b"HTTP/1.1 200 OK\r\n")
    assert await stream.read(65536, timeout=1.0) == b"HTTP/1.1 200 OK\r\n"
    assert fake.writes == [b"POST / HTTP/1.1\r\n\r\n{}"]


async def test_a_large_write_is_not_held_back() -> None:
    """A body over 64 KiB goes to the socket at once, with what was held before it."""
    stream, fake = _stream()
    await stream.write(b"head")
    await stream.write(b"x" * 70_000)
    assert fake.writes == [b"head" + b"x" * 70_000]


async def test_reading_pauses_at_the_high_water_mark_and_resumes() -> None:
    """Unread bytes past 256 KiB pause the socket; reading them down resumes it."""
    stream, fake = _stream()
    for _ in range(5):
        stream.data_received(b"y" * 65536)
    assert fake.paused
    assert stream.get_extra_info("is_readable")
    while fake.paused:
        assert await stream.read(65536, timeout=1.0)
    assert not fake.paused


async def test_read_timeout_is_httpcore_read_timeout() -> None:
    """A read that waits longer than its timeout raises httpcore.ReadTimeout, leaving no timer."""
    stream, _ = _stream()
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(100, timeout=0.01)
    stream.data_received(b"late")
    assert await stream.read(100, timeout=0.01) == b"late"


async def test_end_of_stream_and_broken_connection() -> None:
    """EOF reads as b"" (h11 decides what it means); a connection lost with an error is
    ReadError; a write on a closed connection is WriteError."""
    stream, _ = _stream()
    stream.data_received(b"tail")
    stream.eof_received()
    assert await stream.read(100) == b"tail"
    assert await stream.read(100) == b""
    broken, fake = _stream()
    broken.connection_lost(ConnectionResetError("reset by peer"))
    with pytest.raises(httpcore.ReadError, match="reset by peer"):
        await broken.read(100)
    fake.closed = True
    with pytest.raises(httpcore.WriteError):
        await broken.write(b"x")


async def test_idle_state_is_read_without_a_system_call() -> None:
    """is_readable (the pool's "did the server close it?") follows bytes, EOF and loss."""
    stream, _ = _stream()
    assert stream.get_extra_info("is_readable") is False
    stream.eof_received()
    assert stream.get_extra_info("is_readable") is True
    assert stream.get_extra_info("unknown") is None


def test_every_httpcore_error_becomes_the_httpx_error_of_its_name() -> None:
    """The pool maps each httpcore exception class to httpx's class of the same name."""
    classes = [
        getattr(httpcore, name)
        for name in httpcore.__all__
        if isinstance(getattr(httpcore, name), type)
        and issubclass(getattr(httpcore, name), Exception)
        # raised by a connection and handled inside httpcore's own pool, never beyond it
        and name != "ConnectionNotAvailable"
    ]
    assert len(classes) >= 14
    for cls in classes:
        mapped = pool_module.as_httpx(cls("boom"))
        assert type(mapped) is getattr(httpx, cls.__name__)
        assert str(mapped) == "boom"
    other = ValueError("x")
    assert pool_module.as_httpx(other) is other


# --- in-process servers ---------------------------------------------------------------------


class Server:
    """An HTTP/1.1 server answering every request with REPLY; records what it saw."""

    def __init__(
        self, *, close_after_reply: bool = False, silent: bool = False, delay_s: float = 0.0
    ) -> None:
        self.close_after_reply = close_after_reply
        self.silent = silent
        self.delay_s = delay_s
        self.in_flight = 0
        self.most_in_flight = 0
        self.heads: list[bytes] = []
        self.connections = 0
        self.url = ""
        self.cookie_to_set: str | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if self.silent:
                    await asyncio.sleep(3600)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                await asyncio.sleep(self.delay_s)
                self.in_flight -= 1
                cookie = f"set-cookie: {self.cookie_to_set}\r\n" if self.cookie_to_set else ""
                writer.write(
                    f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{cookie}"
                    f"content-length: {len(REPLY)}\r\n\r\n".encode()
                    + REPLY
                )
                await writer.drain()
                if self.close_after_reply:  # no "connection: close": the client must notice
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Start = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(*, tls: ssl.SSLContext | None = None, **options: Any) -> Server:
        server = Server(**options)
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
        servers.append(listening)
        port = listening.sockets[0].getsockname()[1]
        server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"
        return server

    yield start
    for listening in servers:
        listening.close()
        await listening.wait_closed()


def _executor(url: str, **kwargs: Any) -> OpenAIExecutor:
    return OpenAIExecutor(base_url=url, api_key=Secret(KEY), **kwargs)


async def test_keep_alive_reuses_one_connection(serve: Start) -> None:
    """Five calls in a row travel on one kept-alive connection."""
    server = await serve()
    async with _executor(server.url) as ex:
        for _ in range(5):
            assert (await ex.complete(REQUEST)).text == "hi"
    assert server.connections == 1 and len(server.heads) == 5


async def test_a_connection_the_server_closed_is_not_reused(serve: Start) -> None:
    """A server that closes each connection after replying (without saying so) costs no
    failed call: the pool sees the end of stream and opens a new connection."""
    server = await serve(close_after_reply=True)
    async with _executor(server.url) as ex:
        for _ in range(4):
            assert (await ex.complete(REQUEST)).text == "hi"
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection idles
    assert server.connections == 4


async def test_read_timeout_over_real_sockets(serve: Start) -> None:
    """A server that never answers gives ExecutorTimeout after read_timeout_s."""
    server = await serve(silent=True)
    async with _executor(server.url, read_timeout_s=0.2) as ex:
        with pytest.raises(ExecutorTimeout, match="read timeout"):
            await ex.complete(REQUEST)


async def test_refused_connection_is_provider_unavailable() -> None:
    """Nothing listening on the port: ProviderUnavailable (retryable), never an httpcore error."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with _executor(f"http://127.0.0.1:{port}/v1") as ex:
        with pytest.raises(ProviderUnavailable, match="could not connect") as caught:
            await ex.complete(REQUEST)
    assert caught.value.retryable


async def test_headers_are_merged_as_an_httpx_client_merges_them(serve: Start) -> None:
    """One of each header, later sources winning without regard to case; Host and length
    are right, and Host follows a re-pointed URL."""
    server = await serve()
    extra = {"Accept": "application/json", "X-Team": "blue"}
    async with _executor(server.url, headers=extra) as ex:
        await ex.complete(REQUEST)
        other = await serve()
        ex._url = httpx.URL(other.url + "/chat/completions")
        await ex.complete(REQUEST)
    lines = server.heads[0].decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(": ")
            fields.setdefault(name.lower(), []).append(value)
    port = server.url.split(":")[2].split("/")[0]
    assert fields == {
        "host": [f"127.0.0.1:{port}"],
        "accept": ["application/json"],
        "connection": ["keep-alive"],
        "user-agent": ["taskloom/0.1"],
        "accept-encoding": ["gzip, deflate"],
        "x-team": ["blue"],
        "authorization": [f"Bearer {KEY}"],
        "content-type": ["application/json"],
        "content-length": [fields["content-length"][0]],
    }
    assert int(fields["content-length"][0]) > 10
    other_port = other.url.split(":")[2].split("/")[0]
    assert f"\r\nHost: 127.0.0.1:{other_port}\r\n".lower() in other.heads[0].decode().lower()


async def test_cookies_set_by_the_server_are_sent_back(serve: Start) -> None:
    """A cookie a server sets (a gateway's session, say) rides on the next calls."""
    server = await serve()
    server.cookie_to_set = "gw=abc; Path=/"
    async with _executor(server.url) as ex:
        await ex.complete(REQUEST)
        server.cookie_to_set = None
        await ex.complete(REQUEST)
    assert b"cookie:" not in server.heads[0].lower()
    assert b"\r\ncookie: gw=abc\r\n" in server.heads[1].lower()


# --- the pool -------------------------------------------------------------------------------


def _request(url: str, pool_timeout: float = 5.0) -> httpx.Request:
    body = json.dumps({"model": "m", "messages": []}).encode()
    timeouts = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": pool_timeout}
    return httpx.Request(
        "POST",
        url + "/chat/completions",
        headers={"content-type": "application/json"},
        content=body,
        extensions={"timeout": timeouts},
    )


async def test_calls_beyond_max_connections_wait_for_a_free_one(serve: Start) -> None:
    """Twelve calls at once on a pool of 3: never more than 3 connections, all answered,
    and every connection is back in the pool afterwards."""
    server = await serve(delay_s=0.05)
    async with _executor(server.url, max_connections=3) as ex:
        results = await asyncio.gather(*(ex.complete(REQUEST) for _ in range(12)))
        pool: Any = ex._get_pool()._inner  # type: ignore[attr-defined]
        assert pool.in_use == 0 and len(pool.connections) == 3
    assert [r.text for r in results] == ["hi"] * 12
    assert server.connections == 3 and server.most_in_flight == 3


async def test_pool_timeout_when_no_connection_comes_free(serve: Start) -> None:
    """A request that waits longer than its pool timeout raises httpx.PoolTimeout, and a
    later request gets the connection once it is released."""
    server = await serve()
    pool = ConnectionPool(1)
    try:
        held = await pool.handle_async_request(_request(server.url))
        with pytest.raises(httpx.PoolTimeout, match="1 became free"):
            await pool.handle_async_request(_request(server.url, pool_timeout=0.05))
        await held.aread()  # read to the end, then closed: the connection is free again
        second = await pool.handle_async_request(_request(server.url, pool_timeout=0.05))
        assert json.loads(await second.aread())["model"] == "m"
        await second.aclose()
    finally:
        await pool.aclose()
    assert server.connections == 1


async def test_a_connection_handed_to_a_cancelled_waiter_goes_to_the_next(serve: Start) -> None:
    """When the waiter a released connection was handed to is cancelled before it runs,
    the connection passes to the next waiter instead of being lost."""
    server = await serve()
    pool = ConnectionPool(1)
    try:
        held = await pool.handle_async_request(_request(server.url))
        first = asyncio.create_task(pool.handle_async_request(_request(server.url)))
        second = asyncio.create_task(pool.handle_async_request(_request(server.url)))
        await asyncio.sleep(0.02)  # both wait
        await held.aread()  # read and closed: hands the connection to the first waiter...
        first.cancel()  # ...which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await first
        response = await asyncio.wait_for(second, 5.0)
        await response.aread()
        await response.aclose()
        assert pool.in_use == 0 and len(pool.connections) == 1
    finally:
        await pool.aclose()
    assert server.connections == 1


async def test_another_origin_takes_the_slot_of_an_idle_connection(serve: Start) -> None:
    """A full pool whose idle connection belongs to another server closes it to open one
    to the new server, instead of waiting for nothing."""
    one, two = await serve(), await serve()
    pool = ConnectionPool(1)
    try:
        for server in (one, two, one):
            response = await pool.handle_async_request(_request(server.url, pool_timeout=0.2))
            await response.aread()
            await response.aclose()
            assert len(pool.connections) == 1
    finally:
        await pool.aclose()
    assert (one.connections, two.connections) == (2, 1)


async def test_connections_use_a_lock_that_does_not_yield_when_free(serve: Start) -> None:
    """Each pooled connection's HTTP/1.1 state lock is an asyncio.Lock, not httpcore's (anyio's
    Lock yields to the event loop on every acquire), and the attribute replaced is the one
    this httpcore uses."""
    from httpcore._synchronization import AsyncLock

    fresh = httpcore.AsyncHTTP11Connection(
        origin=httpcore.Origin(b"http", b"x", 80), stream=AsyncioStream(asyncio.get_running_loop())
    )
    assert isinstance(fresh._state_lock, AsyncLock)
    server = await serve()
    async with _executor(server.url) as ex:
        await ex.complete(REQUEST)
        await ex.complete(REQUEST)
        pool: Any = ex._get_pool()._inner  # type: ignore[attr-defined]
        (connection,) = pool.connections
        assert isinstance(connection._http._state_lock, asyncio.Lock)
        assert not connection._http._state_lock.locked()


async def test_a_closed_pool_refuses_and_fails_its_waiters(serve: Start) -> None:
    """Closing the pool closes its connections, fails waiting requests with UsageError, and
    refuses new ones."""
    server = await serve()
    pool = ConnectionPool(1)
    held = await pool.handle_async_request(_request(server.url))
    waiting = asyncio.create_task(pool.handle_async_request(_request(server.url)))
    await asyncio.sleep(0.02)
    await pool.aclose()
    with pytest.raises(UsageError, match="closed"):
        await waiting
    with pytest.raises(UsageError, match="closed"):
        await pool.handle_async_request(_request(server.url))
    await held.aclose()
    assert pool.connections == ()


# --- proxies and TLS from the environment ------------------------------------------------------

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_a_proxy_from_the_environment_is_used_and_checked(
    serve: Start, no_proxies: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY sends calls through the proxy, and the network-grant check still sees
    every request (it was skipped for proxied calls when an httpx client chose the proxy)."""
    proxy = await serve()
    no_proxies.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
    checked: list[str] = []
    token = NETWORK_GUARD.set(checked.append)
    try:
        async with _executor("http://llm.proxied.invalid/v1") as ex:
            assert (await ex.complete(REQUEST)).text == "hi"
    finally:
        NETWORK_GUARD.reset(token)
    assert proxy.heads[0].startswith(b"POST http://llm.proxied.invalid/v1/chat/completions ")
    assert checked == ["http://llm.proxied.invalid/v1/chat/completions"]


async def test_no_proxy_goes_direct(serve: Start, no_proxies: pytest.MonkeyPatch) -> None:
    """NO_PROXY naming the host bypasses a proxy that would refuse every connection."""
    server = await serve()
    no_proxies.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    no_proxies.setenv("NO_PROXY", "127.0.0.1")
    async with _executor(server.url) as ex:
        assert (await ex.complete(REQUEST)).text == "hi"
        assert isinstance(ex._get_pool()._inner, ConnectionPool)  # type: ignore[attr-defined]


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "taskloom test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_https_trusts_ssl_cert_file_and_refuses_an_unknown_ca(
    serve: Start, no_proxies: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Over TLS the executor works when SSL_CERT_FILE names the server's CA, and refuses the
    server (ProviderUnavailable, nothing sent) when it trusts only the usual roots."""
    ca, cert, key = _certificates(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = await serve(tls=tls)
    no_proxies.delenv("SSL_CERT_DIR", raising=False)
    no_proxies.setenv("SSL_CERT_FILE", str(ca))
    async with _executor(server.url) as ex:
        assert (await ex.complete(REQUEST)).text == "hi"
        assert (await ex.complete(REQUEST)).text == "hi"
    assert server.connections == 1 and len(server.heads) == 2
    no_proxies.delenv("SSL_CERT_FILE")
    async with _executor(server.url) as ex:
        with pytest.raises(ProviderUnavailable, match="could not connect"):
            await ex.complete(REQUEST)
    assert len(server.heads) == 2


async def test_backend_connects_with_socket_options() -> None:
    """connect_tcp applies httpcore's socket options to the new socket."""
    import socket

    listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        option = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, 1.0, None, [option])
        sock = stream.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert stream.get_extra_info("server_addr")[1] == port
        await stream.aclose()
    finally:
        listening.close()
        await listening.wait_closed()
