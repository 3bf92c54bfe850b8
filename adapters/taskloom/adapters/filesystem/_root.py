"""Recognising a FileStorage root: the marker file and what a foreign directory looks like.

Opening a directory that holds someone else's files must not scatter ours
among them, and opening a store written by a newer taskloom must not rewrite
it in an older format. So a root carries a marker naming the format and its
version; a non-empty directory without one, or a marker we do not understand,
is refused with ``StorageCorrupted`` before anything is created in it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from taskloom.adapters.filesystem._io import Disk
from taskloom.contracts import StorageCorrupted

FORMAT = "taskloom-filesystem"
FORMAT_VERSION = 1
MARKER = "taskloom-store.json"
MARKER_TMP = ".taskloom-store.json.tmp"
LOCK = "taskloom.lock"
GATE = "taskloom.gate"

_OURS_BEFORE_MARKER = frozenset({LOCK, GATE, MARKER_TMP})
"""What a root may hold before its marker exists: another opener may be creating it."""
_OUR_DIRS = frozenset({"records", "streams", "tmp"})
"""Directories an opener creates before the marker (allowed while they are empty)."""


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not os.listdir(path)


def check(root: Path) -> None:
    """Refuse ``root`` unless it is empty, being created by us, or marked as our format."""
    marker = root / MARKER
    if marker.exists():
        check_marker(root)
        return
    extra = {
        name
        for name in set(os.listdir(root)) - _OURS_BEFORE_MARKER
        if not (name in _OUR_DIRS and _empty_dir(root / name))
    }
    if extra:
        shown = ", ".join(sorted(extra)[:5])
        raise StorageCorrupted(
            f"{root} is not empty and has no {MARKER}, so it is not a taskloom file "
            f"store (it holds {shown}); nothing was changed: choose an empty or new directory",
            path=str(root),
        )


def check_marker(root: Path) -> None:
    """Refuse a marker that is not ours or names a format newer than this taskloom's."""
    marker = root / MARKER
    try:
        meta = json.loads(marker.read_bytes())
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StorageCorrupted(
            f"{marker} is not a taskloom file store marker; nothing was changed: "
            "choose another directory or restore the marker from a backup",
            path=str(marker),
        )
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StorageCorrupted(
            f"{marker} names no valid format version ({version!r}): restore it from a backup",
            path=str(marker),
        )
    if version > FORMAT_VERSION:
        raise StorageCorrupted(
            f"file store at {root} was written by a newer taskloom (format {version}, "
            f"this is {FORMAT_VERSION}); nothing was changed: upgrade taskloom",
            path=str(marker),
        )


def mark(root: Path, disk: Disk) -> None:
    """Check ``root`` again and write the marker if it has none (under the exclusive lock)."""
    check(root)
    marker = root / MARKER
    if marker.exists():
        return
    text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / MARKER_TMP)  # left by an opener that crashed
    disk.replace_via(root / MARKER_TMP, marker, text.encode())
