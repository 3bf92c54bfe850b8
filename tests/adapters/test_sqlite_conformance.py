"""SQLiteStorage passes the StorageAdapter conformance suite, durable across reopening."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing import StorageConformance


class TestSQLiteStorage(StorageConformance):
    """A SQLiteStorage per location, in the default (synchronous=NORMAL) configuration."""

    durable = True
    max_examples = 60
    stateful_step_count = 40

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return SQLiteStorage(location)


class TestSQLiteStorageFull(StorageConformance):
    """The suite again with synchronous=FULL and one reader, in a smaller run."""

    durable = True
    max_examples = 10
    stateful_step_count = 20

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return SQLiteStorage(location, synchronous="FULL", readers=1)
