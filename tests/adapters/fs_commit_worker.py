"""Commit writer for FileStorage's reader-isolation test.

Usage: ``fs_commit_worker.py ROOT COMMITS KEYS``. Makes COMMITS commits, each
putting the same value (the commit's number) into KEYS keys of namespace
``iso`` and appending that number to stream ``iso`` twice, then prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys

from taskloom.adapters.filesystem import FileStorage
from taskloom.contracts import Append, Op, Put


async def _main(root: str, commits: int, keys: int) -> None:
    async with FileStorage(root, fsync=False) as storage:
        for number in range(1, commits + 1):
            value = str(number).encode()
            ops: list[Op] = [
                Put(namespace="iso", key=f"k{i:02d}", value=value) for i in range(keys)
            ]
            ops += [Append(stream="iso", payload=value), Append(stream="iso", payload=value)]
            await storage.commit(ops)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
