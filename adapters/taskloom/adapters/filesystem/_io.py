"""Low-level file operations for FileStorage: durable writes, the lock, error translation.

Everything that can raise ``OSError`` in FileStorage goes through plain ``os``
calls in worker threads; ``translate_os_errors`` is the single boundary where
those become ``StorageUnavailable`` (so callers only ever see taskloom's errors).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from taskloom.contracts import (
    StorageFull,
    StoragePermissionDenied,
    StorageReadOnly,
    StorageUnavailable,
)

_T = TypeVar("_T")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CHUNK = 128
"""Files written per round of parallel fsyncs (bounds the open descriptors)."""
_PARALLEL = 16
"""Threads issuing fsyncs at once."""
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free some space, then retry",
    errno.EDQUOT: "the disk quota is exhausted: free some space, then retry",
    errno.EROFS: "the filesystem is read-only: remount it read-write or choose another root",
    errno.EACCES: "permission denied: check the owner and mode of the storage directory",
    errno.EPERM: "operation not permitted: check the owner and mode of the storage directory",
    errno.EIO: "the disk reported an I/O error: check the device",
    errno.ENAMETOOLONG: "a path is too long: choose a shorter root directory",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files in the system: raise the limit",
}


_KINDS: dict[int, type[StorageUnavailable]] = {
    errno.ENOSPC: StorageFull,
    errno.EDQUOT: StorageFull,
    errno.EROFS: StorageReadOnly,
    errno.EACCES: StoragePermissionDenied,
    errno.EPERM: StoragePermissionDenied,
}
"""The specific kinds of ``StorageUnavailable``; any other errno is the general one."""


def unavailable(root: Path, exc: OSError) -> StorageUnavailable:
    """Build the ``StorageUnavailable`` for ``exc`` (which happened under ``root``).

    The cause is set here, not only by ``raise ... from``, because errors of a
    write batch travel to their callers through futures.
    """
    hint = _HINTS.get(exc.errno or 0, "check the storage directory and retry")
    where = exc.filename if exc.filename is not None else root
    kind = _KINDS.get(exc.errno or 0, StorageUnavailable)
    error = kind(f"file storage at {root} cannot be used: {exc.strerror or exc} ({where}); {hint}")
    error.__cause__ = exc
    return error


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(path)


def write_new_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Create ``path`` (which must not exist), write ``data`` and optionally fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def replace_file(tmp: Path, data: bytes, target: Path, *, fsync: bool) -> None:
    """Atomically make ``target`` hold ``data``: write ``tmp``, fsync, rename over ``target``.

    A crash leaves either the old file or the new one, never a mixture; the
    caller fsyncs ``target``'s directory to make the rename itself durable.
    """
    write_new_file(tmp, data, fsync=fsync)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FileLock:
    """An ``flock`` on one open file description of the lock file.

    ``flock`` locks belong to the open file description, so two instances in
    one process exclude each other just like two processes do. Waiting polls
    with a deadline rather than blocking forever: a hung process that holds the
    lock turns into ``StorageUnavailable`` instead of a hang.
    """

    def __init__(self, path: Path, *, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)

    def acquire(self, *, exclusive: bool) -> None:
        """Take the lock (shared or exclusive), waiting at most the timeout."""
        if self._fd is None:
            raise RuntimeError("lock is closed")
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + self._timeout
        pause = 0.0002
        while True:
            try:
                fcntl.flock(self._fd, mode)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageUnavailable(
                        f"file storage lock {self._path} is held by another process for more "
                        f"than {self._timeout:g} s: retry later, or find the process holding it"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)

    def release(self) -> None:
        """Release the lock (a no-op if it is not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file descriptor; the lock, if held, goes with it."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @contextlib.contextmanager
    def held(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the lock for the duration of the ``with`` block."""
        self.acquire(exclusive=exclusive)
        try:
            yield
        finally:
            self.release()


class Disk:
    """Durable file operations under one root, with directory fsyncs batched.

    Renames and creations are only durable once their directory is fsynced.
    Doing that once per directory per batch of writes, instead of once per
    write, is what makes many concurrent small writes affordable: writers call
    ``flush`` before they acknowledge anything.
    """

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.fsync = fsync
        self._dirty: set[Path] = set()
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"
        self._counter = 0
        self._pool: ThreadPoolExecutor | None = None

    def tmp_path(self) -> Path:
        """A fresh temporary file name in the root's ``tmp`` directory (same filesystem)."""
        self._counter += 1
        return self.tmp_dir / f"{self._prefix}{self._counter}.tmp"

    def ensure_dir(self, path: Path) -> None:
        """Create ``path`` and missing parents; their parents are fsynced at ``flush``."""
        if os.path.isdir(path):
            return
        self.ensure_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        self._dirty.add(path.parent)

    def replace(self, target: Path, data: bytes) -> None:
        """Atomically make ``target`` hold ``data`` (durable after ``flush``)."""
        replace_file(self.tmp_path(), data, target, fsync=self.fsync)
        self._dirty.add(target.parent)

    def replace_via(self, tmp: Path, target: Path, data: bytes) -> None:
        """Like ``replace`` with a given temporary path (before ``tmp/`` exists)."""
        replace_file(tmp, data, target, fsync=self.fsync)
        self._dirty.add(target.parent)

    def unlink(self, path: Path) -> bool:
        """Remove ``path`` if it exists (durable after ``flush``); True if it existed."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        self._dirty.add(path.parent)
        return True

    def replace_many(self, items: Sequence[tuple[Path, bytes]]) -> None:
        """Like ``replace`` for many files, with their fsyncs issued in parallel.

        A journaling filesystem folds concurrent fsyncs into one journal
        commit, so N files cost about one fsync instead of N. Files are handled
        in chunks to bound the number of open descriptors.
        """
        for start in range(0, len(items), _CHUNK):
            self._replace_chunk(items[start : start + _CHUNK])

    def _replace_chunk(self, items: Sequence[tuple[Path, bytes]]) -> None:
        opened: list[tuple[int, Path, Path]] = []
        try:
            for target, data in items:
                tmp = self.tmp_path()
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
                opened.append((fd, tmp, target))
                write_all(fd, data)
            if self.fsync:
                self._each([fd for fd, _, _ in opened], os.fsync)
        except BaseException:
            for fd, tmp, _ in opened:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        for fd, _, _ in opened:
            os.close(fd)
        for index, (_, tmp, target) in enumerate(opened):
            try:
                os.replace(tmp, target)
            except BaseException:
                for _, left, _ in opened[index:]:
                    with contextlib.suppress(OSError):
                        os.unlink(left)
                raise
            self._dirty.add(target.parent)

    def _each(self, items: Sequence[_T], action: Callable[[_T], object]) -> None:
        """Run ``action`` on every item, in parallel threads when there are several."""
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_PARALLEL, thread_name_prefix="taskloom-fs-sync")
        list(self._pool.map(action, items))  # waits for all; raises the first failure

    def close(self) -> None:
        """Stop the fsync threads (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def mark_dirty(self, directory: Path) -> None:
        """Note that ``directory``'s entries changed (a rename or rmdir in it): fsync at flush."""
        self._dirty.add(directory)

    def sync_file(self, fd: int) -> None:
        """fsync an open file if this store is durable."""
        if self.fsync:
            os.fsync(fd)

    def flush(self) -> None:
        """fsync every directory changed since the last flush."""
        dirty, self._dirty = self._dirty, set()
        if self.fsync:
            self._each(sorted(dirty), _fsync_dir_if_present)


class SharedLock:
    """A writer-preferring reader/writer lock across processes, made of two flock files.

    ``flock`` alone lets a steady stream of readers starve a writer: some
    reader always holds the shared lock. So every reader passes a gate first
    (shared, held only while it takes the main lock) and a writer holds the
    gate exclusively while it waits for the main lock: once a writer is at the
    gate, new readers wait and the ones inside finish. The gate is always
    taken before the main lock, and the holder of the main lock never waits
    for the gate, so the two cannot deadlock.
    """

    def __init__(self, gate: Path, main: Path, *, timeout: float) -> None:
        self._gate = FileLock(gate, timeout=timeout)
        try:
            self._main = FileLock(main, timeout=timeout)
        except BaseException:
            self._gate.close()
            raise

    @contextlib.contextmanager
    def held(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the lock shared (readers) or exclusive (writers) for the ``with`` block."""
        with self._gate.held(exclusive=exclusive):
            self._main.acquire(exclusive=exclusive)
        try:
            yield
        finally:
            self._main.release()

    def close(self) -> None:
        """Close both file descriptors (idempotent)."""
        self._gate.close()
        self._main.close()
