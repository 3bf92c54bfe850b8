"""Writer process for the SQLite crash tests: a zygote that forks writers on demand.

Started once per test as ``python sqlite_crash_worker.py``, it imports everything
and then reads commands on stdin, one per line:

``run SEED DB ACKFILE``  fork a writer on DB; reply with its pid. The writer's stdout
                         is ACKFILE; it prints ``started`` and then one line per
                         acknowledged operation (flushed), until it is killed.
``reap PID``             wait for that writer to end; reply ``reaped STATUS``.

Forking from an already-initialized interpreter makes one crash cycle cost a few
milliseconds instead of an interpreter start, so a CI run affords many SIGKILLs.
The zygote starts no threads and no event loop, so forking it is safe.

Ack lines (values are unique per operation, so a stored value names its write):
``P KEY VERSION VALUE``    a put of namespace "p" returned
``A STREAM SEQ PAYLOAD``   an append returned
``C VERSION SEQ TAG``      a commit of Put c/a, Put c/b, Append "cs" (all TAG) returned
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import Append, ConflictError, Put

TASKS = 8


async def _task(storage: SQLiteStorage, rng: random.Random, run: str, task: int) -> None:
    i = 0
    while True:
        i += 1
        tag = f"{run}:{task}:{i}"
        choice = rng.random()
        if choice < 0.4:
            key = f"k{rng.randrange(12)}"
            record = await storage.put("p", key, tag.encode())
            print(f"P {key} {record.version} {tag}", flush=True)
        elif choice < 0.55:
            key = f"k{rng.randrange(12)}"
            current = await storage.get("p", key)
            try:
                record = await storage.put(
                    "p", key, tag.encode(), if_version=current.version if current else 0
                )
            except ConflictError:
                continue
            print(f"P {key} {record.version} {tag}", flush=True)
        elif choice < 0.8:
            stream = f"s{rng.randrange(3)}"
            entry = await storage.append(stream, tag.encode())
            print(f"A {stream} {entry.seq} {tag}", flush=True)
        else:
            value = tag.encode()
            result = await storage.commit(
                [
                    Put(namespace="c", key="a", value=value),
                    Put(namespace="c", key="b", value=value),
                    Append(stream="cs", payload=value),
                ]
            )
            print(f"C {result.records[0].version} {result.entries[0].seq} {tag}", flush=True)


async def _writer(db: str, seed: int) -> None:
    rng = random.Random(seed)
    storage = await SQLiteStorage.open(db, purge_interval_s=None)
    print("started", flush=True)
    await asyncio.gather(
        *(_task(storage, random.Random(rng.random()), str(seed), t) for t in range(TASKS))
    )


def _child(seed: int, db: str, ackfile: str) -> None:
    fd = os.open(ackfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        asyncio.run(_writer(db, seed))
    finally:
        os._exit(1)


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "run":
            seed, db, ackfile = int(parts[1]), parts[2], parts[3]
            pid = os.fork()
            if pid == 0:
                _child(seed, db, ackfile)
            print(pid, flush=True)
        elif parts[0] == "reap":
            _, status = os.waitpid(int(parts[1]), 0)
            print(f"reaped {status}", flush=True)


if __name__ == "__main__":
    main()
