"""Example tests of an adapter's lifetime: data survives reopening (ST11) and a
closed adapter refuses every call (ST12).

One part of ``StorageConformance``; the tests are plain synchronous pytest
tests that run their own event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taskloom.contracts import (
    Append,
    CommitResult,
    Put,
    Record,
    StorageAdapter,
    StreamEntry,
    UsageError,
)
from taskloom.contracts.testing._storage_base import (
    StorageSuiteBase,
)


class LifetimeTests(StorageSuiteBase):
    """Tests ST11-ST12: durability across reopening, and use after ``aclose``."""

    # ST11 ----------------------------------------------------------------------------

    def test_st11_records_survive_reopening(self, tmp_path: Path) -> None:
        """Records, versions, deletes and TTLs written before closing are there after reopening."""
        written: dict[str, Record] = {}

        async def first(s: StorageAdapter) -> None:
            await s.put("ns", "a", b"1")
            written["a"] = await s.put("ns", "a", b"2")
            written["b"] = await s.put("ns", "b", b"b", ttl=3600)
            written["é/x"] = await s.put("other", "é/x", b"\x00")
            await s.put("ns", "gone", b"")
            await s.delete("ns", "gone")

        async def second(s: StorageAdapter) -> None:
            assert await s.get("ns", "a") == written["a"]
            assert await s.get("ns", "b") == written["b"]
            assert await s.get("other", "é/x") == written["é/x"]
            assert await s.get("ns", "gone") is None
            assert (await s.put("ns", "a", b"3")).version == 3

        self._run_twice(tmp_path, first, second)

    def test_st11_the_last_write_before_closing_survives(self, tmp_path: Path) -> None:
        """A put, delete or append made just before closing is not lost in a buffer."""
        written: list[Record] = []

        async def first(s: StorageAdapter) -> None:
            await s.put("ns", "deleted", b"x")
            await s.append("s", b"first")
            await s.delete("ns", "deleted")
            await s.append("s", b"last")
            written.append(await s.put("ns", "last", b"final"))

        async def second(s: StorageAdapter) -> None:
            assert await s.get("ns", "last") == written[0]
            assert await s.get("ns", "deleted") is None
            assert [e.payload for e in await s.read("s")] == [b"first", b"last"]

        self._run_twice(tmp_path, first, second)

    def test_st11_streams_survive_reopening(self, tmp_path: Path) -> None:
        """Stream entries survive reopening and numbering continues where it stopped."""
        written: list[StreamEntry] = []

        async def first(s: StorageAdapter) -> None:
            written.extend([await s.append("s", b"1"), await s.append("s", b"2")])

        async def second(s: StorageAdapter) -> None:
            assert await s.read("s") == written
            assert (await s.append("s", b"3")).seq == 3

        self._run_twice(tmp_path, first, second)

    def test_st11_commits_survive_reopening(self, tmp_path: Path) -> None:
        """Everything a commit wrote is there after reopening."""
        result: list[CommitResult] = []

        async def first(s: StorageAdapter) -> None:
            result.append(
                await s.commit(
                    [
                        Put(namespace="ns", key="k", value=b"v"),
                        Append(stream="s", payload=b"p"),
                    ]
                )
            )

        async def second(s: StorageAdapter) -> None:
            assert await s.get("ns", "k") == result[0].records[0]
            assert await s.read("s") == list(result[0].entries)

        self._run_twice(tmp_path, first, second)

    # ST12 ----------------------------------------------------------------------------

    def test_st12_every_method_raises_after_aclose(self, tmp_path: Path) -> None:
        """After ``aclose()`` each method raises UsageError; closing again is fine."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"v")
            await s.aclose()
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: s.get("ns", "k"),
                lambda: s.put("ns", "k", b"v"),
                lambda: s.delete("ns", "k"),
                lambda: s.scan("ns"),
                lambda: s.append("s", b"p"),
                lambda: s.read("s"),
                lambda: s.commit([Put(namespace="ns", key="k", value=b"")]),
            ]
            for number, call in enumerate(calls):
                with pytest.raises(UsageError):
                    await call()
                    pytest.fail(f"call #{number} worked on a closed adapter")
            await s.aclose()

        self._run(tmp_path, body)

    def test_st12_aclose_is_idempotent(self, tmp_path: Path) -> None:
        """``aclose()`` may be called any number of times, also by the context manager."""

        async def body(s: StorageAdapter) -> None:
            await s.aclose()
            await s.aclose()
            await s.aclose()

        self._run(tmp_path, body)
