"""Counter-incrementing worker for FileStorage's multi-process CAS test.

Usage: ``fs_counter_worker.py ROOT TASKS INCREMENTS COUNTERS SEED``. Runs TASKS
concurrent tasks; each adds 1 to a random one of COUNTERS shared counters,
INCREMENTS times, by get + put(if_version=...) and retrying on ConflictError.
Prints the number of conflicts it retried, so the test can see contention.
"""

from __future__ import annotations

import asyncio
import random
import sys

from taskloom.adapters.filesystem import FileStorage
from taskloom.contracts import ConflictError


async def _increment(storage: FileStorage, key: str) -> int:
    conflicts = 0
    while True:
        record = await storage.get("counters", key)
        current = 0 if record is None else int(record.value)
        version = 0 if record is None else record.version
        try:
            await storage.put("counters", key, str(current + 1).encode(), if_version=version)
            return conflicts
        except ConflictError:
            conflicts += 1


async def _main(root: str, tasks: int, increments: int, counters: int, seed: int) -> int:
    rng = random.Random(seed)
    async with FileStorage(root, fsync=False) as storage:

        async def worker(task_seed: float) -> int:
            local = random.Random(task_seed)
            total = 0
            for _ in range(increments):
                total += await _increment(storage, f"c{local.randrange(counters)}")
            return total

        results = await asyncio.gather(*(worker(rng.random()) for _ in range(tasks)))
    return sum(results)


if __name__ == "__main__":
    root, tasks, increments, counters, seed = sys.argv[1:]
    conflicts = asyncio.run(_main(root, int(tasks), int(increments), int(counters), int(seed)))
    print(conflicts, flush=True)
