"""Shared helpers for the run store tests: storage factories, wrappers, record builders.

Not a test module of its own (it holds no tests); the run store tests import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from storage_wrappers import PassThroughStorage

from taskloom.contracts import (
    CommitResult,
    Op,
    Record,
    StorageAdapter,
    StorageUnavailable,
    Usage,
)
from taskloom.sdk._runs.records import RunRecord, RunStatus, StepRecord

STORAGE_KINDS = ("memory", "sqlite", "filesystem")


def postgres_storage(location: str | Path, **kwargs: Any) -> Any:
    """A PostgresStorage for a test ``location``: a schema of its own on the test server
    (``TASKLOOM_TEST_POSTGRES_DSN``, exported by the ``postgres_dsn`` fixture)."""
    from taskloom.adapters.postgres import PostgresStorage

    schema = "tl_rs_" + hashlib.sha256(str(location).encode()).hexdigest()[:20]
    dsn = os.environ["TASKLOOM_TEST_POSTGRES_DSN"]
    return PostgresStorage(dsn, schema=schema, min_size=0, max_size=4, **kwargs)


def storage_class(kind: str) -> Callable[..., Any]:
    """The adapter class for ``kind`` (for "postgres" a factory of one location argument,
    as the classes take); an import error fails the test (never a skip)."""
    if kind == "postgres":
        return postgres_storage
    module_name, class_name = {
        "memory": ("taskloom.adapters.memory", "MemoryStorage"),
        "sqlite": ("taskloom.adapters.sqlite", "SQLiteStorage"),
        "filesystem": ("taskloom.adapters.filesystem", "FileStorage"),
    }[kind]
    cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return cls


@contextlib.asynccontextmanager
async def open_storage(
    kind: str, tmp_path: Path, *, clock: Callable[[], float] | None = None
) -> AsyncIterator[StorageAdapter]:
    """Open a fresh adapter of ``kind`` under ``tmp_path`` and close it afterwards."""
    cls = storage_class(kind)
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    if kind == "memory":
        storage = cls(**kwargs)
    elif kind == "sqlite":
        storage = cls(tmp_path / "store.db", **kwargs)
    else:
        storage = cls(tmp_path / "store", **kwargs)
    try:
        yield storage
    finally:
        await storage.aclose()


class CountingStorage(PassThroughStorage):
    """Wraps an adapter and counts calls, to prove that writes are batched."""

    def __init__(self, inner: StorageAdapter) -> None:
        super().__init__(inner)
        self.commits = 0
        self.committed_ops = 0
        self.puts = 0

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        self.puts += 1
        return await super().put(namespace, key, value, if_version=if_version, ttl=ttl)

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        self.commits += 1
        self.committed_ops += len(ops)
        return await super().commit(ops)


class FlakyStorage(CountingStorage):
    """Fails the next ``fail_commits`` commits with StorageUnavailable, then works."""

    def __init__(self, inner: StorageAdapter, *, fail_commits: int = 0) -> None:
        super().__init__(inner)
        self.fail_commits = fail_commits
        self.failed = 0

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            self.failed += 1
            raise StorageUnavailable("disk full (injected)")
        return await super().commit(ops)


class FakeClock:
    """A clock the test moves by hand, for leases and retention."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_run(
    run_id: str = "run1",
    *,
    status: RunStatus = "running",
    pipeline_name: str = "demo",
    created_at: float = 1_700_000_000.0,
    **changes: Any,
) -> RunRecord:
    """A valid run record with overridable fields."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "pipeline_name": pipeline_name,
        "pipeline_digest": "0" * 64,
        "pipeline": {"name": pipeline_name, "steps": []},
        "inputs": {"doc": "hello"},
        "status": status,
        "created_at": created_at,
        "started_at": created_at,
    }
    fields.update(changes)
    return RunRecord(**fields)


def make_step(
    step_id: str = "a",
    item: int | None = None,
    *,
    run_id: str = "run1",
    tokens: int = 3,
    executor: str | None = "scripted",
    **changes: Any,
) -> StepRecord:
    """A valid checkpoint with overridable fields."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "step_id": step_id,
        "item": item,
        "status": "succeeded",
        "output": {"text": f"{step_id}:{item}"},
        "error": None,
        "usage": Usage(prompt_tokens=tokens, completion_tokens=2 * tokens),
        "executor": executor,
        "attempts": 1,
        "started_at": 1_700_000_000.0,
        "finished_at": 1_700_000_001.0,
    }
    fields.update(changes)
    return StepRecord(**fields)
