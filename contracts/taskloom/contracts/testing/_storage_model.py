"""``StorageModel``: the plain model the storage state machine checks adapters against."""

from __future__ import annotations

from collections.abc import Sequence

from taskloom.contracts import (
    Append,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Put,
    Record,
    StreamEntry,
)


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
