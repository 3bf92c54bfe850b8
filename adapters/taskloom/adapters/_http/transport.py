"""The HTTP executors' connection pool, per-task deadline and reply size cap.

``pooled_transport`` builds one pool of keep-alive connections, split into
shards by ``ShardedTransport`` when it is large; ``Deadline`` bounds a call's
wall time cheaply enough to re-enter for every streamed chunk; and
``MAX_RESPONSE_BYTES`` with ``plain_length`` lets an executor refuse a reply
that is too large before reading it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, ClassVar

import httpx

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

    Why 4: the scan asks every idle connection whether it expired, and each
    asks anyio for its socket's extra attributes (a dict built per call); with
    shards of 16, a third of the CPU of 1,000 calls at concurrency 100 went
    there, and a call cost twice its sequential CPU. With 4 it is under an
    eighth, and a call at concurrency 100 costs no more than a sequential one
    (``python -m benchmarks --group executors``). Choosing the least busy of
    25 shards is a ``min`` over 25 integers.
    """

    SHARD_SIZE: ClassVar[int] = 4

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
