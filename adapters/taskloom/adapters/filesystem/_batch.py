"""Planning a batch of writes: every operation's effect, decided before any file changes.

The writer thread takes whatever writes queued up and plans them in order
against the files on disk plus what earlier operations of the same batch
already decided (their versions, deletions and sequence numbers). Each
operation plans in a child ``Batch`` that is merged only if the whole
operation succeeds, so a ``commit`` whose third op conflicts leaves nothing
behind, and a failing put does not disturb its neighbours.

The batch's merged effect is then applied at once (``Store.apply_batch``):
every record file written with one parallel round of fsyncs, every stream's new
entries with one write and one fsync, every changed directory fsynced once.
That is the group commit that makes concurrent writers cheap on a real disk,
where an fsync costs about a millisecond and parallel fsyncs share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskloom.adapters.filesystem import _records as _fs_records
from taskloom.adapters.filesystem._journal import EntryChange, Intent, RecordChange
from taskloom.contracts import (
    Append,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Put,
    Record,
    StreamEntry,
    UsageError,
)

if TYPE_CHECKING:
    from taskloom.adapters.filesystem._core import Store

_Key = tuple[str, str]


class Batch:
    """The planned effect of some write operations; a child plans one operation."""

    def __init__(self, store: Store, now: float, parent: Batch | None = None) -> None:
        self._store = store
        self.now = now
        self._parent = parent
        self._records: dict[_Key, tuple[int, bool]] = {}
        self._next_seq: dict[str, int] = {}
        self.changes: dict[_Key, RecordChange] = {}
        self.entries: list[EntryChange] = []
        self.needs_journal = False

    # --- state as planned so far -----------------------------------------------------

    def _state(self, key: _Key) -> tuple[int, bool]:
        """(live version or 0, whether a file exists) after everything planned so far."""
        if key not in self._records:
            if self._parent is not None:
                self._records[key] = self._parent._state(key)
            else:
                self._records[key] = self._store.version_on_disk(key[0], key[1], self.now)
        return self._records[key]

    def _seq(self, stream: str) -> int:
        """The next sequence number of ``stream`` after everything planned so far."""
        if stream not in self._next_seq:
            if self._parent is not None:
                self._next_seq[stream] = self._parent._seq(stream)
            else:
                self._next_seq[stream] = self._store.last_seq(stream) + 1
        return self._next_seq[stream]

    def child(self) -> Batch:
        """A batch for one more operation, merged into this one by ``merge``."""
        return Batch(self._store, self.now, self)

    def merge(self) -> None:
        """Make this child's plan part of its parent's."""
        parent = self._parent
        if parent is None:
            raise RuntimeError("only a child batch can be merged")
        parent._records.update(self._records)
        parent._next_seq.update(self._next_seq)
        for key, change in self.changes.items():
            parent.changes.pop(key, None)  # keep the order of the latest change
            parent.changes[key] = change
        parent.entries.extend(self.entries)
        parent.needs_journal = parent.needs_journal or self.needs_journal

    def intent(self) -> Intent:
        """Everything this batch changes."""
        return Intent(records=tuple(self.changes.values()), entries=tuple(self.entries))

    # --- planning single changes -----------------------------------------------------

    def _put(
        self, namespace: str, key: str, value: bytes, if_version: int | None, ttl: float | None
    ) -> Record:
        current, _ = self._state((namespace, key))
        _check_version(namespace, key, if_version, current)
        expires_at = None if ttl is None else self.now + ttl
        data = _fs_records.pack(current + 1, self.now, expires_at, value)
        self.changes[namespace, key] = RecordChange(namespace=namespace, key=key, data=data)
        self._records[namespace, key] = (current + 1, True)
        return Record(
            namespace=namespace,
            key=key,
            value=value,
            version=current + 1,
            updated_at=self.now,
            expires_at=expires_at,
        )

    def _delete(self, namespace: str, key: str, if_version: int | None) -> bool:
        current, exists = self._state((namespace, key))
        _check_version(namespace, key, if_version, current)
        if exists:  # an expired file is cleaned up too
            self.changes[namespace, key] = RecordChange(namespace=namespace, key=key, data=None)
            self._records[namespace, key] = (0, False)
        return current > 0

    def _append(self, stream: str, payload: bytes) -> StreamEntry:
        seq = self._seq(stream)
        self._next_seq[stream] = seq + 1
        self.entries.append(
            EntryChange(stream=stream, seq=seq, appended_at=self.now, payload=payload)
        )
        return StreamEntry(stream=stream, seq=seq, payload=payload, appended_at=self.now)

    # --- the operations ----------------------------------------------------------------

    def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None,
        ttl: float | None,
    ) -> Record:
        """Plan one put (compare-and-set when ``if_version`` is given)."""
        return self._put(namespace, key, value, if_version, ttl)

    def delete(self, namespace: str, key: str, *, if_version: int | None) -> bool:
        """Plan one delete; True if a live record existed."""
        return self._delete(namespace, key, if_version)

    def append(self, stream: str, payload: bytes) -> StreamEntry:
        """Plan one append."""
        return self._append(stream, payload)

    def purge(self, namespace: str, keys: Sequence[str]) -> int:
        """Plan removing the files of records that are still expired; return how many."""
        removed = 0
        for key in keys:
            current, exists = self._state((namespace, key))
            if exists and current == 0:
                self._delete(namespace, key, None)
                removed += 1
        return removed

    def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Plan a commit; it is journaled when it changes more than one file."""
        records: list[Record] = []
        deleted: list[bool] = []
        entries: list[StreamEntry] = []
        for op in ops:
            if isinstance(op, Check):
                current, _ = self._state((op.namespace, op.key))
                _check_version(op.namespace, op.key, op.version, current)
            elif isinstance(op, Put):
                records.append(self._put(op.namespace, op.key, op.value, op.if_version, op.ttl))
            elif isinstance(op, Delete):
                deleted.append(self._delete(op.namespace, op.key, op.if_version))
            elif isinstance(op, Append):
                entries.append(self._append(op.stream, op.payload))
            else:
                raise UsageError(f"commit takes Put, Delete, Append and Check, got {op!r}")
        # Files this commit changes: one can change atomically alone, more need the journal.
        self.needs_journal = len(self.changes) + len(self.entries) > 1
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))


def _check_version(namespace: str, key: str, expected: int | None, actual: int) -> None:
    if expected is not None and expected != actual:
        raise ConflictError(
            f"{namespace!r}/{key!r} is at version {actual}, not {expected}: "
            "read it again and retry",
            namespace=namespace,
            key=key,
            expected=expected,
            actual=actual,
        )
