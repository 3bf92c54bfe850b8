"""Shared fixtures for the security tests: a tiny in-memory storage, keys, plugins.

The storage here is deliberately minimal and independent of
``taskloom.adapters`` so that these tests exercise only the security layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from taskloom.contracts import (
    Append,
    Capabilities,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    Op,
    Put,
    Record,
    StreamEntry,
)
from taskloom.security import (
    PrivateKey,
    TrustStore,
    build_manifest,
    generate_key,
    sign_manifest,
)

NOW = 1_800_000_000
"""The reference time every test uses (an integer: manifests hold integer times)."""


class DictStorage:
    """A dict-backed StorageAdapter: records with versions, gapless streams, atomic commit."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Record] = {}
        self.streams: dict[str, list[StreamEntry]] = {}

    async def get(self, namespace: str, key: str) -> Record | None:
        return self.records.get((namespace, key))

    def _check(self, namespace: str, key: str, if_version: int | None) -> None:
        if if_version is None:
            return
        current = self.records.get((namespace, key))
        actual = 0 if current is None else current.version
        if actual != if_version:
            raise ConflictError(
                "version mismatch", namespace=namespace, key=key, expected=if_version, actual=actual
            )

    def _put(self, namespace: str, key: str, value: bytes) -> Record:
        current = self.records.get((namespace, key))
        record = Record(
            namespace=namespace,
            key=key,
            value=value,
            version=1 if current is None else current.version + 1,
            updated_at=time.time(),
        )
        self.records[(namespace, key)] = record
        return record

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        self._check(namespace, key, if_version)
        return self._put(namespace, key, value)

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        self._check(namespace, key, if_version)
        return self.records.pop((namespace, key), None) is not None

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        keys = sorted(
            k
            for ns, k in self.records
            if ns == namespace and k.startswith(prefix) and (start_after is None or k > start_after)
        )
        return [self.records[(namespace, k)] for k in keys[:limit]]

    def _append(self, stream: str, payload: bytes) -> StreamEntry:
        entries = self.streams.setdefault(stream, [])
        entry = StreamEntry(
            stream=stream, seq=len(entries) + 1, payload=payload, appended_at=time.time()
        )
        entries.append(entry)
        return entry

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        return self._append(stream, payload)

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        entries = [e for e in self.streams.get(stream, []) if e.seq > after]
        return entries[:limit]

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        for op in ops:
            if isinstance(op, Put | Delete):
                self._check(op.namespace, op.key, op.if_version)
            elif isinstance(op, Check):
                self._check(op.namespace, op.key, op.version)
        records, entries, deleted = [], [], []
        for op in ops:
            if isinstance(op, Put):
                records.append(self._put(op.namespace, op.key, op.value))
            elif isinstance(op, Delete):
                deleted.append(self.records.pop((op.namespace, op.key), None) is not None)
            elif isinstance(op, Append):
                entries.append(self._append(op.stream, op.payload))
        return CommitResult(records=tuple(records), entries=tuple(entries), deleted=tuple(deleted))

    async def aclose(self) -> None:
        return None

    def load_stream(self, stream: str, payloads: Sequence[bytes]) -> None:
        """Replace ``stream`` with ``payloads`` (seqs renumbered from 1): a tampered copy."""
        self.streams[stream] = []
        for payload in payloads:
            self._append(stream, payload)


def write_plugin(root: Path, files: dict[str, bytes]) -> Path:
    """Create a plugin directory holding ``files`` (relative '/' paths)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


DEFAULT_FILES = {
    "plugin.py": b"def setup(ctx):\n    return 'hello'\n",
    "pkg/__init__.py": b"",
    "pkg/util.py": b"X = 1\n" * 20,
    "data/prompt.txt": b"Summarize: {{inputs.doc}}\n",
}


def make_signed(
    root: Path,
    keys: Sequence[PrivateKey],
    *,
    name: str = "demo",
    version: int = 1,
    files: dict[str, bytes] | None = None,
    issued_at: int = NOW - 100,
    expires_at: int = NOW + 3600,
) -> bytes:
    """Write a plugin under ``root`` and return its envelope signed by ``keys``."""
    write_plugin(root, DEFAULT_FILES if files is None else files)
    manifest = build_manifest(
        root,
        name=name,
        version=version,
        entry_point="plugin:setup",
        publisher="Example Co",
        capabilities=Capabilities(network_hosts=("api.example.com",), secrets=("token",)),
        issued_at=issued_at,
        expires_at=expires_at,
        min_sdk_version="0.1.0",
    )
    return sign_manifest(manifest, list(keys))


def trust_for(*keys: PrivateKey, plugins: Sequence[str] = ("*",), threshold: int = 1) -> TrustStore:
    """A trust store trusting every key of ``keys`` for ``plugins``."""
    store = TrustStore(threshold=threshold)
    for key in keys:
        store.add_key(key.public_key, plugins=plugins)
    return store


_KEYS = [generate_key() for _ in range(4)]


def keys(n: int) -> list[PrivateKey]:
    """``n`` fixed private keys (generated once per test session, for speed)."""
    return _KEYS[:n]
