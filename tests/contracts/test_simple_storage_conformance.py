"""A simple third-party adapter written from the README passes the storage suite, SIGKILL
durability included."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from simple_storage import JsonFileStorage

from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing import StorageConformance


class TestJsonFileStorage(StorageConformance):
    """The suite with its default knobs, the way a third party runs it."""

    durable = True

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return JsonFileStorage(location)
