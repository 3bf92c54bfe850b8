"""Deliberately broken adapters, each with one realistic bug, and a harness that runs a
conformance suite against them.

A suite that passes everything proves nothing: ``test_suites_catch_broken.py`` runs
the relevant tests of each suite against each of these and expects them to fail.
Every broken adapter wraps a working adapter and changes one behaviour, so a
failure can only come from that one bug. The adapters live in ``broken_storage``,
``broken_storage_more``, ``broken_secrets`` and ``broken_executors``; this module
merges their tables and builds the suites.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from broken_executors import BROKEN_EXECUTORS as BROKEN_EXECUTORS_FIRST
from broken_executors import BROKEN_EXECUTORS_MORE
from broken_secrets import BROKEN_SECRETS as BROKEN_SECRETS_FIRST
from broken_secrets import BROKEN_SECRETS_MORE, READ_ONLY, ForgetsOnReopen, WrappedSecrets
from broken_storage import BROKEN_STORAGE as BROKEN_STORAGE_FIRST
from broken_storage import WrappedStorage
from broken_storage_batches import BROKEN_BATCHES
from broken_storage_more import BROKEN_MORE
from broken_storage_records import BROKEN_RECORDS
from hypothesis import Phase, settings
from simple_storage import BufferedUntilClose, FlushesEveryFewWrites, JsonFileStorage

from taskloom.adapters.memory import MemorySecretStore, MemoryStorage
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import (
    AuthenticationFailed,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    LLMExecutor,
    ProviderUnavailable,
    RateLimited,
    SecretStore,
    StorageAdapter,
)
from taskloom.contracts.testing import (
    ExecutorConformance,
    SecretStoreConformance,
    StorageConformance,
)

__all__ = [
    "BROKEN_DURABLE_STORAGE",
    "BROKEN_EXECUTORS",
    "BROKEN_SECRETS",
    "BROKEN_STORAGE",
    "WrappedSecrets",
    "WrappedStorage",
    "codes_of",
    "executor_suite",
    "file_storage_suite",
    "run_tests",
    "secrets_suite",
    "storage_suite",
]

BROKEN_STORAGE = {**BROKEN_STORAGE_FIRST, **BROKEN_RECORDS, **BROKEN_MORE, **BROKEN_BATCHES}
BROKEN_SECRETS = {**BROKEN_SECRETS_FIRST, **BROKEN_SECRETS_MORE}
BROKEN_EXECUTORS = {**BROKEN_EXECUTORS_FIRST, **BROKEN_EXECUTORS_MORE}
"""Every broken storage adapter and the invariant whose tests must catch it."""

CODE = re.compile(r"[a-z]+\d+")


def codes_of(test_name: str) -> list[str]:
    """The invariant codes a test name starts with: ``test_st1_st2_x`` -> [st1, st2]."""
    codes = []
    for part in test_name.removeprefix("test_").split("_"):
        if not CODE.fullmatch(part):
            break
        codes.append(part)
    return codes


def _fast_settings(base: settings) -> settings:
    """No shrinking and no example database: we only need to know that it fails."""
    return settings(base, phases=[Phase.explicit, Phase.generate], database=None, derandomize=True)


def storage_suite(wrapper: Callable[[MemoryStorage], StorageAdapter]) -> StorageConformance:
    """A StorageConformance whose adapter is ``wrapper`` around a MemoryStorage per location."""

    class Suite(StorageConformance):
        durable = True
        survives_kill = False  # a MemoryStorage cannot outlive a killed process
        timeout_s = 10.0  # a broken adapter that hangs fails within seconds, even under load

        def __init__(self) -> None:
            self.stores: dict[Path, MemoryStorage] = {}

        def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
            @asynccontextmanager
            async def opened() -> AsyncIterator[StorageAdapter]:
                previous = self.stores.get(location)
                inner = MemoryStorage() if previous is None else previous.reopen()
                self.stores[location] = inner
                adapter = wrapper(inner)
                try:
                    yield adapter
                finally:
                    await adapter.aclose()

            return opened()

        def hypothesis_settings(self) -> settings:
            return _fast_settings(super().hypothesis_settings())

    return Suite()


def file_storage_suite(cls: type[JsonFileStorage], factory: str) -> StorageConformance:
    """A StorageConformance on ``cls`` (a JSON file store); ``factory`` names its opener
    for the killed child process (``"simple_storage:open_..."``)."""

    class Suite(StorageConformance):
        durable = True
        crash_factory = factory

        def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
            return cls(location)

        def hypothesis_settings(self) -> settings:
            return _fast_settings(super().hypothesis_settings())

    return Suite()


BROKEN_DURABLE_STORAGE: dict[str, tuple[type[JsonFileStorage], str, str]] = {
    "writes only on aclose": (
        BufferedUntilClose,
        "simple_storage:open_buffered_until_close",
        "st11",
    ),
    "flushes every fourth write": (
        FlushesEveryFewWrites,
        "simple_storage:open_flushes_every_few_writes",
        "st11",
    ),
}
"""File-backed broken adapters that pass every reopen test and lose writes when killed."""


def secrets_suite(wrapper: type[WrappedSecrets]) -> SecretStoreConformance:
    """A SecretStoreConformance whose store is ``wrapper`` around a MemorySecretStore."""
    read_only = wrapper in READ_ONLY
    remember = wrapper is not ForgetsOnReopen

    class Suite(SecretStoreConformance):
        durable = True
        writable = not read_only

        def __init__(self) -> None:
            self.stores: dict[Path, MemorySecretStore] = {}

        def open_store(
            self, location: Path, initial: Mapping[str, str] | None = None
        ) -> AbstractAsyncContextManager[SecretStore]:
            @asynccontextmanager
            async def opened() -> AsyncIterator[SecretStore]:
                previous = self.stores.get(location) if remember else None
                inner = MemorySecretStore(initial) if previous is None else previous.reopen()
                self.stores[location] = inner
                store = wrapper(inner)
                try:
                    yield store
                finally:
                    await store.aclose()

            return opened()

        def hypothesis_settings(self) -> settings:
            return _fast_settings(super().hypothesis_settings())

    return Suite()


def executor_suite(cls: type[ScriptedExecutor]) -> ExecutorConformance:
    """An ExecutorConformance whose executors are instances of ``cls``."""
    failures: dict[str, ExecutorError] = {
        "rate_limited": RateLimited("slow down", retry_after=1.0),
        "timeout": ExecutorTimeout("slow"),
        "unavailable": ProviderUnavailable("down"),
        "invalid_request": InvalidRequest("bad"),
        "authentication": AuthenticationFailed("who"),
    }

    @asynccontextmanager
    async def opened(executor: ScriptedExecutor) -> AsyncIterator[LLMExecutor]:
        try:
            yield executor
        finally:
            await executor.aclose()

    class Suite(ExecutorConformance):
        timeout_s: ClassVar[float] = 1.0

        def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
            return opened(cls(chunk_size=4))

        def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
            return opened(cls(failures=itertools.repeat(failures[failure])))

    return Suite()


# --- the harness ---------------------------------------------------------------------


def _run_one(suite: object, name: str, tmp_path: Path) -> BaseException | str | None:
    method = getattr(suite, name)
    kwargs: dict[str, Any] = {}
    if "tmp_path" in inspect.signature(method).parameters:
        kwargs["tmp_path"] = tmp_path / name
        kwargs["tmp_path"].mkdir(parents=True)
    try:
        method(**kwargs)
    except pytest.skip.Exception:
        return "skipped"
    except (Exception, pytest.fail.Exception) as exc:
        return exc
    return None


def run_tests(
    suite: object, tmp_path: Path, *, machines: bool = True
) -> dict[str, BaseException | None]:
    """Run every test of ``suite``, each in its own directory; return each test's exception
    (None when it passed); skipped tests are left out. ``machines=False`` leaves out the
    state machines (the catch tests need an example test to fail anyway).

    Example tests run in threads (each has its own event loop), so that the suite's
    short TTL sleeps overlap; hypothesis tests run one at a time in this thread.
    """
    names = sorted(n for n in dir(suite) if n.startswith("test_"))
    stateful = [n for n in names if n.endswith("_against_model") and machines]
    examples = [n for n in names if not n.endswith("_against_model")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {n: pool.submit(_run_one, suite, n, tmp_path) for n in examples}
        outcomes = {n: _run_one(suite, n, tmp_path) for n in stateful}
        outcomes.update({n: f.result() for n, f in futures.items()})
    return {n: o for n, o in outcomes.items() if not isinstance(o, str)}
