"""A StorageAdapter in one directory: ``FileStorage``.

Records are files, streams are append-only segment files, a ``flock`` lets
several processes share the directory, and a journal makes ``commit`` atomic
across files. See ``FileStorage`` for the guarantees and ``_fs_core`` for the
layout on disk.
"""

from __future__ import annotations

from taskloom.adapters._fs_storage import DEFAULT_SEGMENT_BYTES, FileStorage

__all__ = ["DEFAULT_SEGMENT_BYTES", "FileStorage"]
