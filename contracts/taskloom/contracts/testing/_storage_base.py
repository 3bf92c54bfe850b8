"""What every part of ``StorageConformance`` shares: its knobs, its hook, how it runs a test.

``StorageSuiteBase`` holds the attributes and the ``open_storage`` hook that an
adapter author sets, and the helpers that open the adapter for one test; the
groups of example tests (one module per group of invariants) and the state
machine are written against it, and ``StorageConformance`` combines them.
The name tables here are the inputs several groups share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import ClassVar, TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings

from taskloom.contracts import (
    MAX_KEY_BYTES,
    StorageAdapter,
)
from taskloom.contracts.testing._naming import current_test, naming_invariant
from taskloom.contracts.testing._recording import Recording, Trail

Body = Callable[[StorageAdapter], Awaitable[None]]
T = TypeVar("T")

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


def _recorded(storage: StorageAdapter, trail: Trail) -> StorageAdapter:
    """``storage``, with every call written to ``trail`` for failure messages."""
    return cast(StorageAdapter, Recording(storage, trail))


class StorageSuiteBase:
    """The attributes, hook and helpers of ``StorageConformance`` (see its docstring)."""

    durable: ClassVar[bool] = True
    max_examples: ClassVar[int] = 40
    stateful_step_count: ClassVar[int] = 30
    timeout_s: ClassVar[float] = 60.0
    """Upper bound for one example test (or one state machine step), so that an adapter
    that never answers (a lock never released) fails the test instead of hanging it."""

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        """An async context manager yielding the adapter stored at ``location``.

        ``location`` does not exist yet; its parent directory does. The adapter may
        create a file or a directory there. Calling this again with the same
        location must reopen the same data (when ``durable``). The SIGKILL tests
        (ST11) also call it in a child process, on an instance of this class made
        without arguments; set ``crash_factory`` when that cannot work.
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

    async def bounded(self, awaitable: Awaitable[T], what: str) -> T:
        """``await awaitable``, failing after ``timeout_s`` instead of hanging."""
        try:
            return await asyncio.wait_for(awaitable, self.timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"{what} did not finish within timeout_s={self.timeout_s} s: a call to the "
                "adapter never returned (a lock or connection never released?)"
            ) from None

    def _run(self, tmp_path: Path, body: Body) -> None:
        """Open the adapter at a fresh location under ``tmp_path`` and run ``body``."""
        self._run_at(tmp_path / "store", body)

    def _run_at(self, location: Path, body: Body) -> None:
        """Open the adapter at ``location`` and run ``body``."""

        trail = Trail()

        async def main() -> None:
            async with self.open_storage(location) as storage:
                await self.bounded(body(_recorded(storage, trail)), "the test")

        with naming_invariant(StorageAdapter, current_test(), trail):
            asyncio.run(main())

    def _run_twice(self, tmp_path: Path, first: Body, second: Body) -> None:
        """Run ``first`` on the adapter, close it, reopen the location and run ``second``."""
        if not self.durable:
            pytest.skip("the adapter declares durable = False")

        trail = Trail()

        async def main() -> None:
            async with self.open_storage(tmp_path / "store") as storage:
                await self.bounded(first(_recorded(storage, trail)), "the writes before reopening")
            async with self.open_storage(tmp_path / "store") as storage:
                await self.bounded(second(_recorded(storage, trail)), "the reads after reopening")

        with naming_invariant(StorageAdapter, current_test(), trail):
            asyncio.run(main())
