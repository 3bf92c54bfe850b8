"""The model-based state machine of ``StorageConformance``.

It drives the adapter and ``StorageModel`` (a few dicts and lists) side by side
and compares everything after every step. The clock belongs to the adapter, so
the model adopts the timestamps the adapter reports and checks everything else;
TTLs in the machine are an hour (nothing expires while it runs).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskloom.contracts import (
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
from taskloom.contracts.testing._storage_base import (
    EXPIRY_TOLERANCE_S,
    StorageSuiteBase,
)
from taskloom.contracts.testing._storage_model import StorageModel

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
_TOUCHES = st.lists(
    st.sampled_from(
        ["put", "put_if", "delete", "delete_if", "check", "check", "check_stale", "append"]
    ),
    min_size=2,
    max_size=6,
)
"""How a batch touches one key, in order (``_StorageMachine._one_key_batch``)."""

_OPENINGS = st.sampled_from(
    [
        ["put", "delete", "put"],
        ["delete", "put", "check"],
        ["put", "check", "delete"],
        ["put", "put_if", "check"],
        ["put", "delete_if", "check", "put_if"],
    ]
)
"""How the first batch of every example begins: two writes of one key at least, one of
them a delete in four cases of five."""


class _StorageMachine(RuleBasedStateMachine):
    """Drives one adapter and a ``StorageModel`` with the same operations."""

    suite: ClassVar[StorageSuiteBase]
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
            return await self.suite.bounded(awaitable, "a state machine step")

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

    @initialize(namespace=tst.namespaces(), key=tst.keys(), opening=_OPENINGS, touches=_TOUCHES)
    def start(self, namespace: str, key: str, opening: list[str], touches: list[str]) -> None:
        """Open the adapter; every example begins with a batch touching one key repeatedly
        (put then delete, delete then put, a check after a put), so that none misses one."""
        self.open()
        self._commit(self._one_key_batch(namespace, key, [*opening, *touches]))

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
        what = f"ST1-ST3: put({namespace!r}, {key!r}, if_version={if_version}, ttl={ttl})"
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
        what = f"ST3-ST4: delete({namespace!r}, {key!r}, if_version={if_version})"
        if not _agree_on_failure(got, want, what):
            assert got is want, f"{what} returned {got!r}, the model says {want!r}"

    @rule(namespace=tst.namespaces(), key=tst.keys())
    def get(self, namespace: str, key: str) -> None:
        got = self.run(self.s.get(namespace, key))
        want = self.model.get(namespace, key, now=time.time())
        assert got == want, f"ST1: get({namespace!r}, {key!r}) returned {got!r}, expected {want!r}"

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
            f"ST6: scan({namespace!r}, prefix={prefix!r}, start_after={start_after!r}, "
            f"limit={limit}) returned keys {[r.key for r in got]}, "
            f"expected {[r.key for r in want]}"
        )

    @rule(stream=tst.stream_names(), payload=tst.values())
    def append(self, stream: str, payload: bytes) -> None:
        got = self.run(self.s.append(stream, payload))
        want = self.model.append(stream, payload, now=time.time())
        _same_entry(got, want, f"ST8: append({stream!r})")
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
            f"ST8: read({stream!r}, after={after}, limit={limit}) returned "
            f"{[e.seq for e in got]}, expected {[e.seq for e in want]}"
        )

    @rule(ops=_op_lists)
    def commit(self, ops: list[Op]) -> None:
        self._commit(ops)

    @rule(namespace=tst.namespaces(), key=tst.keys(), touches=_TOUCHES)
    def commit_touching_one_key(self, namespace: str, key: str, touches: list[str]) -> None:
        """A batch that puts, deletes and checks one key several times, in order."""
        self._commit(self._one_key_batch(namespace, key, touches))

    def _one_key_batch(self, namespace: str, key: str, touches: list[str]) -> list[Op]:
        """The ops ``touches`` names, with the versions the key will be at by then."""
        version = self.model.version(namespace, key, now=time.time())
        ops: list[Op] = []
        for n, touch in enumerate(touches):
            if touch in ("put", "put_if"):
                if_version = version if touch == "put_if" else None
                ops.append(
                    Put(namespace=namespace, key=key, value=b"%d" % n, if_version=if_version)
                )
                version += 1
            elif touch in ("delete", "delete_if"):
                if_version = version if touch == "delete_if" else None
                ops.append(Delete(namespace=namespace, key=key, if_version=if_version))
                version = 0
            elif touch in ("check", "check_stale"):
                wrong = 1 if touch == "check_stale" else 0
                ops.append(Check(namespace=namespace, key=key, version=version + wrong))
            else:
                ops.append(Append(stream=namespace, payload=b"%d" % n))
        return ops

    def _commit(self, ops: list[Op]) -> None:
        got = self.run(_outcome(self.s.commit(ops)))
        now = got.records[0].updated_at if isinstance(got, CommitResult) and got.records else 0.0
        now = now or time.time()
        want = _model_outcome(lambda: self.model.commit(ops, now=now))
        what = f"ST9: commit({ops!r})"
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
            f"ST10: commit with the key {bad!r} must raise InvalidKey, got {got!r}"
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
            assert got == want, (
                f"after the last step, namespace {namespace!r} holds {got!r}; "
                f"the model holds {want!r}"
            )
        for stream, got_entries in zip(tst.STREAMS, reads, strict=True):
            want_entries = self.model.read(stream)
            assert got_entries == want_entries, (
                f"after the last step, stream {stream!r} holds {got_entries!r}; the model holds "
                f"{want_entries!r}"
            )
