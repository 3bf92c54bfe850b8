"""Streams as append-only segment files, each entry framed and checksummed.

A stream is a directory of segment files named after the sequence number of
their first entry (``00000000000000000001.seg``). A segment starts with an
8-byte magic, then entries::

    crc32 u32 | length u32 | seq u64 | appended_at f64 | payload

The CRC-32 covers everything after itself. An append is one ``pwrite`` at the
end of the last valid entry, then ``fsync``. A crash in between leaves a torn
entry at the tail: readers stop at the first entry that is short, fails its
checksum or has the wrong sequence number, so it is never returned, and the
next writer truncates it before appending, so numbering stays gapless. A bad
entry anywhere but the tail of the last segment cannot come from a crash and
is reported as ``StorageCorrupted``: that includes a bad entry followed by an
intact later one in the same segment (a crash only ever tears the end), so
neither a reader nor a writer ever skips or truncates acknowledged entries.
A damaged *last* entry with nothing valid after it cannot be told apart from a
torn write; it is treated as one. When the last segment reaches the size
limit the next entry starts a new segment, created whole by a rename.
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from taskloom.adapters.filesystem._io import Disk, write_all
from taskloom.contracts import MAX_VALUE_BYTES, StorageCorrupted, StreamEntry

SEGMENT_MAGIC = b"TLSEG\x00\x00\x01"
ENTRY = struct.Struct("<IIQd")
_SUFFIX = ".seg"
_DIGITS = 20


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first entry is ``first_seq``."""
    return f"{first_seq:0{_DIGITS}d}{_SUFFIX}"


def pack_entry(seq: int, appended_at: float, payload: bytes) -> bytes:
    """Return the framed bytes of one entry."""
    body = ENTRY.pack(0, len(payload), seq, appended_at)[4:] + payload
    return struct.pack("<I", zlib.crc32(body)) + body


@attrs.frozen(kw_only=True)
class Tail:
    """Where a stream ends: its last segment, that segment's valid length, the last seq."""

    first_seq: int
    path: Path
    end: int
    last_seq: int
    stamp: tuple[int, int]
    """(inode, mtime in ns) of the segment as last seen: a stream dropped and written
    again by another process has new files, so its tail is looked up afresh."""


@attrs.frozen(kw_only=True)
class _Parsed:
    entries: list[tuple[int, float, bytes]]
    valid_end: int
    next_seq: int
    torn: bool
    damaged: bool = False
    """An invalid entry is followed by a valid later one: damage, not a torn tail."""


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The stream's segments as (first seq, path), in order; [] if the stream is empty."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    segments: list[tuple[int, Path]] = []
    for name in names:
        if name.startswith("."):
            continue
        digits = name[: -len(_SUFFIX)]
        if not (name.endswith(_SUFFIX) and len(digits) == _DIGITS and digits.isdigit()):
            raise StorageCorrupted(
                f"stream directory {directory} holds {name!r}, which taskloom did not write: "
                "move it out of the storage root",
                path=str(directory / name),
            )
        segments.append((int(digits), directory / name))
    segments.sort()
    return segments


def _parse(
    data: bytes, first_seq: int, *, after: int = 0, limit: int | None = None, keep: bool = True
) -> _Parsed:
    """Walk the entries of one segment's bytes, stopping at the first invalid one."""
    entries: list[tuple[int, float, bytes]] = []
    offset = len(SEGMENT_MAGIC)
    seq = first_seq
    view = memoryview(data)
    size = len(data)
    while offset < size:
        if limit is not None and len(entries) >= limit:
            return _Parsed(entries=entries, valid_end=offset, next_seq=seq, torn=False)
        if offset + ENTRY.size > size:
            return _Parsed(entries=entries, valid_end=offset, next_seq=seq, torn=True)
        crc, length, entry_seq, appended_at = ENTRY.unpack_from(data, offset)
        end = offset + ENTRY.size + length
        if (
            length > MAX_VALUE_BYTES
            or end > size
            or entry_seq != seq
            or zlib.crc32(view[offset + 4 : end]) != crc
        ):
            damaged = _intact_entry_after(data, offset, seq)
            return _Parsed(
                entries=entries,
                valid_end=offset,
                next_seq=seq,
                torn=True,
                damaged=damaged,
            )
        if keep and seq > after:
            entries.append((seq, appended_at, data[offset + ENTRY.size : end]))
        offset = end
        seq += 1
    return _Parsed(entries=entries, valid_end=offset, next_seq=seq, torn=False)


_LOOKAHEAD = 256
"""How many later sequence numbers are searched for after an invalid entry."""


def _intact_entry_after(data: bytes, offset: int, seq: int) -> bool:
    """True if a valid entry numbered after ``seq`` starts anywhere past ``offset``.

    A torn write only ever leaves garbage at the very end, so an intact later
    entry proves the invalid one at ``offset`` is damage. Candidates are found
    by searching for the bytes of each following sequence number (in C, not a
    Python loop over every position) and confirmed by their checksum.
    """
    view = memoryview(data)
    size = len(data)
    for later in range(seq + 1, seq + 1 + _LOOKAHEAD):
        needle = struct.pack("<Q", later)
        found = data.find(needle, offset + 9)
        while found != -1:
            start = found - 8
            if start + ENTRY.size <= size:
                crc, length, _, _ = ENTRY.unpack_from(data, start)
                end = start + ENTRY.size + length
                intact = length <= MAX_VALUE_BYTES and end <= size
                if intact and zlib.crc32(view[start + 4 : end]) == crc:
                    return True
            found = data.find(needle, found + 1)
        if (size - offset) // ENTRY.size < later - seq:
            break
    return False


def _read_segment(path: Path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    if data[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
        raise StorageCorrupted(
            f"segment {path} does not start with the segment magic: restore it from a backup",
            path=str(path),
        )
    return data


def _damaged(path: Path, why: str) -> StorageCorrupted:
    return StorageCorrupted(
        f"stream segment {path} is damaged ({why}); restore it from a backup", path=str(path)
    )


def read_entries(
    directory: Path, stream: str, *, after: int, limit: int | None
) -> list[StreamEntry]:
    """Entries of the stream after ``after``, at most ``limit``; a torn tail is left out."""
    segments = list_segments(directory)
    if not segments or limit == 0:
        return []
    if segments[0][0] != 1:
        raise _damaged(segments[0][1], "the stream's first segment is missing")
    firsts = [first for first, _ in segments]
    start = max(bisect.bisect_right(firsts, after + 1) - 1, 0)
    found: list[StreamEntry] = []
    for index in range(start, len(segments)):
        first, path = segments[index]
        last = index == len(segments) - 1
        want = None if limit is None else limit - len(found)
        parsed = _parse(_read_segment(path), first, after=after, limit=want)
        if parsed.damaged:
            raise _damaged(path, f"entry {parsed.next_seq} is invalid but later entries are intact")
        if parsed.torn and not last:
            raise _damaged(path, f"entry {parsed.next_seq} is invalid")
        if not last and want is not None and len(parsed.entries) >= want:
            found.extend(_entries(stream, parsed.entries))
            break
        if not last and parsed.next_seq != segments[index + 1][0]:
            raise _damaged(path, f"it ends at {parsed.next_seq - 1}, the next segment starts later")
        found.extend(_entries(stream, parsed.entries))
        if limit is not None and len(found) >= limit:
            break
    return found


def inspect_stream(directory: Path) -> list[tuple[Path, str, bool]]:
    """Every problem of one stream's segments: (file, what is wrong, repairable).

    Only a torn tail of the last segment is repairable (truncating it loses no
    acknowledged entry; the next append does the same).
    """
    try:
        segments = list_segments(directory)
    except StorageCorrupted as exc:
        return [(Path(exc.path or directory), str(exc), False)]
    found: list[tuple[Path, str, bool]] = []
    if segments and segments[0][0] != 1:
        found.append((segments[0][1], "the stream's first segment is missing", False))
    for index, (first, path) in enumerate(segments):
        last = index == len(segments) - 1
        try:
            parsed = _parse(_read_segment(path), first, keep=False)
        except StorageCorrupted as exc:
            found.append((path, str(exc), False))
            continue
        if parsed.damaged or (parsed.torn and not last):
            found.append((path, f"entry {parsed.next_seq} is damaged; later data is intact", False))
        elif parsed.torn:
            found.append((path, f"a torn write after entry {parsed.next_seq - 1}", True))
        if not last and not parsed.torn and parsed.next_seq != segments[index + 1][0]:
            found.append(
                (path, f"it ends at {parsed.next_seq - 1}; the next segment starts later", False)
            )
    return found


def _entries(stream: str, raw: Iterable[tuple[int, float, bytes]]) -> list[StreamEntry]:
    return [StreamEntry(stream=stream, seq=s, payload=p, appended_at=t) for s, t, p in raw]


def find_tail(directory: Path, disk: Disk) -> Tail | None:
    """Locate the end of the stream, truncating a torn tail; None if it has no segments.

    Call only under the exclusive lock: truncating is a write.
    """
    segments = list_segments(directory)
    if not segments:
        return None
    first, path = segments[-1]
    parsed = _parse(_read_segment(path), first, keep=False)
    if parsed.damaged:
        # Truncating here would destroy the intact entries after the damage.
        raise _damaged(path, f"entry {parsed.next_seq} is invalid but later entries are intact")
    if parsed.torn:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.ftruncate(fd, parsed.valid_end)
            disk.sync_file(fd)
        finally:
            os.close(fd)
    return Tail(
        first_seq=first,
        path=path,
        end=parsed.valid_end,
        last_seq=parsed.next_seq - 1,
        stamp=_stamp(os.stat(path)),
    )


def _stamp(info: os.stat_result) -> tuple[int, int]:
    return info.st_ino, info.st_mtime_ns


def tail_still_valid(tail: Tail) -> bool:
    """True if nobody (another process) appended, rolled or dropped since ``tail`` was found."""
    try:
        info = os.stat(tail.path)
    except FileNotFoundError:
        return False
    nxt = tail.path.with_name(segment_name(tail.last_seq + 1))
    return info.st_size == tail.end and _stamp(info) == tail.stamp and not os.path.exists(nxt)


def append_entries(
    directory: Path,
    tail: Tail | None,
    entries: Sequence[tuple[int, float, bytes]],
    disk: Disk,
    *,
    segment_bytes: int,
) -> Tail:
    """Append ``entries`` (consecutive seqs after the tail) and fsync; return the new tail.

    Entries bound for one segment are written with one ``pwrite`` and one fsync.
    """
    pending = list(entries)
    while pending:
        seq = pending[0][0]
        if tail is None or (tail.end >= segment_bytes and tail.last_seq >= tail.first_seq):
            tail = _new_segment(directory, seq, disk)
        if seq != tail.last_seq + 1:
            raise _damaged(tail.path, f"the next entry would be {seq}, not {tail.last_seq + 1}")
        chunk = bytearray()
        count = 0
        for entry_seq, at, payload in pending:
            if chunk and tail.end + len(chunk) >= segment_bytes:
                break
            chunk += pack_entry(entry_seq, at, payload)
            count += 1
        fd = os.open(tail.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            _pwrite_all(fd, bytes(chunk), tail.end)
            disk.sync_file(fd)
            stamp = _stamp(os.fstat(fd))
        finally:
            os.close(fd)
        tail = attrs.evolve(
            tail, end=tail.end + len(chunk), last_seq=pending[count - 1][0], stamp=stamp
        )
        pending = pending[count:]
    if tail is None:
        raise ValueError("append_entries needs at least one entry")
    return tail


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    os.lseek(fd, offset, os.SEEK_SET)
    write_all(fd, data)


def _new_segment(directory: Path, first_seq: int, disk: Disk) -> Tail:
    disk.ensure_dir(directory)
    path = directory / segment_name(first_seq)
    disk.replace(path, SEGMENT_MAGIC)
    return Tail(
        first_seq=first_seq,
        path=path,
        end=len(SEGMENT_MAGIC),
        last_seq=first_seq - 1,
        stamp=_stamp(os.stat(path)),
    )
