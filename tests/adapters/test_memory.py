"""The in-memory adapters pass their conformance suites, plus what only they promise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing import StorageConformance


class TestMemoryStorage(StorageConformance):
    """A fresh MemoryStorage per location; reopening hands out ``reopen()`` copies."""

    durable = True

    def setup_method(self) -> None:
        self.stores: dict[Path, MemoryStorage] = {}

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[StorageAdapter]:
            previous = self.stores.get(location)
            storage = MemoryStorage() if previous is None else previous.reopen()
            self.stores[location] = storage
            async with storage:
                yield storage

        return opened()
