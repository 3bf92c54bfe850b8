"""The commit journal: a commit's whole effect, written down before any of it is applied.

A ``commit`` touches several files (records in several directories, stream
segments); no filesystem renames several files at once. So the writer first
computes the commit's complete effect (the bytes of every record file it
writes, every key it deletes, every stream entry with its sequence number),
writes that as one checksummed journal file with an atomic rename, and only
then applies it. Every step of applying is idempotent: writing a record file
with given bytes, deleting a key, appending the entries a stream does not yet
have. So whoever takes the exclusive lock next and finds a journal rolls it
forward; a crash at any moment leaves the commit fully applied or not at all.

Format::

    magic "TLJ1" | crc32 u32 | body length u64 | body

The body is a sequence of length-prefixed fields; the CRC covers the body.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import attrs

MAGIC = b"TLJ1"
_HEAD = struct.Struct("<4sIQ")
_U32 = struct.Struct("<I")
_ENTRY = struct.Struct("<Qd")
_WRITE, _DELETE, _APPEND = b"W", b"D", b"A"


@attrs.frozen(kw_only=True)
class RecordChange:
    """Make the record at (namespace, key) hold ``data`` (a record file), or delete it if None."""

    namespace: str
    key: str
    data: bytes | None


@attrs.frozen(kw_only=True)
class EntryChange:
    """Stream ``stream`` must hold this entry at ``seq``."""

    stream: str
    seq: int
    appended_at: float
    payload: bytes


@attrs.frozen(kw_only=True)
class Intent:
    """Everything one commit changes, in order."""

    records: tuple[RecordChange, ...] = ()
    entries: tuple[EntryChange, ...] = ()


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def pack(intent: Intent) -> bytes:
    """Return the journal file's bytes for ``intent``."""
    parts: list[bytes] = []
    for change in intent.records:
        parts.append(_WRITE if change.data is not None else _DELETE)
        parts.append(_field(change.namespace.encode("utf-8")))
        parts.append(_field(change.key.encode("utf-8")))
        if change.data is not None:
            parts.append(_field(change.data))
    for entry in intent.entries:
        parts.append(_APPEND)
        parts.append(_field(entry.stream.encode("utf-8")))
        parts.append(_ENTRY.pack(entry.seq, entry.appended_at))
        parts.append(_field(entry.payload))
    body = b"".join(parts)
    return _HEAD.pack(MAGIC, zlib.crc32(body), len(body)) + body


class _Reader:
    def __init__(self, body: bytes) -> None:
        self._body = body
        self._offset = 0

    def done(self) -> bool:
        return self._offset >= len(self._body)

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._body):
            raise ValueError("journal body ends early")
        chunk = self._body[self._offset : end]
        self._offset = end
        return chunk

    def field(self) -> bytes:
        (size,) = _U32.unpack(self.take(_U32.size))
        return self.take(size)

    def text(self) -> str:
        return self.field().decode("utf-8")


def unpack(data: bytes) -> Intent:
    """Parse a journal file; raise ValueError if it is incomplete or damaged."""
    if len(data) < _HEAD.size:
        raise ValueError("journal is shorter than its header")
    magic, crc, length = _HEAD.unpack_from(data)
    body = data[_HEAD.size :]
    if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
        raise ValueError("journal header or checksum does not match")
    reader = _Reader(body)
    records: list[RecordChange] = []
    entries: list[EntryChange] = []
    for kind in _kinds(reader):
        if kind == _APPEND:
            stream = reader.text()
            seq, at = _ENTRY.unpack(reader.take(_ENTRY.size))
            entries.append(
                EntryChange(stream=stream, seq=seq, appended_at=at, payload=reader.field())
            )
        elif kind in (_WRITE, _DELETE):
            namespace, key = reader.text(), reader.text()
            payload = reader.field() if kind == _WRITE else None
            records.append(RecordChange(namespace=namespace, key=key, data=payload))
        else:
            raise ValueError(f"unknown journal operation {kind!r}")
    return Intent(records=tuple(records), entries=tuple(entries))


def _kinds(reader: _Reader) -> Iterator[bytes]:
    while not reader.done():
        yield reader.take(1)
