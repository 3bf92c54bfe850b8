"""Example tests of streams and batches: gapless ``append`` and ``read`` (ST8),
and ``commit`` applying everything or nothing (ST9).

One part of ``StorageConformance``; the tests are plain synchronous pytest
tests that run their own event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskloom.contracts import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Append,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    InvalidKey,
    Op,
    Put,
    StorageAdapter,
    ValueTooLarge,
)
from taskloom.contracts.testing._storage_base import (
    StorageSuiteBase,
)


class StreamAndCommitTests(StorageSuiteBase):
    """Tests ST8-ST9: stream numbering and atomic commits."""

    # ST8 -----------------------------------------------------------------------------

    def test_st8_append_numbers_from_one_without_gaps(self, tmp_path: Path) -> None:
        """``append`` returns 1, 2, 3 ... and ``read`` gives the entries back in order."""

        async def body(s: StorageAdapter) -> None:
            appended = [await s.append("s", b"%d" % n) for n in range(1, 8)]
            assert [e.seq for e in appended] == list(range(1, 8))
            assert all(e.stream == "s" for e in appended)
            assert await s.read("s") == appended

        self._run(tmp_path, body)

    def test_st8_read_after_and_limit(self, tmp_path: Path) -> None:
        """``read`` returns only entries after ``after``, at most ``limit`` of them."""

        async def body(s: StorageAdapter) -> None:
            for n in range(1, 6):
                await s.append("s", b"%d" % n)
            assert [e.seq for e in await s.read("s", after=2)] == [3, 4, 5]
            assert [e.seq for e in await s.read("s", after=2, limit=2)] == [3, 4]
            assert [e.seq for e in await s.read("s", limit=1)] == [1]
            assert await s.read("s", after=5) == []
            assert await s.read("s", after=50) == []
            assert await s.read("never") == []

        self._run(tmp_path, body)

    def test_st8_limit_zero_and_the_returned_list(self, tmp_path: Path) -> None:
        """``read(limit=0)`` returns nothing; changing a list ``read`` returned changes nothing."""

        async def body(s: StorageAdapter) -> None:
            entries = [await s.append("s", b"1"), await s.append("s", b"2")]
            got = await s.read("s", limit=0)
            assert got == [], f"read('s', limit=0) returned {got!r}; expected []"
            page = await s.read("s")
            page.clear()
            again = await s.read("s")
            assert again == entries, f"after clearing a returned list, read('s') is {again!r}"
            again.pop()
            last = await s.read("s")
            assert last == entries, f"after changing a returned list, read('s') is {last!r}"

        self._run(tmp_path, body)

    def test_st8_concurrent_appends_are_gapless(self, tmp_path: Path) -> None:
        """Many concurrent appends get distinct numbers 1..n, and ``read`` matches them."""

        async def body(s: StorageAdapter) -> None:
            n = 40
            entries = await asyncio.gather(*(s.append("s", b"%d" % i) for i in range(n)))
            assert sorted(e.seq for e in entries) == list(range(1, n + 1))
            stored = await s.read("s")
            assert [e.seq for e in stored] == list(range(1, n + 1))
            assert {e.seq: e.payload for e in stored} == {e.seq: e.payload for e in entries}

        self._run(tmp_path, body)

    def test_st8_empty_payloads_keep_their_numbers(self, tmp_path: Path) -> None:
        """Empty and binary payloads are entries like any other."""

        async def body(s: StorageAdapter) -> None:
            assert (await s.append("s", b"")).seq == 1
            assert (await s.append("s", b"\x00\xff")).seq == 2
            assert [e.payload for e in await s.read("s")] == [b"", b"\x00\xff"]

        self._run(tmp_path, body)

    # ST9 -----------------------------------------------------------------------------

    def test_st9_commit_applies_everything_in_order(self, tmp_path: Path) -> None:
        """A successful commit applies every op in order and reports records, entries, deletes."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "gone", b"x")
            result = await s.commit(
                [
                    Check(namespace="ns", key="k", version=0),
                    Put(namespace="ns", key="k", value=b"1", if_version=0),
                    Check(namespace="ns", key="k", version=1),
                    Put(namespace="ns", key="k", value=b"2", if_version=1),
                    Append(stream="s", payload=b"a"),
                    Delete(namespace="ns", key="gone"),
                    Delete(namespace="ns", key="never"),
                    Append(stream="s", payload=b"b"),
                    Put(namespace="other", key="k", value=b"o", ttl=600),
                ]
            )
            assert isinstance(result, CommitResult)
            assert [(r.namespace, r.key, r.value, r.version) for r in result.records] == [
                ("ns", "k", b"1", 1),
                ("ns", "k", b"2", 2),
                ("other", "k", b"o", 1),
            ]
            assert result.records[2].expires_at is not None
            assert [(e.stream, e.seq, e.payload) for e in result.entries] == [
                ("s", 1, b"a"),
                ("s", 2, b"b"),
            ]
            assert result.deleted == (True, False)
            assert await s.get("ns", "k") == result.records[1]
            assert await s.get("other", "k") == result.records[2]
            assert await s.get("ns", "gone") is None
            assert await s.read("s") == list(result.entries)

        self._run(tmp_path, body)

    def test_st9_ops_on_one_key_apply_in_order(self, tmp_path: Path) -> None:
        """Puts, deletes and checks of one key in one batch apply in batch order."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"old")
            await s.put("ns", "k", b"old2")
            result = await s.commit(
                [
                    Delete(namespace="ns", key="k", if_version=2),
                    Check(namespace="ns", key="k", version=0),
                    Put(namespace="ns", key="k", value=b"new", if_version=0),
                    Check(namespace="ns", key="k", version=1),
                    Put(namespace="ns", key="k", value=b"newer", if_version=1),
                ]
            )
            got = [(r.value, r.version) for r in result.records]
            assert got == [(b"new", 1), (b"newer", 2)], (
                f"commit([delete k, check k@0, put k, check k@1, put k]) wrote {got}; "
                "expected [(b'new', 1), (b'newer', 2)]: deletes, puts and checks apply in order"
            )
            assert result.deleted == (True,), f"deleted is {result.deleted}, expected (True,)"
            stored = await s.get("ns", "k")
            assert stored == result.records[-1], f"get('ns', 'k') is {stored!r} after the commit"

            result = await s.commit(
                [
                    Put(namespace="ns", key="p", value=b"p"),
                    Delete(namespace="ns", key="p"),
                    Check(namespace="ns", key="p", version=0),
                    Delete(namespace="ns", key="p"),
                ]
            )
            assert result.deleted == (True, False), (
                f"commit([put p, delete p, check p@0, delete p]) reported deleted="
                f"{result.deleted}; expected (True, False)"
            )
            assert await s.get("ns", "p") is None, "a key put then deleted in one batch is back"

        self._run(tmp_path, body)

    def test_st9_a_check_sees_the_batch_so_far(self, tmp_path: Path) -> None:
        """A Check after a put of its key in the same batch sees the new version, not the old."""

        async def body(s: StorageAdapter) -> None:
            with pytest.raises(ConflictError):
                await s.commit(
                    [
                        Put(namespace="ns", key="k", value=b"1"),
                        Check(namespace="ns", key="k", version=0),
                    ]
                )
                pytest.fail("commit([put k, check k@0]) passed: the check saw the old version")
            assert await s.get("ns", "k") is None, "a failed commit left its put behind"

        self._run(tmp_path, body)

    def test_st9_a_failing_check_changes_nothing(self, tmp_path: Path) -> None:
        """A Check that fails at the end undoes nothing because nothing was applied."""

        async def body(s: StorageAdapter) -> None:
            before = await s.put("ns", "k", b"before")
            doomed = await s.put("ns", "doomed", b"x")
            await s.append("s", b"first")
            with pytest.raises(ConflictError):
                await s.commit(
                    [
                        Put(namespace="ns", key="k", value=b"after"),
                        Put(namespace="ns", key="new", value=b"n"),
                        Delete(namespace="ns", key="doomed"),
                        Append(stream="s", payload=b"second"),
                        Append(stream="s2", payload=b"other"),
                        Check(namespace="ns", key="k", version=1),  # k is at 2 by now
                    ]
                )
            assert await s.scan("ns") == [doomed, before]
            assert [e.payload for e in await s.read("s")] == [b"first"]
            assert await s.read("s2") == []
            assert (await s.append("s", b"next")).seq == 2

        self._run(tmp_path, body)

    def test_st9_a_failing_put_in_the_middle_changes_nothing(self, tmp_path: Path) -> None:
        """A put whose ``if_version`` fails mid-batch leaves earlier and later ops unapplied."""

        async def body(s: StorageAdapter) -> None:
            await s.put("ns", "k", b"v")
            with pytest.raises(ConflictError):
                await s.commit(
                    [
                        Put(namespace="ns", key="a", value=b"a"),
                        Append(stream="s", payload=b"x"),
                        Put(namespace="ns", key="k", value=b"w", if_version=0),
                        Put(namespace="ns", key="z", value=b"z"),
                    ]
                )
            assert [r.key for r in await s.scan("ns")] == ["k"]
            assert await s.read("s") == []

        self._run(tmp_path, body)

    def test_st9_invalid_input_in_a_batch_changes_nothing(self, tmp_path: Path) -> None:
        """A batch with an invalid name or an oversized value raises and applies nothing."""

        async def body(s: StorageAdapter) -> None:
            good = Put(namespace="ns", key="a", value=b"a")
            batches: list[tuple[list[Op], type[Exception]]] = [
                ([good, Put(namespace="ns", key="", value=b"")], InvalidKey),
                ([good, Append(stream="\x00", payload=b"")], InvalidKey),
                ([good, Delete(namespace="\ud800", key="k")], InvalidKey),
                (
                    [good, Check(namespace="ns", key="k" * (MAX_KEY_BYTES + 1), version=0)],
                    InvalidKey,
                ),
                (
                    [
                        good,
                        Append(stream="s", payload=b"p"),
                        Put(namespace="ns", key="b", value=b"x" * (MAX_VALUE_BYTES + 1)),
                    ],
                    ValueTooLarge,
                ),
            ]
            for batch, error in batches:
                with pytest.raises(error):
                    await s.commit(batch)
            assert await s.scan("ns") == []
            assert await s.read("s") == []

        self._run(tmp_path, body)

    def test_st9_concurrent_commits_are_atomic(self, tmp_path: Path) -> None:
        """Racing check-and-set commits: exactly one wins and its writes are all there."""

        async def body(s: StorageAdapter) -> None:
            async def attempt(n: int) -> CommitResult | None:
                try:
                    return await s.commit(
                        [
                            Check(namespace="ns", key="owner", version=0),
                            Put(namespace="ns", key="owner", value=b"%d" % n),
                            Put(namespace="ns", key=f"by-{n}", value=b""),
                            Append(stream="s", payload=b"%d" % n),
                        ]
                    )
                except ConflictError:
                    return None

            results = await asyncio.gather(*(attempt(n) for n in range(10)))
            winners = [n for n, r in enumerate(results) if r is not None]
            assert len(winners) == 1, f"commits {winners} all passed the same check"
            win = winners[0]
            assert [r.key for r in await s.scan("ns")] == sorted(["owner", f"by-{win}"])
            assert [e.payload for e in await s.read("s")] == [b"%d" % win]

        self._run(tmp_path, body)

    def test_st9_the_batch_is_read_before_commit_returns(self, tmp_path: Path) -> None:
        """Any sequence of ops is accepted (a tuple too), and changing the caller's list
        after ``commit`` returned changes nothing: the adapter keeps no reference to it."""

        async def body(s: StorageAdapter) -> None:
            result = await s.commit(
                (Put(namespace="ns", key="t", value=b"tuple"), Append(stream="s", payload=b"t"))
            )
            assert [r.key for r in result.records] == ["t"], (
                f"commit of a tuple wrote {result.records!r}; expected the record 't'"
            )
            ops: list[Op] = [Put(namespace="ns", key="k", value=b"original")]
            written = (await s.commit(ops)).records[0]
            ops[0] = Put(namespace="ns", key="k", value=b"changed afterwards")
            ops.append(Delete(namespace="ns", key="t"))
            got = await s.get("ns", "k")
            assert got == written, (
                f"after the caller changed its list of ops, get('ns', 'k') is {got!r}; "
                f"commit had returned {written!r}"
            )
            kept = await s.get("ns", "t")
            assert kept is not None, "a Delete appended to the list after commit was applied"

        self._run(tmp_path, body)

    def test_st9_an_empty_commit_does_nothing(self, tmp_path: Path) -> None:
        """``commit([])`` returns an empty result."""

        async def body(s: StorageAdapter) -> None:
            result = await s.commit([])
            assert (result.records, result.entries, result.deleted) == ((), (), ())

        self._run(tmp_path, body)
