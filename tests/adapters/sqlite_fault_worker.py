"""Worker process for the SQLite fault tests; each mode prints one result line.

``hold DB SECONDS``      take the write lock (BEGIN IMMEDIATE), print ``locked``,
                         hold it SECONDS, then commit and print ``released``.
``fill DB LIMIT``        cap this process's file size at LIMIT bytes (RLIMIT_FSIZE),
                         put 16 KiB values until the disk "fills"; print ``P KEY`` per
                         acknowledged put, then ``FULL ErrorType`` and finally
                         ``VERIFIED N`` after re-reading every acknowledged key.
``open DB``              open SQLiteStorage and print ``OK`` or ``ERROR Type message``.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sqlite3
import sys
import time

from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import TaskloomError


def hold(db: str, seconds: float) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()
    print("released", flush=True)


async def fill(db: str, limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    storage = await SQLiteStorage.open(db, purge_interval_s=None)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    acked: list[str] = []
    try:
        for i in range(100_000):
            key = f"k{i}"
            await storage.put("fill", key, bytes([i % 256]) * 16384)
            acked.append(key)
            print(f"P {key}", flush=True)
    except TaskloomError as exc:
        print(f"FULL {type(exc).__name__} {str(exc).splitlines()[0]}", flush=True)
    for key in acked:
        record = await storage.get("fill", key)
        assert record is not None and len(record.value) == 16384, key
    await storage.aclose()
    async with SQLiteStorage(db, purge_interval_s=None) as again:
        for key in acked:
            assert await again.get("fill", key) is not None, key
    print(f"VERIFIED {len(acked)}", flush=True)


async def open_only(db: str) -> None:
    try:
        async with SQLiteStorage(db, purge_interval_s=None) as storage:
            await storage.get("ns", "k")
            await storage.put("ns", "written", b"x")
    except TaskloomError as exc:
        print(f"ERROR {type(exc).__name__} {exc}", flush=True)
        return
    print("OK", flush=True)


if __name__ == "__main__":
    mode, db = sys.argv[1], sys.argv[2]
    if mode == "hold":
        hold(db, float(sys.argv[3]))
    elif mode == "fill":
        asyncio.run(fill(db, int(sys.argv[3])))
    else:
        asyncio.run(open_only(db))
