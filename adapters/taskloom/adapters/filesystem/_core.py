"""The synchronous heart of FileStorage: the root's layout, locking, reads and applying writes.

Everything here blocks and runs in worker threads (``_storage`` owns the
threads and the asyncio side). Writers hold the exclusive ``flock`` for a whole
batch of operations; readers hold it shared, so a reader never sees a commit
half applied and versions are always read under the lock that protects the
write that follows (compare-and-set is correct across processes).

Layout of a root directory::

    taskloom-store.json   marker: {"format": "taskloom-filesystem", "version": 1} (``_root``)
    taskloom.lock         the flock target (never holds data)
    taskloom.gate         the gate that keeps readers from starving writers (``SharedLock``)
    journal               present only while a multi-file commit is being applied
    records/<namespace components>/<key components>   one file per record
    streams/<stream components>/<first seq>.seg       segment files
    tmp/                  temporary files, renamed into place; cleared on open
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from taskloom.adapters.filesystem import _journal as _fs_journal
from taskloom.adapters.filesystem import _names as _fs_names
from taskloom.adapters.filesystem import _records as _fs_records
from taskloom.adapters.filesystem import _root as _fs_root
from taskloom.adapters.filesystem._batch import Batch
from taskloom.adapters.filesystem._io import Disk, SharedLock
from taskloom.adapters.filesystem._journal import EntryChange, Intent
from taskloom.adapters.filesystem._root import GATE, LOCK
from taskloom.adapters.filesystem._streams import (
    Tail,
    append_entries,
    find_tail,
    inspect_stream,
    list_segments,
    read_entries,
    tail_still_valid,
)
from taskloom.contracts import (
    Record,
    StorageCorrupted,
    StorageFinding,
    StreamEntry,
    UsageError,
)

JOURNAL = "journal"
RECORDS = "records"
STREAMS = "streams"
TMP = "tmp"

PATH_MAX = 4096
_EMPTY_DIR_BYTES = 4096
"""The size a new directory has on common file systems (one block)."""
MAX_RELATIVE_PATH = len(RECORDS) + 2 * _fs_names.MAX_NAME_PATH + 2
"""Longest path below the root that a valid namespace and key can produce."""


class NeedsRecovery(Exception):
    """A reader found a journal left by a crashed writer: a writer must roll it forward first."""


class Store:
    """One open root directory. Methods block; the caller provides the threads."""

    def __init__(
        self,
        root: Path,
        *,
        clock: Callable[[], float],
        fsync: bool,
        segment_bytes: int,
        lock_timeout: float,
    ) -> None:
        self.root = root
        self.disk = Disk(root, fsync=fsync)
        self._clock: Callable[[], float] = lambda: float(clock())
        self._segment_bytes = segment_bytes
        self._lock_timeout = lock_timeout
        self._lock: SharedLock | None = None
        self._readers: list[SharedLock] = []
        self._readers_guard = threading.Lock()
        self._closed = False
        self._tails: dict[str, Tail] = {}

    # --- lifecycle ---------------------------------------------------------------

    def open(self) -> None:
        """Create or check the root, then roll forward any journal a crash left behind."""
        root = self.root
        if len(os.fsencode(root)) + MAX_RELATIVE_PATH >= PATH_MAX:
            raise UsageError(
                f"storage root {root} is too long: keys of {_fs_names.MAX_NAME_PATH} encoded "
                f"bytes must fit in {PATH_MAX} bytes of path; choose a shorter root"
            )
        if root.exists() and not root.is_dir():
            raise StorageCorrupted(
                f"storage root {root} exists and is not a directory: choose another location",
                path=str(root),
            )
        self.disk.ensure_dir(root)  # its parent is fsynced with the first flush
        # Check before creating the lock files, so a foreign or newer store gains no file.
        _fs_root.check(root)
        lock = self._new_lock()
        try:
            with lock.held(exclusive=True):
                if (root / _fs_root.MARKER).exists():
                    self._check_layout()
                else:
                    # The directories first: a marked store always has them, so one
                    # that lacks them later has lost data and is refused.
                    for sub in (RECORDS, STREAMS):
                        self.disk.ensure_dir(root / sub)
                    _fs_root.mark(root, self.disk)
                self.disk.ensure_dir(root / TMP)
                self._clear_tmp()
                self.recover()
                self.disk.flush()
        except BaseException:
            lock.close()
            raise
        self._lock = lock

    def verify(self, *, repair: bool) -> list[StorageFinding]:
        """Check every file of the store (``SelfChecking``), under the exclusive lock.

        Repaired (when asked): a complete journal rolled forward, a torn stream
        tail truncated, temporary files and empty directories removed. Damaged
        records, segments or journals are only reported.
        """
        if self._lock is None:
            raise UsageError("file storage is closed")
        found: list[StorageFinding] = []

        def add(where: Path, problem: str, repaired: bool = False) -> None:
            found.append(StorageFinding(where=str(where), problem=problem, repaired=repaired))

        with self._lock.held(exclusive=True):
            journal = self.root / JOURNAL
            if journal.exists():
                try:
                    if repair:
                        self.recover()
                    else:
                        _fs_journal.unpack(journal.read_bytes())
                    add(journal, "a commit interrupted by a crash (rolled forward)", repair)
                except (StorageCorrupted, ValueError) as exc:
                    add(journal, f"the commit journal is damaged ({exc}): restore from a backup")
            try:
                namespaces = self._namespaces()
            except StorageCorrupted as exc:
                add(Path(exc.path or self.root / RECORDS), str(exc))
                namespaces = []
            for _, directory in namespaces:
                try:
                    keys = self._keys(directory)
                except StorageCorrupted as exc:
                    add(Path(exc.path or directory), str(exc))
                    continue
                for _, path in keys:
                    try:
                        _fs_records.read(path)
                    except StorageCorrupted as exc:
                        add(path, str(exc))
            for directory in self._stream_dirs():
                for path, problem, fixable in inspect_stream(directory):
                    if fixable and repair:
                        self._tails.clear()
                        find_tail(directory, self.disk)
                    add(path, problem, fixable and repair)
            leftovers = os.listdir(self.root / TMP)
            if leftovers:
                if repair:
                    self._clear_tmp()
                add(self.root / TMP, f"{len(leftovers)} temporary file(s) left by a crash", repair)
            empty = self._empty_dirs()
            if empty:
                if repair:
                    for directory in empty:
                        with contextlib.suppress(OSError):
                            os.rmdir(directory)
                            self.disk.mark_dirty(directory.parent)
                add(self.root, f"{len(empty)} empty director(y/ies) left behind", repair)
            bloated = self._replace_bloated(repair=repair)
            if bloated:
                add(
                    self.root,
                    f"{bloated} empty director(y/ies) still holding the blocks of deleted "
                    "entries (replaced by fresh ones)",
                    repair,
                )
            self.disk.flush()
        return found

    def stream_names(self) -> list[str]:
        """The names of every stream with segments (hold ``reading()``)."""
        base = self.root / STREAMS
        names: list[str] = []
        for directory in self._stream_dirs():
            parts = directory.relative_to(base).parts
            try:
                names.append(_fs_names.decode(parts, _fs_names.STREAM))
            except ValueError:
                raise StorageCorrupted(
                    f"{directory} was not written by taskloom (its name is no encoded stream "
                    "name): move it out of the storage root",
                    path=str(directory),
                ) from None
        return sorted(names)

    def _stream_dirs(self) -> list[Path]:
        """Every directory under ``streams/`` that holds files (a stream's segments)."""
        out: list[Path] = []
        for directory, _, files in os.walk(self.root / STREAMS):
            if files:
                out.append(Path(directory))
        return sorted(out)

    def _empty_dirs(self) -> list[Path]:
        """Empty directories below ``records/`` and ``streams/``, deepest first."""
        out: list[Path] = []
        for sub in (RECORDS, STREAMS):
            for directory, dirs, files in os.walk(self.root / sub, topdown=False):
                path = Path(directory)
                if path != self.root / sub and not files and all((path / d) in out for d in dirs):
                    out.append(path)
        return out

    def _check_layout(self) -> None:
        """Refuse a marked store whose ``records/`` or ``streams/`` is gone (or no directory)."""
        for sub in (RECORDS, STREAMS):
            path = self.root / sub
            if not path.is_dir():
                what = "is missing" if not os.path.lexists(path) else "is not a directory"
                raise StorageCorrupted(
                    f"file store at {self.root} is damaged: {path} {what}, so every "
                    f"{'record' if sub == RECORDS else 'stream'} it held is gone; nothing was "
                    "changed: restore the directory from a backup, or choose a new location",
                    path=str(path),
                )

    def _new_lock(self) -> SharedLock:
        return SharedLock(self.root / GATE, self.root / LOCK, timeout=self._lock_timeout)

    def close(self) -> None:
        """Close every lock file descriptor (idempotent)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        with self._readers_guard:
            self._closed = True
            readers, self._readers = self._readers, []
        for lock in readers:
            lock.close()
        self.disk.close()

    def _clear_tmp(self) -> None:
        """Remove what writers that crashed left in ``tmp/`` (only under the exclusive lock).

        That is temporary files, and stream directories moved there to be dropped.
        """
        tmp = self.root / TMP
        for name in os.listdir(tmp):
            path = tmp / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    # --- locking -----------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the lock shared; raise NeedsRecovery if a crashed writer left a journal."""
        with self._readers_guard:
            lock = self._readers.pop() if self._readers else None
        if lock is None:
            lock = self._new_lock()
        try:
            with lock.held(exclusive=False):
                if os.path.exists(self.root / JOURNAL):
                    raise NeedsRecovery
                yield
        finally:
            with self._readers_guard:
                if self._closed:
                    lock.close()
                else:
                    self._readers.append(lock)

    def run_batch(
        self, operations: Sequence[Callable[[Batch], object]]
    ) -> list[tuple[bool, object]]:
        """Plan write operations in order, then apply them all durably under one exclusive lock.

        Each operation is planned alone (a conflict fails only that one); the
        result holds ``(True, value)`` or ``(False, exception)`` per operation.
        Nobody is answered before the whole batch is durable.
        """
        if self._lock is None:
            raise UsageError("file storage is closed")
        outcomes: list[tuple[bool, object]] = []
        with self._lock.held(exclusive=True):
            self.recover()
            batch = Batch(self, self._clock())
            for operation in operations:
                child = batch.child()
                try:
                    result = operation(child)
                except Exception as exc:
                    outcomes.append((False, exc))
                    continue
                child.merge()
                outcomes.append((True, result))
            try:
                self.apply_batch(batch)
            except Exception as exc:
                # Nothing of the batch is acknowledged; a journal, if written, finishes later.
                self._tails.clear()
                outcomes = [(False, exc) if ok else (ok, value) for ok, value in outcomes]
        return outcomes

    # --- layout --------------------------------------------------------------------

    def record_path(self, namespace: str, key: str) -> Path:
        """The file of (namespace, key); by construction always inside ``records/``."""
        return self.root.joinpath(
            RECORDS,
            *_fs_names.encode(namespace, _fs_names.NAMESPACE),
            *_fs_names.encode(key, _fs_names.KEY),
        )

    def stream_dir(self, stream: str) -> Path:
        """The directory of a stream's segments; by construction always inside ``streams/``."""
        return self.root.joinpath(STREAMS, *_fs_names.encode(stream, _fs_names.STREAM))

    # --- reads (hold ``reading()`` or the exclusive lock) ---------------------------

    def get(self, namespace: str, key: str) -> tuple[Record | None, bool]:
        """The live record, and whether an expired one was found (for lazy cleanup)."""
        got = _fs_records.read(self.record_path(namespace, key))
        if got is None:
            return None, False
        head, value = got
        if not head.alive(self._clock()):
            return None, True
        return _record(namespace, key, head, value), False

    def scan(
        self, namespace: str, *, prefix: str, start_after: str | None, limit: int | None
    ) -> tuple[list[Record], list[str]]:
        """Live records in key order, and the keys of expired ones met on the way."""
        namespace_dir = self.root.joinpath(
            RECORDS, *_fs_names.encode(namespace, _fs_names.NAMESPACE)
        )
        keys = sorted(
            item
            for item in self._keys(namespace_dir, prefix)
            if item[0].startswith(prefix) and (start_after is None or item[0] > start_after)
        )
        now = self._clock()
        found: list[Record] = []
        expired: list[str] = []
        for key, path in keys:
            if limit is not None and len(found) >= limit:
                break
            got = _fs_records.read(path)
            if got is None:
                continue
            head, value = got
            if head.alive(now):
                found.append(_record(namespace, key, head, value))
            else:
                expired.append(key)
        return found, expired

    def _keys(self, namespace_dir: Path, prefix: str = "") -> list[tuple[str, Path]]:
        """Every key stored under ``namespace_dir`` (those that may start with ``prefix``).

        base32hex keeps byte prefixes as text prefixes (in whole 5-byte groups),
        so directories and files whose encoded text cannot start a matching key
        are skipped without decoding them.
        """
        wanted = _fs_names.encoded_prefix(prefix)
        out: list[tuple[str, Path]] = []
        stack: list[tuple[Path, tuple[str, ...], str]] = [(namespace_dir, (), "")]
        while stack:
            directory, parts, text = stack.pop()
            try:
                listing = os.scandir(directory)
            except FileNotFoundError:
                continue
            with listing:
                for entry in listing:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    path = Path(entry.path)
                    full = text + name[1:]
                    if _fs_names.is_partial(name) and entry.is_dir():
                        if full.startswith(wanted) or wanted.startswith(full):
                            stack.append((path, (*parts, name), full))
                        continue
                    if name[:1] == _fs_names.KEY and _fs_names.is_component(name):
                        if not full.startswith(wanted):
                            continue
                        if entry.is_file():
                            with contextlib.suppress(ValueError):
                                key = _fs_names.decode((*parts, name), _fs_names.KEY)
                                out.append((key, path))
                                continue
                    raise StorageCorrupted(
                        f"{path} was not written by taskloom (its name is no encoded key): "
                        "move it out of the storage root",
                        path=str(path),
                    )
        return out

    def expired(self) -> dict[str, list[str]]:
        """Keys of expired records in every namespace (for ``purge_expired``)."""
        now = self._clock()
        found: dict[str, list[str]] = {}
        for namespace, directory in self._namespaces():
            for key, path in self._keys(directory):
                head = _fs_records.read_head(path)
                if head is not None and not head.alive(now):
                    found.setdefault(namespace, []).append(key)
        return found

    def _namespaces(self) -> list[tuple[str, Path]]:
        out: list[tuple[str, Path]] = []
        stack: list[tuple[Path, tuple[str, ...]]] = [(self.root / RECORDS, ())]
        while stack:
            directory, parts = stack.pop()
            with os.scandir(directory) as listing:
                for entry in listing:
                    name = entry.name
                    path = Path(entry.path)
                    if name.startswith(".") or not entry.is_dir():
                        continue
                    if _fs_names.is_partial(name):
                        stack.append((path, (*parts, name)))
                        continue
                    try:
                        out.append((_fs_names.decode((*parts, name), _fs_names.NAMESPACE), path))
                    except ValueError:
                        raise StorageCorrupted(
                            f"{path} was not written by taskloom (its name is no encoded "
                            "namespace): move it out of the storage root",
                            path=str(path),
                        ) from None
        return out

    def read(self, stream: str, *, after: int, limit: int | None) -> list[StreamEntry]:
        """Entries of ``stream`` after ``after``; a torn tail is never returned."""
        return read_entries(self.stream_dir(stream), stream, after=after, limit=limit)

    # --- writes (hold the exclusive lock: call through ``run_batch``) ---------------

    def version_on_disk(self, namespace: str, key: str, now: float) -> tuple[int, bool]:
        """The live version (0 if missing or expired) and whether any file exists."""
        head = _fs_records.read_head(self.record_path(namespace, key))
        if head is None:
            return 0, False
        return (head.version if head.alive(now) else 0), True

    def _tail(self, stream: str) -> Tail | None:
        cached = self._tails.get(stream)
        if cached is not None and tail_still_valid(cached):
            return cached
        self._tails.pop(stream, None)
        tail = find_tail(self.stream_dir(stream), self.disk)
        if tail is not None:
            self._tails[stream] = tail
        return tail

    def last_seq(self, stream: str) -> int:
        """The stream's last sequence number (0 if empty), after truncating a torn tail."""
        tail = self._tail(stream)
        return tail.last_seq if tail is not None else 0

    def drop_stream(self, stream: str) -> bool:
        """Remove the stream's segments and directory; True if it had any (exclusive lock).

        The directory is first renamed into ``tmp/`` (atomic, durable after the
        flush), so a crash leaves either the whole stream or none of it; whatever
        is left in ``tmp/`` is removed at the next open.
        """
        if self._lock is None:
            raise UsageError("file storage is closed")
        with self._lock.held(exclusive=True):
            self.recover()
            self._tails.pop(stream, None)
            directory = self.stream_dir(stream)
            if not directory.is_dir():
                return False
            had_entries = bool(list_segments(directory))
            doomed = self.disk.tmp_path()
            os.rename(directory, doomed)
            self.disk.mark_dirty(directory.parent)
            self._remove_empty_parents(directory, stop=self.root / STREAMS)
            self.disk.flush()
            shutil.rmtree(doomed)
        return had_entries

    def vacuum(self) -> int:
        """Give back the blocks of ``records/`` and ``streams/`` once they are empty.

        A directory does not shrink when its entries go (ext4 keeps its blocks), so
        ``streams/`` of a store that held thousands of runs stays large after every
        run is deleted. An empty one is replaced by a fresh directory with one
        atomic rename over it, so a crash leaves the old or the new, never neither.
        Returns how many directories were replaced.
        """
        if self._lock is None:
            raise UsageError("file storage is closed")
        with self._lock.held(exclusive=True):
            self.recover()
            replaced = self._replace_bloated(repair=True)
            self.disk.flush()
        return replaced

    def _replace_bloated(self, *, repair: bool) -> int:
        """Count (and with ``repair`` replace) empty layout directories grown past a block."""
        found = 0
        for sub in (RECORDS, STREAMS):
            path = self.root / sub
            if os.listdir(path) or os.stat(path).st_size <= _EMPTY_DIR_BYTES:
                continue
            found += 1
            if repair:
                fresh = self.disk.tmp_path()
                os.mkdir(fresh, 0o700)
                os.rename(fresh, path)  # replaces the empty directory atomically
                self.disk.mark_dirty(self.root)
                self.disk.mark_dirty(fresh.parent)
        return found

    def _remove_empty_parents(self, path: Path, *, stop: Path) -> None:
        """Remove the now empty directories above ``path`` up to (not including) ``stop``.

        Deleted keys and dropped streams would otherwise leave their directories
        behind, each holding a block of disk for ever.
        """
        directory = path.parent
        while directory != stop and stop in directory.parents:
            try:
                os.rmdir(directory)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            self.disk.mark_dirty(directory.parent)
            directory = directory.parent

    def apply_batch(self, batch: Batch) -> None:
        """Apply a planned batch durably; through the journal if a commit in it needs one."""
        intent = batch.intent()
        effects = len(intent.records) + len(intent.entries)
        if effects == 0:
            return
        if not (batch.needs_journal and effects > 1):
            # Every change is atomic alone, and none is acknowledged before all are durable.
            self._apply(intent)
            self.disk.flush()
            return
        journal = self.root / JOURNAL
        self.disk.replace(journal, _fs_journal.pack(intent))
        self.disk.flush()
        self._apply(intent)
        self.disk.flush()
        self.disk.unlink(journal)
        self.disk.flush()

    def _apply(self, intent: Intent) -> None:
        """Apply an intent; idempotent, so a journal can be rolled forward any number of times."""
        writes: list[tuple[Path, bytes]] = []
        removed: list[Path] = []
        for change in intent.records:
            path = self.record_path(change.namespace, change.key)
            if change.data is None:
                if self.disk.unlink(path):
                    removed.append(path)
            else:
                self.disk.ensure_dir(path.parent)
                writes.append((path, change.data))
        self.disk.replace_many(writes)
        for path in removed:  # after the writes: one of them may go into the same directory
            self._remove_empty_parents(path, stop=self.root / RECORDS)
        by_stream: dict[str, list[EntryChange]] = {}
        for entry in intent.entries:
            by_stream.setdefault(entry.stream, []).append(entry)
        for stream, items in by_stream.items():
            tail = self._tail(stream)
            last = tail.last_seq if tail is not None else 0
            todo = [(e.seq, e.appended_at, e.payload) for e in items if e.seq > last]
            if not todo:
                continue
            if todo[0][0] != last + 1:
                raise StorageCorrupted(
                    f"the journal continues stream {stream!r} at {todo[0][0]} but it ends at "
                    f"{last}: restore {self.stream_dir(stream)} from a backup",
                    path=str(self.stream_dir(stream)),
                )
            self._tails[stream] = append_entries(
                self.stream_dir(stream),
                tail,
                todo,
                self.disk,
                segment_bytes=self._segment_bytes,
            )

    def recover(self) -> None:
        """Roll a complete journal forward; refuse one that is damaged.

        A journal only ever appears by an atomic rename after being fsynced,
        so a damaged one means the disk lost data, and its commit may already
        be partly applied (the writer applies right after the journal is
        durable). Discarding it could leave that commit half done without a
        word, so it is reported as ``StorageCorrupted`` and left in place for
        the operator (``taskloom doctor`` names it too).
        """
        journal = self.root / JOURNAL
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            return
        self._tails.clear()
        try:
            intent = _fs_journal.unpack(data)
        except ValueError as exc:
            raise StorageCorrupted(
                f"commit journal {journal} is damaged ({exc}), so the commit it describes may "
                "be half applied; nothing was changed: restore the store from a backup, or move "
                "the journal out of the store to accept that commit as it stands",
                path=str(journal),
            ) from None
        self._apply(intent)
        self.disk.flush()
        self.disk.unlink(journal)
        self.disk.flush()


def _record(namespace: str, key: str, head: _fs_records.RecordHead, value: bytes) -> Record:
    return Record(
        namespace=namespace,
        key=key,
        value=value,
        version=head.version,
        updated_at=head.updated_at,
        expires_at=head.expires_at,
    )
