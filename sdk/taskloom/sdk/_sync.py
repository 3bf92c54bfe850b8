"""``SyncEngine``: the engine for code without an event loop (scripts, notebooks, WSGI).

It owns an ``asyncio.Runner`` (one private event loop) and runs each call to
completion on it, so the async engine's guarantees hold unchanged. Use it as a
context manager, or call ``close()``. It must not be used from inside a running
event loop (use ``Engine`` there): that raises ``UsageError`` instead of deadlocking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from taskloom.contracts import UsageError
from taskloom.sdk._engine.engine import Engine, PipelineSource
from taskloom.sdk._engine.handle import RunResult

T = TypeVar("T")


class SyncEngine:
    """Blocking facade over :class:`Engine`; takes the same keyword arguments."""

    def __init__(self, engine: Engine | None = None, **kwargs: Any) -> None:
        if engine is not None and kwargs:
            raise UsageError("pass either an Engine or Engine keyword arguments, not both")
        self._runner = asyncio.Runner()
        self._kwargs = kwargs
        self._engine = engine
        self._closed = False

    @classmethod
    def from_config(cls, path: str | Path, **overrides: Any) -> SyncEngine:
        """A SyncEngine over ``Engine.from_config(path, **overrides)``."""
        sync = cls()
        sync._engine = sync._call(_build_from_config(path, overrides))
        return sync

    @property
    def engine(self) -> Engine:
        """The wrapped async engine (built on first use inside the private loop)."""
        if self._engine is None:
            self._engine = self._call(_build(self._kwargs))
        return self._engine

    def _call(self, coro: Any) -> Any:
        if self._closed:
            coro.close()
            raise UsageError("this SyncEngine is closed; create a new one")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._runner.run(coro)
        coro.close()
        raise UsageError("SyncEngine cannot be used inside a running event loop: use Engine")

    def run(self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None = None) -> RunResult:
        """Run ``pipeline`` to the end and return its result (or raise, like Engine.run)."""
        engine = self.engine
        return self._call(engine.run(pipeline, inputs))  # type: ignore[no-any-return]

    def resume(self, run_id: str, pipeline: PipelineSource | None = None) -> RunResult:
        """Continue a run from its checkpoints (see Engine.resume)."""
        engine = self.engine
        return self._call(engine.resume(run_id, pipeline))  # type: ignore[no-any-return]

    def provide(self, run_id: str, step_id: str, value: Any, *, by: str | None = None) -> RunResult:
        """Give a waiting input step its value and continue the run (see Engine.provide)."""
        engine = self.engine
        return self._call(engine.provide(run_id, step_id, value, by=by))  # type: ignore[no-any-return]

    def submit(
        self,
        pipeline: PipelineSource,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        queue: str = "default",
        priority: int = 0,
    ) -> str:
        """Queue a run for a worker and return its id (see Engine.submit)."""
        engine = self.engine
        return self._call(  # type: ignore[no-any-return]
            engine.submit(
                pipeline,
                inputs,
                run_id=run_id,
                idempotency_key=idempotency_key,
                queue=queue,
                priority=priority,
            )
        )

    def close(self) -> None:
        """Close the engine and the private loop (idempotent)."""
        if self._closed:
            return
        try:
            if self._engine is not None:
                self._runner.run(self._engine.aclose())
        finally:
            self._closed = True
            self._runner.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _build(kwargs: dict[str, Any]) -> Engine:
    engine = Engine(**kwargs)
    await engine.open()
    return engine


async def _build_from_config(path: str | Path, overrides: dict[str, Any]) -> Engine:
    engine = Engine.from_config(path, **overrides)
    await engine.open()
    return engine
