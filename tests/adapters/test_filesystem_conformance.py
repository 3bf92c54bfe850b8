"""FileStorage passes the StorageAdapter conformance suite, durable across reopening."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from taskloom.adapters.filesystem import FileStorage
from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing import StorageConformance


class TestFileStorage(StorageConformance):
    """A FileStorage per location; fsync is off because a killed process is tested elsewhere."""

    durable = True
    max_examples = 60
    stateful_step_count = 40

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return FileStorage(location, fsync=False, segment_bytes=256)


class TestFileStorageDurable(StorageConformance):
    """The same suite with fsync on, in a smaller run: the durable code path is the default."""

    durable = True
    max_examples = 5
    stateful_step_count = 15

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return FileStorage(location)
