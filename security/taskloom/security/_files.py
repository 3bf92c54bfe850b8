"""Walk and read a plugin directory without following anything out of it.

Both the manifest builder and the verifier see the directory through this
module, so they agree on what "the files of a plugin" are: regular files only,
reached through directories opened relative to their parent with
``O_NOFOLLOW`` -- a symlink anywhere (file or directory) is refused, never
followed, and a directory swapped for a symlink between the walk and the read
cannot redirect a read outside the plugin. Paths are relative, ``/``-separated.

POSIX only: it needs ``dir_fd`` support in ``os.open`` and ``os.scandir``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from taskloom.contracts import UsageError
from taskloom.security._errors import UnsafeFile

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)

MAX_PATH_BYTES = 1024
"""Longest relative path a manifest may list, in UTF-8 bytes."""


def check_relative_path(path: str) -> None:
    """Refuse a listed path that could address anything outside the plugin directory."""
    reason = None
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        reason = f"must be 1 to {MAX_PATH_BYTES} bytes"
    elif path.startswith("/") or "\\" in path:
        reason = "must be relative and use '/' as separator"
    elif any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        reason = "contains a control character"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        reason = "has an empty, '.' or '..' segment"
    else:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            reason = "is not valid Unicode"
    if reason is not None:
        raise UnsafeFile(
            f"path {path[:80]!r} {reason}: the manifest may only list files inside the plugin"
        )


class PluginTree:
    """An open plugin directory: its regular files, directories, and what to refuse.

    Use as a context manager; directory descriptors stay open until exit, so
    files are read from exactly the directories that were walked.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self._root_fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise UnsafeFile(
                f"cannot open plugin directory {self.root}: {exc.strerror or exc}; "
                "give the path of a real directory (not a symlink)"
            ) from exc
        self._dirs: dict[str, int] = {"": self._root_fd}
        self.files: list[str] = []
        self.empty_dirs: list[str] = []
        try:
            self._walk("", self._root_fd)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PluginTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every directory descriptor (idempotent)."""
        dirs, self._dirs = self._dirs, {}
        for fd in dirs.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _walk(self, prefix: str, fd: int) -> None:
        with os.scandir(fd) as entries:
            listing = sorted(entries, key=lambda e: e.name)
        if not listing and prefix:
            self.empty_dirs.append(prefix.rstrip("/"))
        for entry in listing:
            rel = prefix + entry.name
            if entry.is_symlink():
                raise UnsafeFile(
                    f"{rel!r} in {self.root} is a symlink; plugins may not contain symlinks: "
                    "replace it with the file itself"
                )
            if entry.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise UnsafeFile(
                        f"cannot open directory {rel!r} in {self.root}: {exc.strerror or exc}"
                    ) from exc
                self._dirs[rel] = sub
                self._walk(rel + "/", sub)
            elif entry.is_file(follow_symlinks=False):
                self.files.append(rel)
            else:
                raise UnsafeFile(
                    f"{rel!r} in {self.root} is not a regular file (a device, FIFO or socket); "
                    "remove it from the plugin directory"
                )

    def directories(self) -> Iterator[str]:
        """Relative paths of every directory below the root."""
        return (d for d in self._dirs if d)

    def read(self, path: str, *, limit: int) -> bytes:
        """Read ``path`` once, refusing anything but a regular file; at most ``limit`` + 1 bytes.

        Returning ``limit + 1`` bytes tells the caller the file is longer than
        expected without reading all of it.
        """
        parent, _, name = path.rpartition("/")
        dir_fd = self._dirs.get(parent)
        if dir_fd is None:
            raise UnsafeFile(f"{path!r}: its directory is not part of the walked plugin tree")
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise UnsafeFile(
                f"cannot open {path!r} in {self.root} ({exc.strerror or exc}): it was removed "
                "or replaced by a symlink; reinstall the plugin"
            ) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeFile(f"{path!r} in {self.root} is not a regular file")
            chunks = []
            remaining = limit + 1
            while remaining > 0:
                chunk = os.read(fd, remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)


def require_posix() -> None:
    """Refuse to run where descriptors relative to a directory are not available."""
    if os.open not in os.supports_dir_fd or os.scandir not in os.supports_fd:
        raise UsageError("plugin verification needs a POSIX system (dir_fd support)")
