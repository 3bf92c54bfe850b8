"""The read side of ``SQLiteStorage``: a few aiosqlite connections, one round trip per read.

In WAL mode a reader never waits for the writer, so reads go straight to
aiosqlite's worker threads while the writer thread commits. A read goes to the
first connection unless it is busy: sequential reads keep one warm thread, and
only reads that overlap spread to the others.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import aiosqlite

from taskloom.adapters.sqlite._errors import map_sqlite_errors, translate
from taskloom.adapters.sqlite._schema import reader_init_statements

__all__ = ["Readers"]


class Readers:
    """Open read connections on one database; ``fetch`` runs one SELECT on one of them."""

    def __init__(
        self, path: str, connections: list[aiosqlite.Connection], busy_timeout_s: float
    ) -> None:
        self.path = path
        self.connections = connections
        self._busy = [0] * len(connections)
        self._busy_timeout_s = busy_timeout_s

    @classmethod
    async def open(
        cls, path: str, *, count: int, busy_timeout_s: float, synchronous: str
    ) -> Readers:
        """Open ``count`` read-only (``query_only``) connections to ``path``."""
        connections: list[aiosqlite.Connection] = []
        try:
            with map_sqlite_errors(path, busy_timeout_s=busy_timeout_s):
                for _ in range(count):
                    connection = aiosqlite.connect(
                        path, timeout=busy_timeout_s, isolation_level=None
                    )
                    # aiosqlite's worker thread is not a daemon: an adapter the
                    # application forgot to close would hang interpreter exit (the
                    # ResourceWarning still says so). Checked defensively: private.
                    thread = getattr(connection, "_thread", None)
                    if isinstance(thread, threading.Thread) and not thread.is_alive():
                        thread.daemon = True
                    await connection
                    connections.append(connection)
                    for statement in reader_init_statements(synchronous):
                        await connection.execute(statement)
        except BaseException:
            for connection in connections:
                await connection.close()
            raise
        return cls(path, connections, busy_timeout_s)

    async def fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """All rows of one SELECT: exactly one aiosqlite round trip."""
        busy = self._busy
        index = 0
        if busy[0]:
            index = min(range(len(busy)), key=busy.__getitem__)
        busy[index] += 1
        try:
            rows: list[Any] = await self.connections[index].execute_fetchall(sql, params)  # type: ignore[assignment]
        except (sqlite3.Error, ValueError) as exc:
            raise translate(exc, self.path, busy_timeout_s=self._busy_timeout_s) from exc
        finally:
            busy[index] -= 1
        return rows

    async def close(self) -> None:
        """Close every connection (reads in flight finish first)."""
        for connection in self.connections:
            with map_sqlite_errors(self.path):
                await connection.close()
