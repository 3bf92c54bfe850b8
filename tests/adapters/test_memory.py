"""The in-memory adapters pass their conformance suites, plus what only they promise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from taskloom.adapters.memory import MemorySecretStore, MemoryStorage
from taskloom.adapters.memory import _storage as _memory_storage
from taskloom.contracts import SecretStore, StorageAdapter, UsageError
from taskloom.contracts.testing import SecretStoreConformance, StorageConformance


class TestMemoryStorage(StorageConformance):
    """A fresh MemoryStorage per location; reopening hands out ``reopen()`` copies."""

    durable = True
    survives_kill = False  # reopening is simulated in this process; a killed one loses all

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


class TestMemorySecretStore(SecretStoreConformance):
    """A writable MemorySecretStore; reopening hands out ``reopen()`` copies."""

    durable = True
    writable = True

    def setup_method(self) -> None:
        self.stores: dict[Path, MemorySecretStore] = {}

    def open_store(
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[SecretStore]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[SecretStore]:
            previous = self.stores.get(location)
            store = MemorySecretStore(initial) if previous is None else previous.reopen()
            self.stores[location] = store
            async with store:
                yield store

        return opened()


class TestReadOnlyMemorySecretStore(SecretStoreConformance):
    """A read-only MemorySecretStore, as the environment store behaves."""

    durable = False
    writable = False

    def open_store(
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[SecretStore]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[SecretStore]:
            async with MemorySecretStore(initial, read_only=True) as store:
                yield store

        return opened()


async def test_memory_storage_clock_drives_expiry() -> None:
    """An injected clock decides expiry: nothing sleeps."""
    now = [1000.0]
    async with MemoryStorage(clock=lambda: now[0]) as storage:
        record = await storage.put("ns", "k", b"v", ttl=10)
        assert (record.updated_at, record.expires_at) == (1000.0, 1010.0)
        now[0] = 1009.9
        assert await storage.get("ns", "k") == record
        now[0] = 1010.0
        assert await storage.get("ns", "k") is None
        assert await storage.scan("ns") == []


async def test_memory_storage_reopen_shares_data_after_close() -> None:
    """``reopen()`` of a closed adapter is open and sees the same records and streams."""
    first = MemoryStorage()
    await first.put("ns", "k", b"v")
    await first.append("s", b"p")
    await first.aclose()
    second = first.reopen()
    assert (await second.get("ns", "k")) is not None
    assert (await second.append("s", b"q")).seq == 2
    with pytest.raises(UsageError):
        await first.get("ns", "k")


async def test_memory_storage_refuses_bad_arguments() -> None:
    """Negative limits, ``after`` and non-operations raise UsageError."""
    async with MemoryStorage() as storage:
        with pytest.raises(UsageError):
            await storage.scan("ns", limit=-1)
        with pytest.raises(UsageError):
            await storage.read("s", after=-1)
        with pytest.raises(UsageError):
            await storage.commit(["not an op"])  # type: ignore[list-item]
        with pytest.raises(UsageError):
            await storage.put("ns", "k", "text")  # type: ignore[arg-type]
        assert await storage.scan("ns", limit=0) == []


async def test_memory_secret_store_repr_hides_values() -> None:
    """The store's repr counts secrets and shows none of them."""
    store = MemorySecretStore({"api_key": "hunter2"})
    assert "hunter2" not in repr(store) and "api_key" not in repr(store)
    assert "1 secret" in repr(store)


@pytest.mark.slow
class TestMemoryStorageThorough(TestMemoryStorage):
    """The same suite with a state machine five times longer (CI and release checks)."""

    max_examples = 120
    stateful_step_count = 50


class TestMemoryStorageSortedList(TestMemoryStorage):
    """The same suite with namespaces holding more than 2 keys in a SortedList (the path
    large namespaces take), so both key structures are held to every invariant."""

    @pytest.fixture(autouse=True)
    def _sorted_list_early(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Switch to the SortedList after 2 keys instead of 4,096."""
        monkeypatch.setattr(_memory_storage, "SORTED_LIST_AT", 2)


def test_a_large_namespace_switches_to_a_sorted_list_and_keeps_its_order() -> None:
    """Past SORTED_LIST_AT keys, puts, deletes and scans still see code point order."""
    import asyncio
    import random

    async def scenario() -> None:
        store = MemoryStorage()
        keys = [
            f"k{random.Random(i).random():.12f}" for i in range(_memory_storage.SORTED_LIST_AT + 50)
        ]
        for key in keys:
            await store.put("ns", key, b"v")
        assert type(store._data.namespaces["ns"].keys) is not list
        for key in keys[::3]:
            await store.delete("ns", key)
        kept = sorted(set(keys) - set(keys[::3]))
        scanned = [r.key for r in await store.scan("ns")]
        assert scanned == kept
        middle = kept[len(kept) // 2]
        assert [r.key for r in await store.scan("ns", start_after=middle, limit=3)] == kept[
            len(kept) // 2 + 1 : len(kept) // 2 + 4
        ]

    asyncio.run(scenario())
