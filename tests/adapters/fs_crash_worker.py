"""Crash-test writer for FileStorage, run as a zygote by ``test_filesystem_crash.py``.

The zygote imports everything once, then forks a writer per command so that
each of the many kills costs a fork instead of an interpreter start. Commands on
stdin, one per line:

    run ROOT ACKFILE RUN_ID SEED FSYNC FIRST_TASK
                                         fork a writer for tasks FIRST_TASK.. FIRST_TASK+3;
                                         reply with its pid
    wait PID                             reap a (killed) writer; reply "dead STATUS"

A writer's stdout is its ACKFILE. It runs several concurrent tasks against the
store at ROOT and prints one line per acknowledged operation, flushed at once:

    P KEY VALUE                 put of VALUE to KEY returned
    A STREAM SEQ PAYLOAD        append returned SEQ
    C TOKEN SEQ                 commit TOKEN returned; its entry in stream "cs" is SEQ

Values and tokens are ``RRRR-NNNNNNNN`` (run id, counter), so they order as text.
A commit by task T with counter N writes keys ``ca-T`` and ``cb-T`` = TOKEN, appends
``T:TOKEN`` to stream ``cs``, and puts ``cd-T`` = TOKEN when N is odd, deletes it
when N is even: a partly applied commit shows as a mismatch.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from taskloom.adapters.filesystem import FileStorage
from taskloom.contracts import Append, Delete, Put

TASKS = 4


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _task(storage: FileStorage, task: int, run_id: int, rng: random.Random) -> None:
    counter = 0
    while True:
        counter += 1
        token = f"{run_id:04d}-{counter:08d}"
        kind = rng.random()
        if kind < 0.35:
            key = f"p-{task}-{rng.randrange(3)}"
            await storage.put("kv", key, token.encode())
            _say(f"P {key} {token}")
        elif kind < 0.65:
            stream = f"s-{task}"
            entry = await storage.append(stream, token.encode())
            _say(f"A {stream} {entry.seq} {token}")
        else:
            ops: list[Put | Delete | Append] = [
                Put(namespace="kv", key=f"ca-{task}", value=token.encode()),
                Append(stream="cs", payload=f"{task}:{token}".encode()),
                Put(namespace="kv", key=f"cb-{task}", value=token.encode()),
            ]
            if counter % 2:
                ops.append(Put(namespace="kv", key=f"cd-{task}", value=token.encode()))
            else:
                ops.append(Delete(namespace="kv", key=f"cd-{task}"))
            result = await storage.commit(ops)
            _say(f"C {task}:{token} {result.entries[0].seq}")


async def _write(root: str, run_id: int, seed: int, fsync: bool, first_task: int) -> None:
    rng = random.Random(seed)
    async with FileStorage(root, fsync=fsync, segment_bytes=512) as storage:
        _say("started")
        async with asyncio.TaskGroup() as group:
            for task in range(first_task, first_task + TASKS):
                group.create_task(_task(storage, task, run_id, random.Random(rng.random())))


def _fork_writer(
    root: str, ackfile: str, run_id: int, seed: int, fsync: bool, first_task: int
) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        fd = os.open(ackfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        asyncio.run(_write(root, run_id, seed, fsync, first_task))
    finally:
        os._exit(1)


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "run":
            root, ackfile, run_id, seed, fsync, first_task = words[1:]
            pid = _fork_writer(root, ackfile, int(run_id), int(seed), fsync == "1", int(first_task))
            print(pid, flush=True)
        elif words[0] == "wait":
            _, status = os.waitpid(int(words[1]), 0)
            print(f"dead {status}", flush=True)
        else:
            print(f"error unknown command {words[0]!r}", flush=True)


if __name__ == "__main__":
    main()
