"""Server-sent events: an incremental ``text/event-stream`` decoder and the loop that feeds it.

The decoder notices a stream that stops in the middle of a line or an event,
and caps the size of one event, so a cut connection or a misbehaving server
surfaces as MalformedResponse instead of a silently truncated reply.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator

import httpx

from taskloom.adapters._http.transport import MAX_RESPONSE_BYTES, Deadline, iter_decoded
from taskloom.contracts import MalformedResponse


class ServerSentEvent:
    """One dispatched event: its ``event`` name (``message`` by default) and ``data``."""

    __slots__ = ("data", "event")

    def __init__(self, event: str, data: str) -> None:
        self.event = event
        self.data = data

    def __repr__(self) -> str:
        # the data is not shown: a traceback with locals must not print what a server
        # sent (it may quote a key); its size says enough to debug with
        return f"ServerSentEvent(event={self.event!r}, data=<{len(self.data)} characters>)"


class SSEDecoder:
    """Incremental decoder of ``text/event-stream`` (the WHATWG rules).

    Lines end in CR LF, LF or CR (a CR at the end of one chunk waits for the
    next, so a split CR LF is one line end). ``finish()`` raises when the bytes
    did not end cleanly: a partial line or an event without its blank line
    means the stream was cut off. One event (with its partial line) may not
    exceed ``max_bytes`` characters, so a server cannot make us buffer forever.

    Linear in the size of an event: the pieces of a line still open are kept in
    a list and joined once, when a line end arrives (joining them on every chunk
    made one 16 MiB event cost seconds of CPU before it was refused).
    """

    __slots__ = (
        "_buffer",
        "_data",
        "_data_size",
        "_decoder",
        "_event",
        "_max_bytes",
        "_pending",
        "_pending_size",
    )

    def __init__(self, *, max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._buffer = ""
        self._pending: list[str] = []
        self._pending_size = 0
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._max_bytes = max_bytes

    def _check_size(self) -> None:
        if self._data_size + len(self._buffer) + self._pending_size > self._max_bytes:
            raise MalformedResponse(
                f"one server-sent event is larger than {self._max_bytes} characters; "
                "the server is sending something other than an LLM stream"
            )

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``."""
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise MalformedResponse("the event stream is not valid UTF-8") from exc
        if "\n" not in text and "\r" not in text and not self._buffer.endswith("\r"):
            # no line ends here: keep the piece, join later
            if text:
                self._pending.append(text)
                self._pending_size += len(text)
                self._check_size()
            return []
        if self._pending:
            text = "".join(self._pending) + text
            self._pending = []
            self._pending_size = 0
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
        self._check_size()
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
        if self._pending:
            self._buffer += "".join(self._pending)
            self._pending = []
            self._pending_size = 0
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
    chunks = iter_decoded(response)
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
