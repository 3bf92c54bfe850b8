"""FileStorage beyond the conformance suite: its directory, journal, streams and faults."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskloom.adapters.filesystem import FileStorage
from taskloom.adapters.filesystem import _core as _fs_core
from taskloom.adapters.filesystem import _journal as _fs_journal
from taskloom.adapters.filesystem import _records as _fs_records
from taskloom.adapters.filesystem import _root as _fs_root
from taskloom.adapters.filesystem import _streams as _fs_streams
from taskloom.adapters.filesystem._journal import EntryChange, Intent, RecordChange
from taskloom.contracts import (
    Append,
    Check,
    ConflictError,
    Put,
    StorageCorrupted,
    StorageFull,
    StoragePermissionDenied,
    StorageReadOnly,
    StorageUnavailable,
    UsageError,
)


def _store(root: Path) -> _fs_core.Store:
    """A Store used only for its path arithmetic (nothing is opened)."""
    return _fs_core.Store(
        root, clock=lambda: 0.0, fsync=False, segment_bytes=1 << 20, lock_timeout=1.0
    )


def _segments(root: Path, stream: str) -> list[Path]:
    return [path for _, path in _fs_streams.list_segments(_store(root).stream_dir(stream))]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# --- the root directory --------------------------------------------------------------


async def test_a_new_directory_becomes_a_marked_store(tmp_path: Path) -> None:
    """Opening a missing directory creates it with a marker naming the format."""
    root = tmp_path / "a" / "b"
    storage = await FileStorage.open(root)
    await storage.aclose()
    meta = json.loads((root / _fs_root.MARKER).read_text())
    assert meta == {"format": "taskloom-filesystem", "version": 1}


async def test_a_foreign_directory_is_refused_and_untouched(tmp_path: Path) -> None:
    """A non-empty directory without our marker raises StorageCorrupted and gains no file."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageCorrupted) as caught:
        await FileStorage.open(tmp_path)
    assert caught.value.path == str(tmp_path)
    assert "notes.txt" in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


async def test_a_store_from_a_newer_format_is_refused(tmp_path: Path) -> None:
    """A marker with a newer format version says to upgrade, and nothing is changed."""
    async with FileStorage(tmp_path / "s", fsync=False) as storage:
        await storage.put("ns", "k", b"v")
    marker = tmp_path / "s" / _fs_root.MARKER
    marker.write_text(json.dumps({"format": "taskloom-filesystem", "version": 2}))
    (tmp_path / "s" / _fs_root.LOCK).unlink()
    with pytest.raises(StorageCorrupted, match="upgrade taskloom") as caught:
        await FileStorage.open(tmp_path / "s")
    assert caught.value.path == str(marker)
    assert not (tmp_path / "s" / _fs_root.LOCK).exists()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": "other", "version": 1}'])
async def test_a_damaged_marker_is_refused(tmp_path: Path, text: str) -> None:
    """A marker that is not ours raises StorageCorrupted naming the marker file."""
    (tmp_path / _fs_root.MARKER).write_text(text)
    with pytest.raises(StorageCorrupted) as caught:
        await FileStorage.open(tmp_path)
    assert caught.value.path == str(tmp_path / _fs_root.MARKER)


async def test_a_file_in_place_of_the_root_is_refused(tmp_path: Path) -> None:
    """A regular file at the location raises StorageCorrupted and keeps its content."""
    path = tmp_path / "file"
    path.write_bytes(b"data")
    with pytest.raises(StorageCorrupted):
        await FileStorage.open(path)
    assert path.read_bytes() == b"data"


async def test_a_root_too_long_for_the_longest_keys_is_refused(tmp_path: Path) -> None:
    """A root path that would push 1024-byte names over PATH_MAX is a UsageError up front."""
    with pytest.raises(UsageError, match="shorter root"):
        await FileStorage.open(tmp_path.joinpath(*["x" * 200] * 5))


async def test_leftover_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    """Temporary files of a crashed writer do not survive the next open."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", "k", b"v")
    (tmp_path / "tmp" / "123-dead-1.tmp").write_bytes(b"partial")
    async with FileStorage(tmp_path, fsync=False) as storage:
        assert (await storage.get("ns", "k")) is not None
    assert list((tmp_path / "tmp").iterdir()) == []


# --- records ------------------------------------------------------------------------------


async def test_a_damaged_record_file_is_reported_with_its_path(tmp_path: Path) -> None:
    """A flipped byte in a record file raises StorageCorrupted naming that file."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", "k", b"value")
        path = _store(tmp_path).record_path("ns", "k")
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(StorageCorrupted) as caught:
            await storage.get("ns", "k")
        assert caught.value.path == str(path)


async def test_a_stray_file_among_records_is_reported(tmp_path: Path) -> None:
    """A file taskloom did not write inside a namespace makes scan raise StorageCorrupted."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", "k", b"v")
        stray = _store(tmp_path).record_path("ns", "k").parent / "README"
        stray.write_text("hello")
        with pytest.raises(StorageCorrupted) as caught:
            await storage.scan("ns")
        assert caught.value.path == str(stray)


async def test_expired_records_are_cleaned_lazily(tmp_path: Path) -> None:
    """A read that meets an expired record returns None and its file is removed afterwards."""
    clock = FakeClock()
    async with FileStorage(tmp_path, fsync=False, clock=clock) as storage:
        await storage.put("ns", "gone", b"v", ttl=10)
        await storage.put("ns", "kept", b"v", ttl=100)
        path = _store(tmp_path).record_path("ns", "gone")
        clock.now += 10
        assert await storage.get("ns", "gone") is None
        assert [r.key for r in await storage.scan("ns")] == ["kept"]
        await storage.put("ns", "other", b"v")  # queued after the cleanup: a barrier
        assert not path.exists()
        assert (await storage.put("ns", "gone", b"again")).version == 1


async def test_purge_expired_sweeps_every_namespace(tmp_path: Path) -> None:
    """purge_expired removes the files of expired records nobody read, and only those."""
    clock = FakeClock()
    long_namespace = "n" * 600
    async with FileStorage(tmp_path, fsync=False, clock=clock) as storage:
        await storage.put("one", "old", b"v", ttl=5)
        await storage.put(long_namespace, "old", b"v", ttl=5)
        await storage.put(long_namespace, "x" * 900, b"v", ttl=5)
        await storage.put("one", "live", b"v", ttl=500)
        await storage.put("two", "forever", b"v")
        assert await storage.purge_expired() == 0
        clock.now += 5
        assert await storage.purge_expired() == 3
        assert await storage.purge_expired() == 0
        assert not _store(tmp_path).record_path(long_namespace, "old").exists()
        assert not _store(tmp_path).record_path("one", "old").exists()
        assert [r.key for r in await storage.scan("one")] == ["live"]
        assert [r.key for r in await storage.scan("two")] == ["forever"]


async def test_a_clock_returning_ints_is_accepted(tmp_path: Path) -> None:
    """A clock that returns whole seconds as int still yields float timestamps."""
    async with FileStorage(tmp_path, fsync=False, clock=lambda: 1_000) as storage:
        record = await storage.put("ns", "k", b"v", ttl=5)
        assert (record.updated_at, record.expires_at) == (1000.0, 1005.0)
        assert (await storage.append("s", b"x")).appended_at == 1000.0
        assert await storage.get("ns", "k") == record


async def test_scan_by_prefix_finds_short_and_long_keys(tmp_path: Path) -> None:
    """Prefix scans (pruned by encoded prefix) find exactly the matching keys, long or short."""
    keys = ["run-1/a", "run-1/b", "run-10/a", "run-2/a", "run-1/" + "z" * 900, "rum", "r", "é/x"]
    async with FileStorage(tmp_path, fsync=False) as storage:
        for key in keys:
            await storage.put("ns", key, b"v")
        for prefix in ["", "r", "run-", "run-1", "run-1/", "run-1/zzzzzz", "é", "x"]:
            got = [r.key for r in await storage.scan("ns", prefix=prefix)]
            assert got == sorted(k for k in keys if k.startswith(prefix)), prefix


async def test_long_keys_are_stored_in_nested_directories(tmp_path: Path) -> None:
    """A 1024-byte key round-trips and scans back, though it exceeds NAME_MAX."""
    key = "é" * 512
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", key, b"v")
        await storage.put("ns", key[:-1], b"w")
        assert [r.key for r in await storage.scan("ns")] == [key[:-1], key]
    assert len(_store(tmp_path).record_path("ns", key).relative_to(tmp_path).parts) > 5


# --- streams ------------------------------------------------------------------------------


def _tear(path: Path, kind: str) -> None:
    seq = 10_000 if kind == "wrong-seq" else 6
    data = {
        "garbage": os.urandom(37),
        "half-entry": _fs_streams.pack_entry(seq, 1.0, b"payload" * 5)[:-9],
        "half-header": _fs_streams.pack_entry(seq, 1.0, b"x")[:10],
        "wrong-seq": _fs_streams.pack_entry(seq, 1.0, b"x"),
        "zeros": bytes(64),
    }[kind]
    with open(path, "ab") as handle:
        handle.write(data)


@pytest.mark.parametrize("kind", ["garbage", "half-entry", "half-header", "wrong-seq", "zeros"])
async def test_a_torn_tail_is_dropped_and_appends_stay_gapless(tmp_path: Path, kind: str) -> None:
    """Bytes of a torn write at a segment's end are never read, and the next seq is next."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        for n in range(5):
            await storage.append("s", b"e%d" % n)
    _tear(_segments(tmp_path, "s")[-1], kind)
    async with FileStorage(tmp_path, fsync=False) as storage:
        assert [e.seq for e in await storage.read("s")] == [1, 2, 3, 4, 5]
        entry = await storage.append("s", b"after")
        assert entry.seq == 6
        entries = await storage.read("s")
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
        assert entries[-1].payload == b"after"


async def test_a_torn_tail_written_by_another_process_is_truncated(tmp_path: Path) -> None:
    """A store already open notices a torn tail left behind its back and appends after it."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.append("s", b"one")
        _tear(_segments(tmp_path, "s")[-1], "half-entry")
        assert (await storage.append("s", b"two")).seq == 2
        assert [e.payload for e in await storage.read("s")] == [b"one", b"two"]


async def test_streams_roll_over_segments_without_gaps(tmp_path: Path) -> None:
    """Small segments: many files, reads across their borders see every seq once, in order."""
    async with FileStorage(tmp_path, fsync=False, segment_bytes=100) as storage:
        for n in range(40):
            await storage.append("s", b"payload-%02d" % n)
        assert len(_segments(tmp_path, "s")) > 5
        for after in (0, 3, 17, 39, 40):
            for limit in (None, 1, 4, 100):
                got = [e.seq for e in await storage.read("s", after=after, limit=limit)]
                want = list(range(after + 1, 41))[:limit]
                assert got == want, (after, limit)
    async with FileStorage(tmp_path, fsync=False, segment_bytes=100) as storage:
        assert (await storage.append("s", b"next")).seq == 41


async def test_a_damaged_entry_before_the_tail_is_corruption(tmp_path: Path) -> None:
    """A bad entry in an older segment cannot be a torn write: StorageCorrupted names it."""
    async with FileStorage(tmp_path, fsync=False, segment_bytes=60) as storage:
        for n in range(6):
            await storage.append("s", b"e%d" % n)
        first = _segments(tmp_path, "s")[0]
        data = bytearray(first.read_bytes())
        data[-1] ^= 0xFF
        first.write_bytes(bytes(data))
        with pytest.raises(StorageCorrupted) as caught:
            await storage.read("s")
        assert caught.value.path == str(first)


# --- the journal ----------------------------------------------------------------------------


def _intent() -> Intent:
    return Intent(
        records=(
            RecordChange(namespace="ns", key="a", data=_fs_records.pack(1, 5.0, None, b"A")),
            RecordChange(namespace="ns", key="b", data=_fs_records.pack(1, 5.0, None, b"B")),
            RecordChange(namespace="ns", key="gone", data=None),
        ),
        entries=(
            EntryChange(stream="s", seq=2, appended_at=5.0, payload=b"two"),
            EntryChange(stream="s", seq=3, appended_at=5.0, payload=b"three"),
        ),
    )


async def _prepare(root: Path) -> None:
    async with FileStorage(root, fsync=False) as storage:
        await storage.put("ns", "gone", b"old")
        await storage.append("s", b"one")


async def _assert_applied(root: Path) -> None:
    async with FileStorage(root, fsync=False) as storage:
        assert (await storage.get("ns", "a")).value == b"A"  # type: ignore[union-attr]
        assert (await storage.get("ns", "b")).value == b"B"  # type: ignore[union-attr]
        assert await storage.get("ns", "gone") is None
        assert [e.payload for e in await storage.read("s")] == [b"one", b"two", b"three"]
        assert (await storage.append("s", b"four")).seq == 4
    assert not (root / _fs_core.JOURNAL).exists()


async def test_a_leftover_journal_is_rolled_forward_on_open(tmp_path: Path) -> None:
    """A complete journal from a writer killed before applying anything is applied on open."""
    await _prepare(tmp_path)
    (tmp_path / _fs_core.JOURNAL).write_bytes(_fs_journal.pack(_intent()))
    await _assert_applied(tmp_path)


async def test_a_half_applied_journal_is_finished_on_open(tmp_path: Path) -> None:
    """A writer killed mid-apply (one record and one entry done) is finished, nothing doubled."""
    await _prepare(tmp_path)
    store = _store(tmp_path)
    store.record_path("ns", "a").parent.mkdir(parents=True, exist_ok=True)
    store.record_path("ns", "a").write_bytes(_fs_records.pack(1, 5.0, None, b"A"))
    with open(_segments(tmp_path, "s")[-1], "ab") as handle:
        handle.write(_fs_streams.pack_entry(2, 5.0, b"two"))
    (tmp_path / _fs_core.JOURNAL).write_bytes(_fs_journal.pack(_intent()))
    await _assert_applied(tmp_path)


@pytest.mark.parametrize("cut", [0, 5, 20, -1])
async def test_a_damaged_journal_is_reported_not_discarded(tmp_path: Path, cut: int) -> None:
    """A journal cut short or damaged refuses the store, naming the journal, which stays."""
    await _prepare(tmp_path)
    data = bytearray(_fs_journal.pack(_intent()))
    if cut == -1:
        data[-1] ^= 0x01
    else:
        del data[cut:]
    journal = tmp_path / _fs_core.JOURNAL
    journal.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted) as caught:
        async with FileStorage(tmp_path, fsync=False):
            pass
    assert caught.value.path == str(journal)
    assert "journal" in str(caught.value)
    assert journal.read_bytes() == bytes(data)
    journal.unlink()
    async with FileStorage(tmp_path, fsync=False) as storage:
        assert await storage.get("ns", "a") is None
        assert (await storage.get("ns", "gone")) is not None
        assert [e.seq for e in await storage.read("s")] == [1]


async def test_a_journal_damaged_while_open_is_reported_to_readers(tmp_path: Path) -> None:
    """A store already open meets a damaged journal on its next read: StorageCorrupted."""
    await _prepare(tmp_path)
    async with FileStorage(tmp_path, fsync=False) as storage:
        (tmp_path / _fs_core.JOURNAL).write_bytes(_fs_journal.pack(_intent())[:-3])
        with pytest.raises(StorageCorrupted):
            await storage.get("ns", "a")
        with pytest.raises(StorageCorrupted):
            await storage.put("ns", "c", b"C")
    assert (tmp_path / _fs_core.JOURNAL).exists()


@pytest.mark.parametrize("where", ["first", "middle", "second-last"])
@pytest.mark.parametrize("part", ["header", "payload", "length"])
async def test_a_damaged_entry_in_the_last_segment_is_corruption(
    tmp_path: Path, where: str, part: str
) -> None:
    """A flipped bit before intact entries: reads and appends raise, naming the file; no loss."""
    payloads = [b"entry-%d" % n for n in range(7)]
    async with FileStorage(tmp_path, fsync=False) as storage:
        for payload in payloads:
            await storage.append("s", payload)
    segment = _segments(tmp_path, "s")[-1]
    index = {"first": 0, "middle": 3, "second-last": 5}[where]
    offset = len(_fs_streams.SEGMENT_MAGIC) + sum(
        len(_fs_streams.pack_entry(n + 1, 0.0, p)) for n, p in enumerate(payloads[:index])
    )
    offset += {"header": 0, "length": 5, "payload": _fs_streams.ENTRY.size + 2}[part]
    data = bytearray(segment.read_bytes())
    data[offset] ^= 0x04
    segment.write_bytes(bytes(data))
    async with FileStorage(tmp_path, fsync=False) as storage:
        with pytest.raises(StorageCorrupted) as caught:
            await storage.read("s")
        assert caught.value.path == str(segment)
        with pytest.raises(StorageCorrupted) as caught:
            await storage.append("s", b"more")
        assert caught.value.path == str(segment)
    assert segment.read_bytes() == bytes(data)


async def test_a_reader_rolls_a_crashed_writers_journal_forward(tmp_path: Path) -> None:
    """A store that stays open sees a journal left by another process completed, never half."""
    await _prepare(tmp_path)
    async with FileStorage(tmp_path, fsync=False) as storage:
        assert await storage.get("ns", "a") is None
        (tmp_path / _fs_core.JOURNAL).write_bytes(_fs_journal.pack(_intent()))
        assert (await storage.get("ns", "b")).value == b"B"  # type: ignore[union-attr]
        assert [e.seq for e in await storage.read("s")] == [1, 2, 3]
    assert not (tmp_path / _fs_core.JOURNAL).exists()


def test_journal_round_trips() -> None:
    """Packing then unpacking a journal gives back the same intent."""
    assert _fs_journal.unpack(_fs_journal.pack(_intent())) == _intent()


# --- group commit ---------------------------------------------------------------------------


async def test_concurrent_writes_in_one_batch_see_each_other(tmp_path: Path) -> None:
    """Writes queued together are planned in order: versions count up, one creator wins."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        records = await asyncio.gather(*(storage.put("ns", "k", b"%d" % n) for n in range(30)))
        assert sorted(r.version for r in records) == list(range(1, 31))
        assert (await storage.get("ns", "k")).version == 30  # type: ignore[union-attr]
        outcomes = await asyncio.gather(
            *(storage.put("ns", "new", b"%d" % n, if_version=0) for n in range(10)),
            return_exceptions=True,
        )
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
        assert all(isinstance(o, ConflictError) for o in outcomes if isinstance(o, BaseException))
        entries = await asyncio.gather(*(storage.append("s", b"e") for _ in range(25)))
        assert sorted(e.seq for e in entries) == list(range(1, 26))


async def test_a_failing_commit_in_a_batch_leaves_its_neighbours_alone(tmp_path: Path) -> None:
    """A conflicting commit queued between other writes changes nothing; the others apply."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        before = asyncio.gather(storage.put("ns", "a", b"1"), storage.append("s", b"x"))
        bad = storage.commit(
            [
                Put(namespace="ns", key="b", value=b"never"),
                Append(stream="s", payload=b"never"),
                Check(namespace="ns", key="a", version=7),
            ]
        )
        after = asyncio.gather(storage.put("ns", "c", b"3"), storage.append("s", b"y"))
        results = await asyncio.gather(before, bad, after, return_exceptions=True)
        assert isinstance(results[1], ConflictError)
        assert await storage.get("ns", "b") is None
        assert [e.payload for e in await storage.read("s")] == [b"x", b"y"]
        assert [r.key for r in await storage.scan("ns")] == ["a", "c"]


async def test_a_disk_failure_fails_the_whole_batch(
    tmp_path: Path, failing: Callable[[str, int, Path], None]
) -> None:
    """When applying a batch fails, every write in it reports StorageUnavailable."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", "k", b"old")
        failing("write", errno.ENOSPC, tmp_path)
        outcomes = await asyncio.gather(
            *(storage.put("ns", f"k{n}", b"v") for n in range(5)),
            storage.put("ns", "k", b"new"),
            return_exceptions=True,
        )
        assert all(isinstance(o, StorageUnavailable) for o in outcomes)
        assert (await storage.get("ns", "k")).value == b"old"  # type: ignore[union-attr]
        assert [r.key for r in await storage.scan("ns")] == ["k"]


# --- faults -------------------------------------------------------------------------------


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, int, Path], None]]:
    """Make one os function fail with an errno, only for files below a given root."""

    def install(name: str, code: int, root: Path) -> None:
        real = getattr(os, name)
        prefix = str(root)

        def fake(*args: object, **kwargs: object) -> object:
            first = args[0]
            where = os.readlink(f"/proc/self/fd/{first}") if isinstance(first, int) else first
            if str(where).startswith(prefix):
                raise OSError(code, os.strerror(code), str(where))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, fake)

    yield install


@pytest.mark.parametrize(
    ("name", "code"),
    [("write", errno.ENOSPC), ("replace", errno.EROFS), ("fsync", errno.EIO)],
)
async def test_a_failing_disk_keeps_earlier_data(
    tmp_path: Path, failing: Callable[[str, int, Path], None], name: str, code: int
) -> None:
    """Full, read-only or failing disk: StorageUnavailable, and the old value stays intact."""
    async with FileStorage(tmp_path, fsync=True) as storage:
        await storage.put("ns", "k", b"old")
        await storage.append("s", b"one")
        failing(name, code, tmp_path)
        with pytest.raises(StorageUnavailable) as caught:
            await storage.put("ns", "k", b"new")
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == code
        with pytest.raises(StorageUnavailable):
            await storage.commit(
                [Put(namespace="ns", key="k", value=b"new"), Append(stream="s", payload=b"x")]
            )
        assert (await storage.get("ns", "k")).value == b"old"  # type: ignore[union-attr]
    async with FileStorage(tmp_path, fsync=True) as storage:
        assert (await storage.get("ns", "k")).value == b"old"  # type: ignore[union-attr]
        assert [e.payload for e in await storage.read("s")] == [b"one"]
        assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_disk_that_fills_mid_append_leaves_no_torn_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short by ENOSPC leaves half an entry; it is never read and numbering goes on."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.append("s", b"one")
        real_write = os.write

        def half_then_full(fd: int, data: object) -> int:
            view = memoryview(data)  # type: ignore[arg-type]
            if len(view) > 20:
                real_write(fd, view[: len(view) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(StorageUnavailable, match="disk is full"):
            await storage.append("s", b"two" * 20)
        monkeypatch.undo()
        assert [e.payload for e in await storage.read("s")] == [b"one"]
        assert (await storage.append("s", b"three")).seq == 2
        assert [e.payload for e in await storage.read("s")] == [b"one", b"three"]


async def test_an_unwritable_location_is_unavailable(
    tmp_path: Path, failing: Callable[[str, int, Path], None]
) -> None:
    """A location that cannot be created raises StorageUnavailable, not OSError."""
    failing("mkdir", errno.EROFS, tmp_path)
    with pytest.raises(StorageReadOnly, match="read-only"):
        await FileStorage.open(tmp_path / "new")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.EROFS, StorageReadOnly),
        (errno.EACCES, StoragePermissionDenied),
        (errno.EPERM, StoragePermissionDenied),
        (errno.ENOSPC, StorageFull),
        (errno.EIO, StorageUnavailable),
    ],
)
async def test_a_failing_write_is_its_specific_kind(
    tmp_path: Path, failing: Callable[[str, int, Path], None], code: int, kind: type[Exception]
) -> None:
    """A read-only mount, a refused permission and a full disk are each their own kind of
    StorageUnavailable (as PostgreSQL's are), so a caller can tell them apart."""
    async with FileStorage(tmp_path, fsync=True) as storage:
        await storage.put("ns", "k", b"old")
        failing("replace", code, tmp_path)
        with pytest.raises(StorageUnavailable) as caught:
            await storage.put("ns", "k", b"new")
        assert type(caught.value) is kind


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
        BlockingIOError(errno.EAGAIN, "busy"),
        InterruptedError(errno.EINTR, "interrupted"),
        IsADirectoryError(errno.EISDIR, "is a directory"),
        NotADirectoryError(errno.ENOTDIR, "not a directory"),
        FileExistsError(errno.EEXIST, "exists"),
        OSError("no errno at all"),
    ],
)
async def test_every_os_error_becomes_storage_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: OSError
) -> None:
    """Whatever OSError a read or write meets reaches the caller as StorageUnavailable."""
    async with FileStorage(tmp_path, fsync=False) as storage:

        def boom(*args: object, **kwargs: object) -> None:
            raise exc

        monkeypatch.setattr(_fs_records, "read", boom)
        monkeypatch.setattr(_fs_records, "read_head", boom)
        with pytest.raises(StorageUnavailable) as caught:
            await storage.get("ns", "k")
        assert caught.value.__cause__ is exc
        with pytest.raises(StorageUnavailable):
            await storage.put("ns", "k", b"v")


async def test_a_held_lock_times_out_as_unavailable(tmp_path: Path) -> None:
    """A lock held elsewhere past the timeout gives StorageUnavailable instead of a hang."""
    async with FileStorage(tmp_path, fsync=False, lock_timeout=0.2) as storage:
        fd = os.open(tmp_path / _fs_root.LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(StorageUnavailable, match="held by another process"):
                await storage.put("ns", "k", b"v")
            with pytest.raises(StorageUnavailable, match="held by another process"):
                await storage.get("ns", "k")
        finally:
            os.close(fd)
        assert (await storage.put("ns", "k", b"v")).version == 1


# --- lifecycle ------------------------------------------------------------------------------


async def test_an_unclosed_store_warns(tmp_path: Path) -> None:
    """A store dropped while open emits a ResourceWarning that says how to close it."""
    storage = await FileStorage.open(tmp_path, fsync=False)
    store = storage._store
    with pytest.warns(ResourceWarning, match="never closed"):
        del storage
        gc.collect()
    store.close()


async def test_two_stores_on_one_root_see_each_other(tmp_path: Path) -> None:
    """Two open adapters on one root (as two processes would) share records and streams."""
    async with (
        FileStorage(tmp_path, fsync=False) as one,
        FileStorage(tmp_path, fsync=False) as two,
    ):
        await one.put("ns", "k", b"1")
        assert (await two.put("ns", "k", b"2", if_version=1)).version == 2
        await one.append("s", b"a")
        assert (await two.append("s", b"b")).seq == 2
        assert [e.payload for e in await one.read("s")] == [b"a", b"b"]


async def test_use_after_close_is_a_usage_error(tmp_path: Path) -> None:
    """After aclose every call raises UsageError, even on a store that was never opened."""
    never = FileStorage(tmp_path / "never")
    await never.aclose()
    with pytest.raises(UsageError, match="closed"):
        await never.get("ns", "k")
    with pytest.raises(UsageError, match="closed"):
        await never.__aenter__()
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "kwargs",
    [{"segment_bytes": 0}, {"segment_bytes": 1.5}, {"lock_timeout": 0}, {"lock_timeout": -1}],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, object]) -> None:
    """Nonsense settings raise UsageError at construction."""
    with pytest.raises(UsageError):
        FileStorage(tmp_path, **kwargs)  # type: ignore[arg-type]


# --- a damaged layout and private files ------------------------------------------------


@pytest.mark.parametrize("sub", [_fs_core.RECORDS, _fs_core.STREAMS])
async def test_a_store_missing_records_or_streams_is_refused(tmp_path: Path, sub: str) -> None:
    """A marked store whose records/ (or streams/) vanished is StorageCorrupted, not empty."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", "k", b"v")
        await storage.append("s", b"e")
    import shutil

    shutil.rmtree(tmp_path / sub)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StorageCorrupted) as caught:
        await FileStorage.open(tmp_path, fsync=False)
    assert caught.value.path == str(tmp_path / sub)
    assert "missing" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_a_creation_interrupted_before_the_marker_is_finished(tmp_path: Path) -> None:
    """Empty records/, streams/ and tmp/ without a marker (a crashed first open) are ours."""
    for sub in (_fs_core.RECORDS, _fs_core.STREAMS, _fs_core.TMP):
        (tmp_path / sub).mkdir()
    async with FileStorage(tmp_path, fsync=False) as storage:
        await storage.put("ns", "k", b"v")
    assert (tmp_path / _fs_root.MARKER).exists()


async def test_store_files_and_directories_are_private(tmp_path: Path) -> None:
    """Every file the store creates is 0600 and every directory 0700."""
    import stat

    root = tmp_path / "store"
    async with FileStorage(root, fsync=False) as storage:
        await storage.put("ns", "k" * 300, b"v")
        await storage.append("s", b"e")
        await storage.commit(
            [Put(namespace="ns", key="a", value=b"1"), Append(stream="t", payload=b"x")]
        )
    paths = [root, *root.rglob("*")]
    assert len(paths) > 8
    for path in paths:
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


async def test_verify_repairs_only_what_loses_nothing(tmp_path: Path) -> None:
    """verify reports a torn tail, leftovers and a damaged segment; repair fixes the first two."""
    async with FileStorage(tmp_path, fsync=False) as storage:
        for n in range(3):
            await storage.append("torn", b"t%d" % n)
            await storage.append("bad", b"b%d" % n)
        assert await storage.verify() == []
        _tear(_segments(tmp_path, "torn")[-1], "half-entry")
        bad = _segments(tmp_path, "bad")[-1]
        data = bytearray(bad.read_bytes())
        data[len(_fs_streams.SEGMENT_MAGIC) + 30] ^= 0x01  # inside the first entry
        bad.write_bytes(bytes(data))
        _store(tmp_path).record_path("empty-namespace", "k").parent.mkdir(parents=True)
        found = await storage.verify()
        assert {f.where for f in found} >= {str(_segments(tmp_path, "torn")[-1]), str(bad)}
        assert not any(f.repaired for f in found)
        repaired = await storage.verify(repair=True)
        assert [f.where for f in repaired if not f.repaired] == [str(bad)]
        assert bad.read_bytes() == bytes(data)
        assert [f.where for f in await storage.verify()] == [str(bad)]
        assert [e.payload for e in await storage.read("torn")] == [b"t0", b"t1", b"t2"]


async def test_vacuum_gives_back_the_blocks_of_an_emptied_streams_directory(
    tmp_path: Path,
) -> None:
    """streams/ that held many streams keeps its blocks; verify names it, vacuum shrinks it."""
    root = tmp_path / "store"
    async with FileStorage(root, fsync=False) as storage:
        names = [f"run:{n:040d}:events" for n in range(300)]
        for name in names:
            await storage.append(name, b"x")
        for name in names:
            await storage.drop_stream(name)
        streams = root / _fs_core.STREAMS
        if os.stat(streams).st_size <= 4096:
            pytest.skip("this file system shrinks directories (or sizes them otherwise)")
        assert [f.repaired for f in await storage.verify()] == [False]
        assert await storage.vacuum() == 1
        assert os.stat(streams).st_size <= 4096
        assert await storage.verify() == []
        assert (await storage.append("after", b"y")).seq == 1
