"""A StorageAdapter in one directory: ``FileStorage``.

Records are files, streams are append-only segment files, a pair of ``flock``
files lets several processes share the directory, and a journal makes
``commit`` atomic across files. Every name is encoded (lowercase base32hex,
chunked) so no key can leave the directory or collide with another, even on
case-insensitive filesystems. POSIX only: it relies on ``fcntl.flock``.

    async with FileStorage("/var/lib/myapp/taskloom") as storage:
        await storage.put("runs", "r1", b"{}")

See ``FileStorage`` for the guarantees and ``_core`` for the layout on disk.
"""

from __future__ import annotations

from taskloom.adapters.filesystem._storage import DEFAULT_SEGMENT_BYTES, FileStorage

__all__ = ["DEFAULT_SEGMENT_BYTES", "FileStorage"]
