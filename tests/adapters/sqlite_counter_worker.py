"""Worker process for the SQLite concurrency test: CAS increments of shared counters.

``python sqlite_counter_worker.py DB TASKS INCREMENTS COUNTERS [plain]`` runs TASKS
asyncio tasks; each increments counter ``n % COUNTERS`` INCREMENTS times with
get, then put(if_version=...), retrying on ConflictError. With ``plain``, each
task instead does INCREMENTS plain puts (no version check) to key ``p{n %
COUNTERS}``, so only the version counts them. Several of these processes run at
once on one (possibly not yet created) database. Prints ``done CONFLICTS``.
"""

from __future__ import annotations

import asyncio
import sys

from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import ConflictError


async def _increment(storage: SQLiteStorage, key: str, times: int) -> int:
    conflicts = 0
    for _ in range(times):
        while True:
            record = await storage.get("counters", key)
            count = int(record.value) if record else 0
            try:
                await storage.put(
                    "counters",
                    key,
                    str(count + 1).encode(),
                    if_version=record.version if record else 0,
                )
                break
            except ConflictError:
                conflicts += 1
    return conflicts


async def _plain(storage: SQLiteStorage, key: str, times: int) -> int:
    for i in range(times):
        await storage.put("plain", key, str(i).encode())
    return 0


async def main(db: str, tasks: int, increments: int, counters: int, plain: bool) -> None:
    work = _plain if plain else _increment
    prefix = "p" if plain else "c"
    async with SQLiteStorage(db, busy_timeout_s=30.0, purge_interval_s=None) as storage:
        results = await asyncio.gather(
            *(work(storage, f"{prefix}{n % counters}", increments) for n in range(tasks))
        )
    print(f"done {sum(results)}", flush=True)


if __name__ == "__main__":
    numbers = [int(arg) for arg in sys.argv[2:5]]
    asyncio.run(main(sys.argv[1], *numbers, plain=sys.argv[5:6] == ["plain"]))
