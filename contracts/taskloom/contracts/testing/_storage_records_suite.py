"""Example tests of single records: ``put`` and ``get`` (ST1), versions (ST2),
compare-and-set (ST3), ``delete`` (ST4) and expiry (ST5).

One part of ``StorageConformance``; the tests are plain synchronous pytest
tests that run their own event loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from taskloom.contracts import (
    Check,
    ConflictError,
    Record,
    StorageAdapter,
)
from taskloom.contracts.testing._storage_base import (
    EXPIRY_TOLERANCE_S,
    StorageSuiteBase,
)


class RecordTests(StorageSuiteBase):
    """Tests ST1-ST5: what one record does under put, get, delete and expiry."""

    # ST1 -----------------------------------------------------------------------------

    def test_st1_get_returns_the_record_put(self, tmp_path: Path) -> None:
        """``get`` returns exactly the record ``put`` returned."""

        async def body(s: StorageAdapter) -> None:
            before = time.time()
            record = await s.put("ns", "k", b"value")
            after = time.time()
            assert isinstance(record, Record)
            assert (record.namespace, record.key, record.value) == ("ns", "k", b"value")
            assert record.version == 1
            assert record.expires_at is None
            assert before - 60 <= record.updated_at <= after + 60, "updated_at is not epoch seconds"
            assert await s.get("ns", "k") == record

        self._run(tmp_path, body)

    def test_st1_get_of_a_missing_key_is_none(self, tmp_path: Path) -> None:
        """``get`` of a key never written, in a namespace never used, returns None."""

        async def body(s: StorageAdapter) -> None:
            assert await s.get("ns", "missing") is None
            await s.put("ns", "k", b"v")
            assert await s.get("ns", "missing") is None
            assert await s.get("other", "k") is None

        self._run(tmp_path, body)

    def test_st1_ttl_sets_expires_at(self, tmp_path: Path) -> None:
        """A TTL makes ``expires_at`` = ``updated_at`` + ttl, and ``get`` reports it."""

        async def body(s: StorageAdapter) -> None:
            record = await s.put("ns", "k", b"v", ttl=600)
            assert record.expires_at is not None
            assert abs(record.expires_at - (record.updated_at + 600)) <= EXPIRY_TOLERANCE_S
            assert await s.get("ns", "k") == record

        self._run(tmp_path, body)

    def test_st1_values_are_bytes_exactly(self, tmp_path: Path) -> None:
        """Empty values, NUL bytes and every byte value come back unchanged."""

        async def body(s: StorageAdapter) -> None:
            samples = {"empty": b"", "nul": b"\x00\x00", "all": bytes(range(256)) * 3}
            for key, value in samples.items():
                await s.put("ns", key, value)
            for key, value in samples.items():
                record = await s.get("ns", key)
                assert record is not None and record.value == value

        self._run(tmp_path, body)

    # ST2 -----------------------------------------------------------------------------

    def test_st2_versions_count_the_writes(self, tmp_path: Path) -> None:
        """Each put of a key raises its version by exactly one, independently per key."""

        async def body(s: StorageAdapter) -> None:
            for expected in range(1, 6):
                assert (await s.put("ns", "k", b"%d" % expected)).version == expected
            assert (await s.put("ns", "other", b"x")).version == 1
            record = await s.get("ns", "k")
            assert record is not None and record.version == 5 and record.value == b"5"

        self._run(tmp_path, body)

    def test_st2_version_restarts_after_delete(self, tmp_path: Path) -> None:
        """After delete, the next put of the key is version 1 again."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"1")
            await s.put("ns", "k", b"2")
            assert await s.delete("ns", "k") is True
            assert (await s.put("ns", "k", b"3")).version == 1

        self._run(tmp_path, body)

    def test_st2_version_restarts_after_expiry(self, tmp_path: Path) -> None:
        """After a record expired, the next put of its key is version 1 again."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"1")
            await s.put("ns", "k", b"2", ttl=0.05)
            await asyncio.sleep(0.3)
            assert (await s.put("ns", "k", b"3")).version == 1

        self._run(tmp_path, body)

    # ST3 -----------------------------------------------------------------------------

    def test_st3_put_with_the_current_version_writes(self, tmp_path: Path) -> None:
        """``put(if_version=current)`` succeeds and bumps the version."""

        async def body(s: StorageAdapter) -> None:
            first = await s.put("ns", "k", b"1")
            second = await s.put("ns", "k", b"2", if_version=first.version)
            assert second.version == 2 and second.value == b"2"
            assert await s.get("ns", "k") == second

        self._run(tmp_path, body)

    def test_st3_put_with_a_stale_version_conflicts_and_changes_nothing(
        self, tmp_path: Path
    ) -> None:
        """``put`` with a wrong ``if_version`` raises ConflictError and leaves the record."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"1")
            current = await s.put("ns", "k", b"2")
            for wrong in (1, 3, 0):
                with pytest.raises(ConflictError):
                    await s.put("ns", "k", b"lost", if_version=wrong)
            assert await s.get("ns", "k") == current
            with pytest.raises(ConflictError):
                await s.put("ns", "missing", b"lost", if_version=1)
            assert await s.get("ns", "missing") is None

        self._run(tmp_path, body)

    def test_st3_if_version_zero_means_must_not_exist(self, tmp_path: Path) -> None:
        """``if_version=0`` creates a missing key and refuses an existing one."""

        async def body(s: StorageAdapter) -> None:
            created = await s.put("ns", "k", b"first", if_version=0)
            assert created.version == 1
            with pytest.raises(ConflictError):
                await s.put("ns", "k", b"second", if_version=0)
            assert await s.get("ns", "k") == created

        self._run(tmp_path, body)

    def test_st3_delete_with_if_version(self, tmp_path: Path) -> None:
        """``delete`` with a wrong version conflicts and keeps the record; the right one deletes."""

        async def body(s: StorageAdapter) -> None:
            record = await s.put("ns", "k", b"v")
            for wrong in (0, 2):
                with pytest.raises(ConflictError):
                    await s.delete("ns", "k", if_version=wrong)
            assert await s.get("ns", "k") == record
            assert await s.delete("ns", "k", if_version=1) is True
            assert await s.get("ns", "k") is None
            with pytest.raises(ConflictError):
                await s.delete("ns", "k", if_version=1)

        self._run(tmp_path, body)

    def test_st3_only_one_of_racing_creators_wins(self, tmp_path: Path) -> None:
        """Of many concurrent ``put(if_version=0)`` on one key exactly one succeeds."""

        async def body(s: StorageAdapter) -> None:
            async def create(n: int) -> Record | None:
                try:
                    return await s.put("ns", "lock", b"%d" % n, if_version=0)
                except ConflictError:
                    return None

            results = await asyncio.gather(*(create(n) for n in range(12)))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, f"{len(winners)} creators won the race"
            assert await s.get("ns", "lock") == winners[0]

        self._run(tmp_path, body)

    # ST4 -----------------------------------------------------------------------------

    def test_st4_delete_returns_whether_the_key_existed(self, tmp_path: Path) -> None:
        """``delete`` returns True for an existing key, False for a missing one."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"v")
            assert await s.delete("ns", "k") is True
            assert await s.get("ns", "k") is None
            assert await s.delete("ns", "k") is False
            assert await s.delete("ns", "never") is False
            assert await s.delete("unused-namespace", "k") is False

        self._run(tmp_path, body)

    def test_st4_deleting_a_missing_key_changes_nothing(self, tmp_path: Path) -> None:
        """Deleting a missing key (also with ``if_version=0``) leaves the others as they were."""

        async def body(s: StorageAdapter) -> None:
            kept = await s.put("ns", "k", b"v")
            assert await s.delete("ns", "other") is False
            assert await s.delete("ns", "other", if_version=0) is False
            assert await s.scan("ns") == [kept]

        self._run(tmp_path, body)

    # ST5 -----------------------------------------------------------------------------

    def test_st5_expired_records_are_invisible(self, tmp_path: Path) -> None:
        """After its TTL a record is gone for ``get`` and ``scan``; a long TTL keeps it."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "short", b"v", ttl=0.05)
            kept = await s.put("ns", "long", b"v", ttl=3600)
            await asyncio.sleep(0.3)
            assert await s.get("ns", "short") is None
            assert await s.scan("ns") == [kept]
            assert await s.scan("ns", prefix="s") == []

        self._run(tmp_path, body)

    def test_st5_expired_records_count_as_missing(self, tmp_path: Path) -> None:
        """An expired key passes ``if_version=0`` and a Check at 0; deleting it returns False."""

        async def body(s: StorageAdapter) -> None:
            for key in ("a", "b", "c"):
                await s.put("ns", key, b"v", ttl=0.05)
            await asyncio.sleep(0.3)
            assert (await s.put("ns", "a", b"new", if_version=0)).version == 1
            await s.commit([Check(namespace="ns", key="b", version=0)])
            assert await s.delete("ns", "c") is False
            with pytest.raises(ConflictError):
                await s.put("ns", "c", b"x", if_version=1)

        self._run(tmp_path, body)

    def test_st5_a_put_without_ttl_clears_the_expiry(self, tmp_path: Path) -> None:
        """Overwriting a record without a TTL makes it permanent."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"1", ttl=0.05)
            record = await s.put("ns", "k", b"2")
            assert record.expires_at is None
            await asyncio.sleep(0.3)
            assert await s.get("ns", "k") == record

        self._run(tmp_path, body)
