"""The on-disk format of one record file, and reading it back.

A record file is a fixed header followed by the value::

    magic "TLR1" | crc32 | version u64 | updated_at f64 | expires_at f64 | length u32 | value

``expires_at`` is NaN when the record has no TTL. The CRC-32 covers everything
after itself, so a damaged file (a flipped bit, a truncated copy) is reported
as ``StorageCorrupted`` naming the file instead of returning wrong data.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import attrs

from taskloom.contracts import StorageCorrupted

MAGIC = b"TLR1"
HEADER = struct.Struct("<4sIQddI")


@attrs.frozen(kw_only=True)
class RecordHead:
    """What a writer needs to know about a stored record: its version and expiry."""

    version: int
    updated_at: float
    expires_at: float | None

    def alive(self, now: float) -> bool:
        """True unless the record's TTL has passed at ``now``."""
        return self.expires_at is None or now < self.expires_at


def pack(version: int, updated_at: float, expires_at: float | None, value: bytes) -> bytes:
    """Return the bytes of a record file."""
    expiry = math.nan if expires_at is None else expires_at
    body = HEADER.pack(MAGIC, 0, version, updated_at, expiry, len(value))[8:] + value
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def unpack(data: bytes, path: Path) -> tuple[RecordHead, bytes]:
    """Parse a whole record file; raise ``StorageCorrupted`` naming ``path`` if it is damaged."""
    if len(data) < HEADER.size:
        raise _corrupted(path, f"it is {len(data)} bytes, shorter than a record header")
    magic, crc, version, updated_at, expiry, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _corrupted(path, "it does not start with the record magic")
    if len(data) != HEADER.size + length:
        raise _corrupted(path, f"it holds {len(data) - HEADER.size} value bytes, not {length}")
    if zlib.crc32(memoryview(data)[8:]) != crc:
        raise _corrupted(path, "its checksum does not match")
    if version < 1:
        raise _corrupted(path, f"its version is {version}")
    head = RecordHead(
        version=version,
        updated_at=updated_at,
        expires_at=None if math.isnan(expiry) else expiry,
    )
    return head, data[HEADER.size :]


def read(path: Path) -> tuple[RecordHead, bytes] | None:
    """Read and check the record file at ``path``; None if there is none."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _corrupted(path, "it is a directory") from None
    return unpack(data, path)


def read_head(path: Path) -> RecordHead | None:
    """Read only the header of the record at ``path`` (None if absent).

    Writers need the version, not the value: reading 4 MiB to learn it would
    be waste. The value's checksum is verified by every full read instead.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, HEADER.size, 0)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if len(data) < HEADER.size:
        raise _corrupted(path, f"it is {len(data)} bytes, shorter than a record header")
    magic, _crc, version, updated_at, expiry, length = HEADER.unpack_from(data)
    if magic != MAGIC or size != HEADER.size + length or version < 1:
        raise _corrupted(path, "its header is damaged")
    return RecordHead(
        version=version,
        updated_at=updated_at,
        expires_at=None if math.isnan(expiry) else expiry,
    )


def _corrupted(path: Path, why: str) -> StorageCorrupted:
    return StorageCorrupted(
        f"record file {path} is damaged ({why}); restore it from a backup or delete it",
        path=str(path),
    )
