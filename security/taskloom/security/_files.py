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
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from taskloom.contracts import UsageError
from taskloom.security._errors import UnsafeFile

# getattr: these flags do not exist on Windows, where require_posix refuses to run;
# importing the module must still work there.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)

MAX_PATH_BYTES = 1024
"""Longest relative path a manifest may list, in UTF-8 bytes."""


_SEGMENT = r"(?!\.\.?(?:/|\Z))[^/\\\x00-\x1f\x7f]+"
SAFE_PATH = re.compile(rf"(?:{_SEGMENT}/)*{_SEGMENT}")


def check_relative_path(path: str) -> None:
    """Refuse a listed path that could address anything outside the plugin directory.

    Accepted: one or more '/'-separated segments, none empty, '.' or '..', with
    no backslash or control character, valid Unicode, at most MAX_PATH_BYTES.
    """
    reason = None
    if not SAFE_PATH.fullmatch(path):
        reason = "must be relative, '/'-separated, with no empty, '.' or '..' segment"
        if path.startswith("/") or "\\" in path:
            reason = "must be relative and use '/' as separator"
        elif any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
            reason = "contains a control character"
    elif path.isascii():
        if len(path) > MAX_PATH_BYTES:
            reason = f"is longer than {MAX_PATH_BYTES} bytes"
    else:
        try:
            size = len(path.encode("utf-8"))
        except UnicodeEncodeError:
            reason = "is not valid Unicode"
        else:
            if size > MAX_PATH_BYTES:
                reason = f"is longer than {MAX_PATH_BYTES} bytes"
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
        require_posix()
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
            listing = list(entries)
        if not listing and prefix:
            self.empty_dirs.append(prefix.rstrip("/"))
        for entry in listing:
            # DirEntry answers from the directory listing (d_type), without a stat;
            # with follow_symlinks=False a symlink is neither a file nor a directory.
            if entry.is_file(follow_symlinks=False):
                self.files.append(prefix + entry.name)
            elif entry.is_dir(follow_symlinks=False):
                rel = prefix + entry.name
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise UnsafeFile(
                        f"cannot open directory {rel!r} in {self.root}: {exc.strerror or exc}"
                    ) from exc
                self._dirs[rel] = sub
                self._walk(rel + "/", sub)
            elif entry.is_symlink():
                raise UnsafeFile(
                    f"{prefix + entry.name!r} in {self.root} is a symlink; plugins may not "
                    "contain symlinks: replace it with the file itself"
                )
            else:
                raise UnsafeFile(
                    f"{prefix + entry.name!r} in {self.root} is not a regular file (a device, "
                    "FIFO or socket); remove it from the plugin directory"
                )

    def directories(self) -> Iterator[str]:
        """Relative paths of every directory below the root."""
        return (d for d in self._dirs if d)

    def read_exact(self, path: str, size: int | None, *, max_size: int = 1 << 62) -> bytes | None:
        """Read ``path`` once if it holds exactly ``size`` bytes, else None.

        ``size=None`` reads the whole file (checked to be regular with fstat),
        refusing one larger than ``max_size`` before reading any of it.
        With a size, ``size + 1`` bytes are asked for in one read: a regular file
        of the right length answers with exactly ``size``; a longer one gives
        itself away, a shorter one reads short. The walk already saw a regular
        file here; if it was swapped since, ``O_NOFOLLOW`` refuses a symlink and
        ``O_NONBLOCK`` keeps a FIFO from blocking. Either way the bytes returned
        are the bytes the caller hashes and keeps.
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
            if size is None:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise UnsafeFile(f"{path!r} in {self.root} is not a regular file")
                size = info.st_size
                if size > max_size:
                    raise UsageError(f"{path!r} is larger than {max_size} bytes")
            try:
                data = os.read(fd, size + 1)
                if len(data) < size and data:
                    chunks = [data]
                    remaining = size + 1 - len(data)
                    while remaining > 0:
                        chunk = os.read(fd, remaining)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        remaining -= len(chunk)
                    data = b"".join(chunks)
            except OSError as exc:  # EAGAIN from a FIFO swapped in, EISDIR, ...
                raise UnsafeFile(
                    f"cannot read {path!r} in {self.root} ({exc.strerror or exc}): "
                    "it is not a regular file; reinstall the plugin"
                ) from exc
            return data if len(data) == size else None
        finally:
            os.close(fd)


def require_posix() -> None:
    """Refuse to run where descriptors relative to a directory are not available."""
    if os.open not in os.supports_dir_fd or os.scandir not in os.supports_fd:
        raise UsageError("plugin verification needs a POSIX system (dir_fd support)")
