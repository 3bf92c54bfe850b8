"""Dies at a chosen point inside a journaled commit, for ``test_filesystem_journal.py``.

Usage: ``fs_journal_worker.py ROOT POINT``. Writes a little state, then makes
the commit [put a, put b, delete gone, append two, append three] and exits with
``os._exit(9)`` (as abruptly as SIGKILL: no cleanup, no flush) at POINT:

    before-journal   while the journal is being built (nothing on disk yet)
    after-journal    the journal is durable, nothing applied
    mid-records      one record file replaced, the rest not
    mid-streams      records applied, stream entries not
    before-unlink    everything applied, the journal still there
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from taskloom.adapters.filesystem import FileStorage
from taskloom.adapters.filesystem import _core as _fs_core
from taskloom.adapters.filesystem import _io as _fs_io
from taskloom.adapters.filesystem import _journal as _fs_journal
from taskloom.contracts import Append, Delete, Put


def _die(*args: Any, **kwargs: Any) -> Any:
    os._exit(9)


def _install(point: str) -> None:
    if point == "before-journal":
        _fs_journal.pack = _die  # type: ignore[assignment]
    elif point == "after-journal":
        _fs_core.Store._apply = _die  # type: ignore[method-assign]
    elif point == "mid-records":
        real = _fs_io.Disk.replace_many

        def first_then_die(self: _fs_io.Disk, items: Any) -> None:
            real(self, items[:1])
            os._exit(9)

        _fs_io.Disk.replace_many = first_then_die  # type: ignore[method-assign]
    elif point == "mid-streams":
        _fs_core.append_entries = _die
    elif point == "before-unlink":
        real_unlink = _fs_io.Disk.unlink

        def unlink(self: _fs_io.Disk, path: Path) -> bool:
            if path.name == _fs_core.JOURNAL:
                os._exit(9)
            return real_unlink(self, path)

        _fs_io.Disk.unlink = unlink  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {point}")


async def _main(root: str, point: str) -> None:
    async with FileStorage(root, fsync=True) as storage:
        await storage.put("ns", "gone", b"old")
        await storage.append("s", b"one")
        _install(point)
        await storage.commit(
            [
                Put(namespace="ns", key="a", value=b"A"),
                Put(namespace="ns", key="b", value=b"B"),
                Delete(namespace="ns", key="gone"),
                Append(stream="s", payload=b"two"),
                Append(stream="s", payload=b"three"),
            ]
        )
    print("survived", flush=True)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
