"""``StorageConformance``: the test suite every ``StorageAdapter`` must pass.

Subclass it in a test module and supply the factory::

    class TestMyStorage(StorageConformance):
        durable = True

        def open_storage(self, location):
            return MyStorage.open(location)      # an async context manager

Then ``pytest`` runs every check. Each test is named after the invariant of
``StorageAdapter``'s docstring it checks (``test_st6_...`` checks ST6). The tests
are plain synchronous pytest tests that run their own event loop, so the suite
needs no pytest-asyncio configuration in the adapter's project.

The state machine drives the adapter and ``StorageModel`` (a few dicts and
lists) side by side and compares everything after every step. The clock belongs
to the adapter, so the model adopts the timestamps the adapter reports and
checks everything else; TTLs in the machine are an hour (nothing expires while it
runs) and expiry itself is checked by example tests with short real TTLs.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

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
    Record,
    StorageAdapter,
    StreamEntry,
    UsageError,
    ValueTooLarge,
)
from taskloom.contracts.testing import strategies as tst

__all__ = ["StorageConformance", "StorageModel"]

Body = Callable[[StorageAdapter], Awaitable[None]]

EXPIRY_TOLERANCE_S = 1e-3
"""How far ``expires_at`` may be from ``updated_at + ttl`` (float rounding, clock reads)."""

INVALID_NAMES: tuple[str, ...] = (
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "k" * (MAX_KEY_BYTES + 1),
    "é" * (MAX_KEY_BYTES // 2 + 1),
)
"""Names every adapter must refuse with ``InvalidKey`` (ST10)."""

LOOKALIKE_NAMES: tuple[str, ...] = (
    "a",
    "A",
    "a/b",
    "a\\b",
    "a:b",
    "a.b",
    "a%2Fb",
    "a b",
    ".",
    "..",
    "../a",
    "/a",
    "CON",
    "é",
    "e\u0301",
    "\x01",
    "a\nb",
    "\U0001f600",
)
"""Distinct names that a careless encoding (path joins, case folding, Unicode
normalization, percent-decoding) would make collide or escape."""

ORDERED_KEYS: tuple[str, ...] = (
    "A",
    "B",
    "Z",
    "a",
    "a%",
    "a_",
    "aa",
    "ab",
    "b",
    "é",
    "\ue000",
    "\uffff",
    "\U00010000",
    "\U0001f600",
)
"""Keys in code point order; UTF-16 order would put the last two before ``\\ue000``."""


# --- the model ------------------------------------------------------------------------


class StorageModel:
    """A plain model of ``StorageAdapter``: dicts of records and lists of entries.

    Synchronous and obviously correct; it validates nothing (callers give it valid
    names) and takes the time from its caller, because timestamps are the
    adapter's to choose: ``now`` decides expiry and stamps what the model writes.
    """

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Record]] = {}
        self.streams: dict[str, list[StreamEntry]] = {}

    def get(self, namespace: str, key: str, *, now: float) -> Record | None:
        record = self.records.get(namespace, {}).get(key)
        if record is None or (record.expires_at is not None and record.expires_at <= now):
            return None
        return record

    def version(self, namespace: str, key: str, *, now: float) -> int:
        record = self.get(namespace, key, now=now)
        return 0 if record is None else record.version

    def _check(self, namespace: str, key: str, expected: int | None, now: float) -> None:
        actual = self.version(namespace, key, now=now)
        if expected is not None and expected != actual:
            raise ConflictError(
                f"model: {namespace}/{key} is at {actual}, expected {expected}",
                namespace=namespace,
                key=key,
                expected=expected,
                actual=actual,
            )

    def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
        now: float,
    ) -> Record:
        self._check(namespace, key, if_version, now)
        record = Record(
            namespace=namespace,
            key=key,
            value=value,
            version=self.version(namespace, key, now=now) + 1,
            updated_at=now,
            expires_at=None if ttl is None else now + ttl,
        )
        self.records.setdefault(namespace, {})[key] = record
        return record

    def delete(
        self, namespace: str, key: str, *, if_version: int | None = None, now: float
    ) -> bool:
        self._check(namespace, key, if_version, now)
        existed = self.get(namespace, key, now=now) is not None
        self.records.get(namespace, {}).pop(key, None)
        return existed

    def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
        now: float,
    ) -> list[Record]:
        found = [
            record
            for key, record in sorted(self.records.get(namespace, {}).items())
            if key.startswith(prefix)
            and (start_after is None or key > start_after)
            and self.get(namespace, key, now=now) is not None
        ]
        return found if limit is None else found[:limit]

    def append(self, stream: str, payload: bytes, *, now: float) -> StreamEntry:
        entries = self.streams.setdefault(stream, [])
        entry = StreamEntry(stream=stream, seq=len(entries) + 1, payload=payload, appended_at=now)
        entries.append(entry)
        return entry

    def read(self, stream: str, *, after: int = 0, limit: int | None = None) -> list[StreamEntry]:
        found = [entry for entry in self.streams.get(stream, []) if entry.seq > after]
        return found if limit is None else found[:limit]

    def commit(self, ops: Sequence[Op], *, now: float) -> CommitResult:
        """Apply ``ops`` in order to a copy; keep the copy only if all of them succeeded."""
        saved_records = {ns: dict(keys) for ns, keys in self.records.items()}
        saved_streams = {name: list(entries) for name, entries in self.streams.items()}
        records: list[Record] = []
        entries: list[StreamEntry] = []
        deleted: list[bool] = []
        try:
            for op in ops:
                if isinstance(op, Put):
                    records.append(
                        self.put(
                            op.namespace,
                            op.key,
                            op.value,
                            if_version=op.if_version,
                            ttl=op.ttl,
                            now=now,
                        )
                    )
                elif isinstance(op, Delete):
                    deleted.append(
                        self.delete(op.namespace, op.key, if_version=op.if_version, now=now)
                    )
                elif isinstance(op, Append):
                    entries.append(self.append(op.stream, op.payload, now=now))
                else:
                    self._check(op.namespace, op.key, op.version, now)
        except ConflictError:
            self.records, self.streams = saved_records, saved_streams
            raise
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))

    def adopt_record(self, record: Record) -> None:
        """Keep the adapter's timestamps for a record the model already agreed on."""
        self.records[record.namespace][record.key] = record

    def adopt_entry(self, entry: StreamEntry) -> None:
        """Keep the adapter's ``appended_at`` for an entry the model already agreed on."""
        self.streams[entry.stream][entry.seq - 1] = entry


# --- comparison helpers ------------------------------------------------------------


def _same_write(got: Record, want: Record, what: str) -> None:
    """``got`` (from the adapter) is the record the model expects, timestamps aside."""
    assert isinstance(got, Record), f"{what}: expected a Record, got {got!r}"
    assert (got.namespace, got.key, got.value, got.version) == (
        want.namespace,
        want.key,
        want.value,
        want.version,
    ), f"{what}: adapter wrote {got!r}, the model expects {want!r}"
    assert isinstance(got.updated_at, float) and math.isfinite(got.updated_at), (
        f"{what}: updated_at must be finite epoch seconds, got {got.updated_at!r}"
    )
    if want.expires_at is None:
        assert got.expires_at is None, f"{what}: no TTL was given but expires_at={got.expires_at}"
    else:
        ttl = want.expires_at - want.updated_at
        assert got.expires_at is not None, f"{what}: a TTL was given but expires_at is None"
        assert abs(got.expires_at - (got.updated_at + ttl)) <= EXPIRY_TOLERANCE_S, (
            f"{what}: expires_at={got.expires_at} is not updated_at + ttl "
            f"({got.updated_at} + {ttl})"
        )


def _same_entry(got: StreamEntry, want: StreamEntry, what: str) -> None:
    assert isinstance(got, StreamEntry), f"{what}: expected a StreamEntry, got {got!r}"
    assert (got.stream, got.seq, got.payload) == (want.stream, want.seq, want.payload), (
        f"{what}: adapter appended {got!r}, the model expects {want!r}"
    )


class _Raised:
    """The outcome of a call that raised: just the exception."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _outcome(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except (ConflictError, InvalidKey, ValueTooLarge, UsageError) as exc:
        return _Raised(exc)


def _model_outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ConflictError as exc:
        return _Raised(exc)


def _agree_on_failure(got: Any, want: Any, what: str) -> bool:
    """Check that adapter and model both failed (with ConflictError) or both did not.

    Returns True when both failed, so the caller has nothing more to compare.
    """
    if isinstance(want, _Raised):
        assert isinstance(got, _Raised) and isinstance(got.exc, ConflictError), (
            f"{what}: the model raises ConflictError ({want.exc}), the adapter returned {got!r}"
        )
        return True
    assert not isinstance(got, _Raised), (
        f"{what}: the adapter raised {type(got.exc).__name__}: {got.exc}; the model expects "
        f"{want!r}"
    )
    return False


# --- the state machine -------------------------------------------------------------


_op_lists = st.lists(tst.ops(), max_size=4)


class _StorageMachine(RuleBasedStateMachine):
    """Drives one adapter and a ``StorageModel`` with the same operations."""

    suite: ClassVar[StorageConformance]
    locations: ClassVar[Callable[[], Path]]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model = StorageModel()
        self.location = type(self).locations()
        self.context: AbstractAsyncContextManager[StorageAdapter] | None = None
        self.storage: StorageAdapter | None = None

    def run(self, awaitable: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await awaitable

        return self.runner.run(wrapped())

    def open(self) -> None:
        self.context = self.suite.open_storage(self.location)
        self.storage = self.run(self.context.__aenter__())

    def close(self) -> None:
        context, self.context, self.storage = self.context, None, None
        if context is not None:
            self.run(context.__aexit__(None, None, None))

    @property
    def s(self) -> StorageAdapter:
        assert self.storage is not None
        return self.storage

    @initialize()
    def start(self) -> None:
        self.open()

    def teardown(self) -> None:
        try:
            self.close()
        finally:
            self.runner.close()

    # rules -----------------------------------------------------------------------

    @rule(
        namespace=tst.namespaces(),
        key=tst.keys(),
        value=tst.values(),
        check=st.sampled_from(["none", "match", "zero", "stale"]),
        ttl=tst.ttls(),
    )
    def put(self, namespace: str, key: str, value: bytes, check: str, ttl: float | None) -> None:
        current = self.model.version(namespace, key, now=time.time())
        if_version = {"none": None, "match": current, "zero": 0, "stale": current + 1}[check]
        got = self.run(_outcome(self.s.put(namespace, key, value, if_version=if_version, ttl=ttl)))
        now = got.updated_at if isinstance(got, Record) else time.time()
        want = _model_outcome(
            lambda: self.model.put(namespace, key, value, if_version=if_version, ttl=ttl, now=now)
        )
        what = f"put({namespace!r}, {key!r}, if_version={if_version}, ttl={ttl})"
        if not _agree_on_failure(got, want, what):
            _same_write(got, want, what)
            self.model.adopt_record(got)

    @rule(
        namespace=tst.namespaces(),
        key=tst.keys(),
        check=st.sampled_from(["none", "match", "zero", "stale"]),
    )
    def delete(self, namespace: str, key: str, check: str) -> None:
        current = self.model.version(namespace, key, now=time.time())
        if_version = {"none": None, "match": current, "zero": 0, "stale": current + 1}[check]
        got = self.run(_outcome(self.s.delete(namespace, key, if_version=if_version)))
        want = _model_outcome(
            lambda: self.model.delete(namespace, key, if_version=if_version, now=time.time())
        )
        what = f"delete({namespace!r}, {key!r}, if_version={if_version})"
        if not _agree_on_failure(got, want, what):
            assert got is want, f"{what} returned {got!r}, the model says {want!r}"

    @rule(namespace=tst.namespaces(), key=tst.keys())
    def get(self, namespace: str, key: str) -> None:
        got = self.run(self.s.get(namespace, key))
        want = self.model.get(namespace, key, now=time.time())
        assert got == want, f"get({namespace!r}, {key!r}) returned {got!r}, expected {want!r}"

    @rule(
        namespace=tst.namespaces(),
        prefix=st.text(tst.KEY_ALPHABET, max_size=1),
        start_after=st.none() | tst.keys(),
        limit=st.none() | st.integers(1, 4),
    )
    def scan(self, namespace: str, prefix: str, start_after: str | None, limit: int | None) -> None:
        got = self.run(self.s.scan(namespace, prefix=prefix, start_after=start_after, limit=limit))
        want = self.model.scan(
            namespace, prefix=prefix, start_after=start_after, limit=limit, now=time.time()
        )
        assert got == want, (
            f"scan({namespace!r}, prefix={prefix!r}, start_after={start_after!r}, "
            f"limit={limit}) returned keys {[r.key for r in got]}, "
            f"expected {[r.key for r in want]}"
        )

    @rule(stream=tst.stream_names(), payload=tst.values())
    def append(self, stream: str, payload: bytes) -> None:
        got = self.run(self.s.append(stream, payload))
        want = self.model.append(stream, payload, now=time.time())
        _same_entry(got, want, f"append({stream!r})")
        self.model.adopt_entry(got)

    @rule(
        stream=tst.stream_names(),
        after=st.integers(0, 5),
        limit=st.none() | st.integers(1, 3),
    )
    def read(self, stream: str, after: int, limit: int | None) -> None:
        got = self.run(self.s.read(stream, after=after, limit=limit))
        want = self.model.read(stream, after=after, limit=limit)
        assert got == want, (
            f"read({stream!r}, after={after}, limit={limit}) returned "
            f"{[e.seq for e in got]}, expected {[e.seq for e in want]}"
        )

    @rule(ops=_op_lists)
    def commit(self, ops: list[Op]) -> None:
        got = self.run(_outcome(self.s.commit(ops)))
        now = got.records[0].updated_at if isinstance(got, CommitResult) and got.records else 0.0
        now = now or time.time()
        want = _model_outcome(lambda: self.model.commit(ops, now=now))
        what = f"commit({ops!r})"
        if _agree_on_failure(got, want, what):
            return
        assert isinstance(got, CommitResult), f"{what} returned {got!r}, not a CommitResult"
        assert len(got.records) == len(want.records), f"{what}: records {got.records!r}"
        assert len(got.entries) == len(want.entries), f"{what}: entries {got.entries!r}"
        assert got.deleted == want.deleted, (
            f"{what}: deleted {got.deleted}, expected {want.deleted}"
        )
        for record, expected in zip(got.records, want.records, strict=True):
            _same_write(record, expected, what)
        for entry, expected_entry in zip(got.entries, want.entries, strict=True):
            _same_entry(entry, expected_entry, what)
        # Adopt only the last write of each key: earlier ones were overwritten in the batch.
        # Adopt only what the batch left: a later put or delete of the key replaced it.
        for record in got.records:
            kept = self.model.records.get(record.namespace, {}).get(record.key)
            if kept is not None and kept.version == record.version:
                self.model.adopt_record(record)
        for entry in got.entries:
            self.model.adopt_entry(entry)

    @rule(ops=_op_lists, position=st.integers(0, 4), bad=st.sampled_from(["", "\x00", "\ud800"]))
    def commit_with_invalid_name(self, ops: list[Op], position: int, bad: str) -> None:
        batch = list(ops)
        batch.insert(min(position, len(batch)), Put(namespace="ns", key=bad, value=b"x"))
        got = self.run(_outcome(self.s.commit(batch)))
        assert isinstance(got, _Raised) and isinstance(got.exc, InvalidKey), (
            f"commit with the key {bad!r} must raise InvalidKey, got {got!r}"
        )

    @precondition(lambda self: self.suite.durable)
    @rule()
    def reopen(self) -> None:
        self.close()
        self.open()

    # invariants --------------------------------------------------------------------

    @invariant()
    def everything_matches(self) -> None:
        if self.storage is None:
            return
        storage = self.storage

        async def contents() -> tuple[list[list[Record]], list[list[StreamEntry]]]:
            scans = [await storage.scan(namespace) for namespace in tst.NAMESPACES]
            reads = [await storage.read(stream) for stream in tst.STREAMS]
            return scans, reads

        scans, reads = self.run(contents())
        now = time.time()
        for namespace, got in zip(tst.NAMESPACES, scans, strict=True):
            want = self.model.scan(namespace, now=now)
            assert got == want, f"namespace {namespace!r} holds {got!r}; the model holds {want!r}"
        for stream, got_entries in zip(tst.STREAMS, reads, strict=True):
            want_entries = self.model.read(stream)
            assert got_entries == want_entries, (
                f"stream {stream!r} holds {got_entries!r}; the model holds {want_entries!r}"
            )


# --- the suite ----------------------------------------------------------------------


class StorageConformance:
    """Subclass, implement ``open_storage``, and pytest checks every invariant ST1-ST12.

    ``durable``: True if a second ``open_storage`` on the same location sees what
    the first wrote (ST11); False skips the durability tests.
    ``max_examples`` and ``stateful_step_count`` size the state machine: lower
    them for slow adapters (the whole suite should stay well under a minute).
    """

    durable: ClassVar[bool] = True
    max_examples: ClassVar[int] = 40
    stateful_step_count: ClassVar[int] = 30

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        """An async context manager yielding the adapter stored at ``location``.

        ``location`` does not exist yet; its parent directory does. The adapter may
        create a file or a directory there. Calling this again with the same
        location must reopen the same data (when ``durable``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement open_storage(location) to run the "
            "storage conformance suite"
        )

    def hypothesis_settings(self) -> settings:
        """Settings for the state machine; override to tune beyond the two knobs."""
        return settings(
            max_examples=self.max_examples,
            stateful_step_count=self.stateful_step_count,
            deadline=None,
            report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )

    # helpers -----------------------------------------------------------------------

    def _run(self, tmp_path: Path, body: Body) -> None:
        """Open the adapter at a fresh location under ``tmp_path`` and run ``body``."""

        async def main() -> None:
            async with self.open_storage(tmp_path / "store") as storage:
                await body(storage)

        asyncio.run(main())

    def _run_twice(self, tmp_path: Path, first: Body, second: Body) -> None:
        """Run ``first`` on the adapter, close it, reopen the location and run ``second``."""
        if not self.durable:
            pytest.skip("the adapter declares durable = False")

        async def main() -> None:
            async with self.open_storage(tmp_path / "store") as storage:
                await first(storage)
            async with self.open_storage(tmp_path / "store") as storage:
                await second(storage)

        asyncio.run(main())

    # the model-based state machine ---------------------------------------------------

    def test_st1_st2_st3_st4_st6_st7_st8_st9_st10_st11_against_model(self, tmp_path: Path) -> None:
        """Random sequences of every operation give the same results as the plain model."""
        counter = itertools.count()

        def locations() -> Path:
            return tmp_path / f"machine-{next(counter)}"

        machine = type(
            "StorageMachine",
            (_StorageMachine,),
            {"suite": self, "locations": staticmethod(locations)},
        )
        run_state_machine_as_test(machine, settings=self.hypothesis_settings())

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
                seen: list[str] = []
                last: str | None = None
                while True:
                    page = await s.scan("ns", start_after=last, limit=page_size)
                    assert len(page) <= page_size
                    if not page:
                        break
                    seen.extend(r.key for r in page)
                    last = page[-1].key
                assert seen == keys, f"paging by {page_size} saw {seen}"

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

    def test_st9_an_empty_commit_does_nothing(self, tmp_path: Path) -> None:
        """``commit([])`` returns an empty result."""

        async def body(s: StorageAdapter) -> None:
            result = await s.commit([])
            assert (result.records, result.entries, result.deleted) == ((), (), ())

        self._run(tmp_path, body)

    # ST10 ----------------------------------------------------------------------------

    def test_st10_invalid_names_raise_invalid_key(self, tmp_path: Path) -> None:
        """Empty, NUL, lone-surrogate and over-long names raise InvalidKey in every method."""

        async def body(s: StorageAdapter) -> None:
            calls: list[Callable[[str], Awaitable[Any]]] = [
                lambda n: s.get(n, "k"),
                lambda n: s.get("ns", n),
                lambda n: s.put(n, "k", b"v"),
                lambda n: s.put("ns", n, b"v"),
                lambda n: s.delete(n, "k"),
                lambda n: s.delete("ns", n),
                lambda n: s.scan(n),
                lambda n: s.append(n, b"p"),
                lambda n: s.read(n),
                lambda n: s.commit([Put(namespace=n, key="k", value=b"")]),
                lambda n: s.commit([Put(namespace="ns", key=n, value=b"")]),
                lambda n: s.commit([Delete(namespace="ns", key=n)]),
                lambda n: s.commit([Append(stream=n, payload=b"")]),
                lambda n: s.commit([Check(namespace="ns", key=n, version=0)]),
            ]
            for name in INVALID_NAMES:
                for number, call in enumerate(calls):
                    with pytest.raises(InvalidKey):
                        await call(name)
                        pytest.fail(f"call #{number} accepted the name {name[:20]!r}")
            assert await s.get("ns", "k") is None
            assert await s.scan("ns") == []

        self._run(tmp_path, body)

    def test_st10_the_longest_names_are_accepted(self, tmp_path: Path) -> None:
        """Names of exactly MAX_KEY_BYTES UTF-8 bytes, in any script, work everywhere."""

        async def body(s: StorageAdapter) -> None:
            for name in ("k" * MAX_KEY_BYTES, "é" * (MAX_KEY_BYTES // 2), "\U0001f600" * 256):
                assert len(name.encode()) == MAX_KEY_BYTES
                record = await s.put(name, name, b"v")
                assert await s.get(name, name) == record
                assert (await s.append(name, b"p")).seq == 1

        self._run(tmp_path, body)

    def test_st10_oversized_values_store_nothing(self, tmp_path: Path) -> None:
        """A value or payload over MAX_VALUE_BYTES raises ValueTooLarge and changes nothing."""

        async def body(s: StorageAdapter) -> None:
            too_big = b"x" * (MAX_VALUE_BYTES + 1)
            with pytest.raises(ValueTooLarge):
                await s.put("ns", "new", too_big)
            assert await s.get("ns", "new") is None
            kept = await s.put("ns", "k", b"small")
            with pytest.raises(ValueTooLarge):
                await s.put("ns", "k", too_big)
            assert await s.get("ns", "k") == kept
            with pytest.raises(ValueTooLarge):
                await s.append("s", too_big)
            assert await s.read("s") == []
            assert (await s.append("s", b"ok")).seq == 1

        self._run(tmp_path, body)

    def test_st10_the_largest_value_is_accepted(self, tmp_path: Path) -> None:
        """A value of exactly MAX_VALUE_BYTES is stored and read back intact."""

        async def body(s: StorageAdapter) -> None:
            value = bytes(range(256)) * (MAX_VALUE_BYTES // 256)
            assert len(value) == MAX_VALUE_BYTES
            await s.put("ns", "big", value)
            record = await s.get("ns", "big")
            assert record is not None and record.value == value

        self._run(tmp_path, body)

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
