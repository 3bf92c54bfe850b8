"""FileStorage's on-disk formats round-trip, and damage is detected rather than misread."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.adapters.filesystem import _journal as _fs_journal
from taskloom.adapters.filesystem import _records as _fs_records
from taskloom.adapters.filesystem import _streams as _fs_streams
from taskloom.adapters.filesystem._io import Disk
from taskloom.adapters.filesystem._journal import EntryChange, Intent, RecordChange
from taskloom.contracts import StorageCorrupted

PATH = Path("/store/records/x")
names = st.text(min_size=1, max_size=20)
times = st.floats(min_value=0, max_value=1e10, allow_nan=False)
values = st.binary(max_size=64)

record_changes = st.builds(
    RecordChange, namespace=names, key=names, data=st.none() | st.binary(max_size=40)
)
entry_changes = st.builds(
    EntryChange,
    stream=names,
    seq=st.integers(1, 2**40),
    appended_at=times,
    payload=values,
)
intents = st.builds(
    Intent,
    records=st.lists(record_changes, max_size=4).map(tuple),
    entries=st.lists(entry_changes, max_size=4).map(tuple),
)


@given(
    version=st.integers(1, 2**63 - 1),
    updated_at=times,
    expires_at=st.none() | times,
    value=values,
)
def test_records_round_trip(
    version: int, updated_at: float, expires_at: float | None, value: bytes
) -> None:
    """A packed record unpacks to the same version, times and value."""
    head, got = _fs_records.unpack(_fs_records.pack(version, updated_at, expires_at, value), PATH)
    assert (head.version, head.updated_at, head.expires_at, got) == (
        version,
        updated_at,
        expires_at,
        value,
    )


@given(value=values, data=st.data())
@settings(max_examples=200)
def test_any_damaged_byte_of_a_record_is_detected(value: bytes, data: st.DataObject) -> None:
    """Flipping any bit of a record file, or cutting it, raises StorageCorrupted naming it."""
    packed = bytearray(_fs_records.pack(3, 10.0, 20.0, value))
    if data.draw(st.booleans(), label="truncate"):
        damaged = bytes(packed[: data.draw(st.integers(0, len(packed) - 1), label="cut")])
    else:
        index = data.draw(st.integers(0, len(packed) - 1), label="index")
        packed[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        damaged = bytes(packed)
    with pytest.raises(StorageCorrupted) as caught:
        _fs_records.unpack(damaged, PATH)
    assert caught.value.path == str(PATH)


@given(intent=intents)
def test_journals_round_trip(intent: Intent) -> None:
    """A packed journal unpacks to the same intent."""
    assert _fs_journal.unpack(_fs_journal.pack(intent)) == intent


@given(intent=intents, data=st.data())
@settings(max_examples=200)
def test_a_cut_or_damaged_journal_is_refused(intent: Intent, data: st.DataObject) -> None:
    """Any truncation or bit flip of a journal is refused (so it is discarded, never half-used)."""
    packed = bytearray(_fs_journal.pack(intent))
    if data.draw(st.booleans(), label="truncate"):
        damaged = bytes(packed[: data.draw(st.integers(0, len(packed) - 1), label="cut")])
    else:
        index = data.draw(st.integers(0, len(packed) - 1), label="index")
        packed[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        damaged = bytes(packed)
    with pytest.raises(ValueError):
        _fs_journal.unpack(damaged)


@given(payloads=st.lists(values, min_size=1, max_size=5), data=st.data())
@settings(max_examples=200)
def test_a_damaged_last_entry_is_never_returned(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], data: st.DataObject
) -> None:
    """A bit flip or cut in a segment's last entry drops that entry; the others read intact."""
    directory = tmp_path_factory.mktemp("stream")
    body = b"".join(_fs_streams.pack_entry(n + 1, 1.0, p) for n, p in enumerate(payloads))
    last = len(_fs_streams.pack_entry(len(payloads), 1.0, payloads[-1]))
    segment = bytearray(_fs_streams.SEGMENT_MAGIC + body)
    start = len(segment) - last
    if data.draw(st.booleans(), label="truncate"):
        del segment[data.draw(st.integers(start, len(segment) - 1), label="cut") :]
    else:
        index = data.draw(st.integers(start, len(segment) - 1), label="index")
        segment[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    (directory / _fs_streams.segment_name(1)).write_bytes(bytes(segment))
    entries = _fs_streams.read_entries(directory, "s", after=0, limit=None)
    assert [e.payload for e in entries] == payloads[:-1]
    assert [e.seq for e in entries] == list(range(1, len(payloads)))


@given(payloads=st.lists(values, min_size=2, max_size=6), data=st.data())
@settings(max_examples=200)
def test_a_damaged_entry_before_the_last_is_never_mistaken_for_a_torn_tail(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], data: st.DataObject
) -> None:
    """Any bit flip in an entry that intact entries follow is StorageCorrupted, read or append."""
    directory = tmp_path_factory.mktemp("stream")
    packed = [_fs_streams.pack_entry(n + 1, 1.0, p) for n, p in enumerate(payloads)]
    segment = bytearray(_fs_streams.SEGMENT_MAGIC + b"".join(packed))
    end = len(segment) - len(packed[-1])
    index = data.draw(st.integers(len(_fs_streams.SEGMENT_MAGIC), end - 1), label="index")
    segment[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path = directory / _fs_streams.segment_name(1)
    path.write_bytes(bytes(segment))
    with pytest.raises(StorageCorrupted):
        _fs_streams.read_entries(directory, "s", after=0, limit=None)
    with pytest.raises(StorageCorrupted):
        _fs_streams.find_tail(directory, Disk(directory, fsync=False))
    assert path.read_bytes() == bytes(segment)
