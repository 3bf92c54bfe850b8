"""Example tests of listing and separation: ``scan`` order, prefixes and paging (ST6),
and namespaces and streams that never see each other (ST7).

One part of ``StorageConformance``; the tests are plain synchronous pytest
tests that run their own event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from taskloom.contracts import (
    Delete,
    Put,
    StorageAdapter,
)
from taskloom.contracts.testing._storage_base import (
    LOOKALIKE_NAMES,
    ORDERED_KEYS,
    StorageSuiteBase,
)


async def page_through(s: StorageAdapter, namespace: str, page_size: int, total: int) -> list[str]:
    """Every key ``scan`` pages of ``page_size`` visit, failing (never looping forever) when
    a page repeats or goes backwards or the pages do not end after ``total`` records."""
    seen: list[str] = []
    last: str | None = None
    for _ in range(total // page_size + 2):
        page = await s.scan(namespace, start_after=last, limit=page_size)
        keys = [r.key for r in page]
        assert len(page) <= page_size, (
            f"scan({namespace!r}, start_after={last!r}, limit={page_size}) returned "
            f"{len(page)} records: {keys}"
        )
        if not page:
            return seen
        assert last is None or keys[0] > last, (
            f"scan({namespace!r}, start_after={last!r}, limit={page_size}) returned {keys}: "
            f"start_after is exclusive, so the page must start after {last!r}"
        )
        seen.extend(keys)
        last = keys[-1]
    raise AssertionError(
        f"paging {namespace!r} by {page_size} did not end after {total} records "
        f"({total // page_size + 2} pages); seen so far: {seen[:20]}"
    )


class ScanTests(StorageSuiteBase):
    """Tests ST6-ST7: scans and the isolation of namespaces and streams."""

    # ST6 -----------------------------------------------------------------------------

    def test_st6_scan_is_in_code_point_order(self, tmp_path: Path) -> None:
        """``scan`` orders keys by Unicode code points, whatever order they were written in."""

        async def body(s: StorageAdapter) -> None:
            for key in reversed(ORDERED_KEYS):
                await s.put("ns", key, key.encode())
            assert [r.key for r in await s.scan("ns")] == list(ORDERED_KEYS)

        self._run(tmp_path, body)

    def test_st6_scan_prefix_matches_literally(self, tmp_path: Path) -> None:
        """``prefix`` matches literally: ``%``, ``_`` and case are not wildcards."""

        async def body(s: StorageAdapter) -> None:
            for key in ("a", "a%b", "a_c", "axb", "aXc", "A%b", "b", "a%"):
                await s.put("ns", key, b"")
            assert [r.key for r in await s.scan("ns", prefix="a%")] == ["a%", "a%b"]
            assert [r.key for r in await s.scan("ns", prefix="a_")] == ["a_c"]
            assert [r.key for r in await s.scan("ns", prefix="a")] == [
                "a",
                "a%",
                "a%b",
                "aXc",
                "a_c",
                "axb",
            ]
            assert await s.scan("ns", prefix="c") == []
            assert [r.key for r in await s.scan("ns", prefix="")] == [
                "A%b",
                "a",
                "a%",
                "a%b",
                "aXc",
                "a_c",
                "axb",
                "b",
            ]

        self._run(tmp_path, body)

    def test_st6_start_after_and_limit(self, tmp_path: Path) -> None:
        """``start_after`` is exclusive (and need not exist); ``limit`` caps the count."""

        async def body(s: StorageAdapter) -> None:
            for key in ("a", "b", "c", "d", "e"):
                await s.put("ns", key, b"")
            assert [r.key for r in await s.scan("ns", start_after="b")] == ["c", "d", "e"]
            assert [r.key for r in await s.scan("ns", start_after="bb")] == ["c", "d", "e"]
            assert [r.key for r in await s.scan("ns", start_after="e")] == []
            assert [r.key for r in await s.scan("ns", limit=2)] == ["a", "b"]
            assert [r.key for r in await s.scan("ns", start_after="a", limit=2)] == ["b", "c"]
            assert [r.key for r in await s.scan("ns", limit=100)] == ["a", "b", "c", "d", "e"]
            assert [r.key for r in await s.scan("ns", prefix="c", start_after="a")] == ["c"]

        self._run(tmp_path, body)

    def test_st6_paging_visits_every_record_once(self, tmp_path: Path) -> None:
        """Paging with ``start_after`` = last key seen returns every record exactly once."""

        async def body(s: StorageAdapter) -> None:
            keys = sorted({f"k{n:02d}" for n in range(23)} | {"k1", "k10a", "é", "\U0001f600"})
            for key in reversed(keys):
                await s.put("ns", key, b"")
            for page_size in (1, 3, 7, 100):
                seen = await page_through(s, "ns", page_size, len(keys))
                assert seen == keys, f"paging by {page_size} saw {seen}, expected {keys}"

        self._run(tmp_path, body)

    def test_st5_st6_expired_records_do_not_count_against_limit(self, tmp_path: Path) -> None:
        """Expired records are skipped before ``limit`` applies: pages are full of live ones."""

        async def body(s: StorageAdapter) -> None:
            live: list[str] = []
            for n in range(12):
                key = f"k{n:02d}"
                if n < 5 or n % 2:
                    await s.put("ns", key, b"", ttl=0.05)
                else:
                    await s.put("ns", key, b"")
                    live.append(key)
            await asyncio.sleep(0.3)
            first = [r.key for r in await s.scan("ns", limit=2)]
            assert first == live[:2], (
                f"scan('ns', limit=2) returned {first} with the first five keys expired; "
                f"expected {live[:2]}: expired records must not use up the limit"
            )
            after = [r.key for r in await s.scan("ns", start_after="k00", limit=1)]
            assert after == live[:1], (
                f"scan('ns', start_after='k00', limit=1) returned {after}; expected {live[:1]}"
            )
            for page_size in (1, 2, 5):
                seen = await page_through(s, "ns", page_size, len(live))
                assert seen == live, f"paging by {page_size} saw {seen}, expected {live}"

        self._run(tmp_path, body)

    def test_st6_limit_zero_returns_nothing(self, tmp_path: Path) -> None:
        """``limit=0`` is a page of no records, not "no limit"."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "a", b"")
            got = await s.scan("ns", limit=0)
            assert got == [], f"scan('ns', limit=0) returned {got!r}; expected []"

        self._run(tmp_path, body)

    def test_st6_the_returned_list_is_the_callers(self, tmp_path: Path) -> None:
        """Clearing or extending the list ``scan`` returned changes nothing stored."""

        async def body(s: StorageAdapter) -> None:
            a = await s.put("ns", "a", b"1")
            b = await s.put("ns", "b", b"2")
            page = await s.scan("ns")
            page.clear()
            again = await s.scan("ns")
            assert again == [a, b], f"after clearing a returned list, scan('ns') is {again!r}"
            again.append(a)
            again.reverse()
            last = await s.scan("ns")
            assert last == [a, b], f"after changing a returned list, scan('ns') is {last!r}"

        self._run(tmp_path, body)

    def test_st6_scan_of_an_empty_namespace_is_empty(self, tmp_path: Path) -> None:
        """``scan`` of a namespace never written returns an empty list."""

        async def body(s: StorageAdapter) -> None:
            assert await s.scan("ns") == []
            await s.put("ns", "k", b"")
            await s.delete("ns", "k")
            assert await s.scan("ns") == []

        self._run(tmp_path, body)

    # ST7 -----------------------------------------------------------------------------

    def test_st7_namespaces_are_isolated(self, tmp_path: Path) -> None:
        """The same key in two namespaces is two records; each operation touches only its own."""

        async def body(s: StorageAdapter) -> None:
            a = await s.put("a", "k", b"in a")
            b = await s.put("ab", "k", b"in ab")
            assert (await s.put("a", "k2", b"x")).version == 1
            assert await s.get("a", "k") == a and await s.get("ab", "k") == b
            assert [r.key for r in await s.scan("a")] == ["k", "k2"]
            assert await s.scan("ab") == [b]
            assert await s.delete("a", "k") is True
            assert await s.get("ab", "k") == b
            assert (await s.put("ab", "k", b"again", if_version=1)).version == 2
            await s.commit(
                [Put(namespace="a", key="z", value=b""), Delete(namespace="ab", key="k")]
            )
            assert await s.scan("ab") == []
            assert [r.key for r in await s.scan("a")] == ["k2", "z"]

        self._run(tmp_path, body)

    def test_st7_lookalike_names_do_not_collide(self, tmp_path: Path) -> None:
        """Names differing by case, separators, dots or normalization stay distinct."""

        async def body(s: StorageAdapter) -> None:
            for name in LOOKALIKE_NAMES:
                await s.put("ns", name, name.encode())
                await s.put(name, "k", name.encode())
                await s.append(name, name.encode())
            found = await s.scan("ns")
            assert [r.key for r in found] == sorted(LOOKALIKE_NAMES)
            assert all(r.value == r.key.encode() and r.version == 1 for r in found)
            for name in LOOKALIKE_NAMES:
                in_namespace = await s.scan(name)
                assert [(r.key, r.value) for r in in_namespace] == [("k", name.encode())], name
                assert [(e.seq, e.payload) for e in await s.read(name)] == [(1, name.encode())]

        self._run(tmp_path, body)

    def test_st7_joined_names_do_not_collide(self, tmp_path: Path) -> None:
        """(``a``, ``b/c``) and (``a/b``, ``c``) are different records, whatever the separator."""

        async def body(s: StorageAdapter) -> None:
            for sep in ("/", ":", "\x01", ".", "|", "\\"):
                first = await s.put("a", f"b{sep}c", b"1")
                second = await s.put(f"a{sep}b", "c", b"2")
                assert first.version == 1 and second.version == 1, f"separator {sep!r}"
                assert await s.get("a", f"b{sep}c") == first
                assert await s.get(f"a{sep}b", "c") == second

        self._run(tmp_path, body)

    def test_st7_streams_are_isolated(self, tmp_path: Path) -> None:
        """Each stream numbers its own entries; streams and records never see each other."""

        async def body(s: StorageAdapter) -> None:
            await s.put("log", "1", b"record")
            assert (await s.append("log", b"x")).seq == 1
            assert (await s.append("log2", b"y")).seq == 1
            assert (await s.append("log", b"z")).seq == 2
            assert [e.payload for e in await s.read("log")] == [b"x", b"z"]
            assert [e.payload for e in await s.read("log2")] == [b"y"]
            assert [r.value for r in await s.scan("log")] == [b"record"]
            assert await s.get("log", "2") is None

        self._run(tmp_path, body)
