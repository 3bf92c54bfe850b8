"""What a running run needs from its engine, as a typed seam.

``RunExecution`` and the leaf runner receive the ``Engine`` through this Protocol,
so the engine's modules depend on names that ``mypy --strict`` checks: renaming one
of these on ``Engine`` fails the type check at the place the engine hands itself
over, not only a test at run time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from taskloom.contracts import StepFunction
from taskloom.sdk._engine.ratelimit import ExecutorLimits
from taskloom.sdk._registry import ExecutorRegistry
from taskloom.sdk._runs.store import RunStore

if TYPE_CHECKING:
    from taskloom.sdk._telemetry.tracing import Telemetry


class RunServices(Protocol):
    """The engine's services a run uses while it runs (``Engine`` provides them)."""

    @property
    def registry(self) -> ExecutorRegistry:
        """Executors by id."""

    @property
    def runstore(self) -> RunStore | None:
        """Checkpoints, events and the cache; None when the engine keeps no state."""

    @property
    def plugin_steps(self) -> Mapping[str, StepFunction]:
        """Plugin step functions by ``uses`` name."""

    @property
    def global_limit(self) -> asyncio.Semaphore | None:
        """The engine-wide concurrency slot, if ``max_concurrency`` was set."""

    @property
    def durability(self) -> str:
        """``"async"`` or ``"sync"`` (see ``Engine``)."""

    @property
    def clock(self) -> Callable[[], float]:
        """Wall-clock seconds (injectable for tests)."""

    @property
    def sleep(self) -> Callable[[float], Awaitable[None]]:
        """How retries wait (injectable for tests)."""

    @property
    def random(self) -> Callable[[], float]:
        """Jitter source for retries (injectable for tests)."""

    @property
    def telemetry(self) -> Telemetry | None:
        """Spans and metrics, or None when telemetry is off."""

    def redact(self, text: str) -> str:
        """``text`` with every known secret value masked."""

    def mask(self, value: Any) -> Any:
        """``value`` (an output, a reply) with every known secret value masked."""

    def limits(self, executor_id: str) -> ExecutorLimits:
        """The concurrency and rate limits of one executor id."""
