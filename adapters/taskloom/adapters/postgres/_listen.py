"""Waking idle workers across hosts: one NOTIFY per write transaction, LISTEN on one connection.

Writes of a record in one of the store's ``notify_namespaces`` (the run queue,
by default) end their transaction with one ``pg_notify`` per such namespace,
however many records the group commit wrote: NOTIFY takes a database-wide lock
at COMMIT, so it is sent for submissions only, never for checkpoints or events.

A ``Listener`` holds one connection of its own outside the pool, LISTENs on the
store's channel and sets a flag per namespace when a notification arrives.
``wait`` returns True at once if the flag is set (a notification that came while
the worker was busy is not lost), else waits for it up to the timeout. A lost
listening connection is reopened with backoff; meanwhile every waiter is woken
(so it polls) and waits then time out, which is the polling fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import psycopg

from taskloom.adapters.postgres._dsn import Dsn

__all__ = ["NOTIFY", "Listener", "channel_for"]

NOTIFY = "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS t(n)"
"""One statement that sends one notification per namespace given."""

_LOG = logging.getLogger("taskloom.adapters.postgres")


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel of the store in ``schema`` (under 64 bytes)."""
    name = f"taskloom_{schema}"
    if len(name) <= 63:
        return name
    return "taskloom_" + hashlib.sha256(schema.encode()).hexdigest()[:40]


class Listener:
    """LISTENs on the store's channel; ``wait(namespace, timeout)`` (see the module docstring)."""

    def __init__(self, dsn: Dsn, channel: str, connect_kwargs: dict[str, Any]) -> None:
        self._dsn = dsn
        self._channel = channel
        self._kwargs = dict(connect_kwargs)
        self._flags: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        """Set while the listening connection is up (tests wait for it)."""

    def _flag(self, namespace: str) -> asyncio.Event:
        flag = self._flags.get(namespace)
        if flag is None:
            flag = self._flags[namespace] = asyncio.Event()
        return flag

    async def wait(self, namespace: str, timeout: float) -> bool:
        """True once a write of ``namespace`` was announced (since the last True); else
        False after ``timeout`` seconds."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen_forever(), name=f"taskloom-postgres-listen:{self._channel}"
            )
        flag = self._flag(namespace)
        if not flag.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flag.wait(), timeout)
        if flag.is_set():
            flag.clear()
            return True
        return False

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsn.conninfo(), **self._kwargs)
                async with conn:
                    await conn.execute(f'LISTEN "{self._channel}"')
                    self.connected.set()
                    delay = 0.1
                    # Whatever was written while nobody listened: look once.
                    for flag in self._flags.values():
                        flag.set()
                    async for note in conn.notifies():
                        self._flag(note.payload).set()
            except (psycopg.Error, OSError) as exc:
                _LOG.warning(
                    "listening for new runs on %s failed (%s); polling until it is back",
                    self._dsn.describe(),
                    self._dsn.scrub(str(exc)),
                )
            self.connected.clear()
            for flag in self._flags.values():
                flag.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
