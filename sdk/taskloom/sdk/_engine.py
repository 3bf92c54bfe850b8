"""The engine: validate a pipeline, run it durably, stream its events, resume it.

``Engine`` composes a ``StorageAdapter`` (through a ``RunStore``), an
``ExecutorRegistry``, plugin step functions, a ``SecretStore`` and an
``EventBus``. ``run`` validates everything first (nothing runs on a bad
pipeline), creates the run record, runs the steps (see ``_engine_steps`` for
the scheduling rule) and records the outcome; ``start`` does the same in a task
and returns a ``RunHandle``; ``resume`` continues a run from its checkpoints.

Storage: by default a fresh ``MemoryStorage`` (runs are durable for the life of
the engine); pass any ``StorageAdapter`` for real durability, or
``storage=None`` to keep no state at all (no checkpoints, no resume, no cache).

Injectables (``clock``, ``sleep``, ``random``) make retries and timings
deterministic in tests; nothing else in the engine reads the time or sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from taskloom.contracts import (
    ChunkStreamed,
    ErrorInfo,
    Event,
    Pipeline,
    PipelineChanged,
    PipelineInvalid,
    RetryPolicy,
    RunCancelled,
    RunCancelledEvent,
    RunFailed,
    RunHeld,
    RunStarted,
    RunSucceeded,
    SecretStore,
    StepFailed,
    StepFunction,
    StepStarted,
    StorageAdapter,
    Usage,
    UsageError,
    serde,
)
from taskloom.sdk._checks import resolve_inputs
from taskloom.sdk._engine_steps import RunExecution, error_info, first_error
from taskloom.sdk._events_bus import EventBus
from taskloom.sdk._plan import Compiler, Plan
from taskloom.sdk._ratelimit import ExecutorLimits
from taskloom.sdk._registry import ExecutorRegistry
from taskloom.sdk._runstore import pipeline_digest
from taskloom.sdk._template import TemplateRenderError
from taskloom.sdk._validate import validate_pipeline

PipelineSource = Pipeline | Mapping[str, Any] | str | Path
_PLAN_CACHE_SIZE = 64
_DIGESTS: dict[int, tuple[weakref.ref[Pipeline], str]] = {}


def _stored(event: Event) -> bool:
    """Whether an event goes to the run's stored history (all go to the bus and handles).

    Streamed chunks are live-only (the step's output is stored whole), and so is the
    start of each *map item*: a map of 10,000 items would otherwise store 10,000
    events that say nothing their finish events (time and duration) do not.
    The start of every step, and every attempt, retry, finish and failure, is stored.
    """
    kind = type(event)
    if kind is ChunkStreamed:
        return False
    return not (kind is StepStarted and event.item is not None)  # type: ignore[union-attr]


def _digest(pipeline: Pipeline) -> str:
    """The pipeline's digest, computed once per Pipeline object in this process.

    Canonical JSON of a large pipeline is the costliest part of preparing a run;
    Pipelines are frozen, so the digest of one object never changes.
    """
    found = _DIGESTS.get(id(pipeline))
    if found is not None and found[0]() is pipeline:
        return found[1]
    digest = pipeline_digest(pipeline)
    key = id(pipeline)
    _DIGESTS[key] = (weakref.ref(pipeline, lambda _r: _DIGESTS.pop(key, None)), digest)
    return digest


@attrs.frozen(kw_only=True)
class RunResult:
    """The outcome of a run: its output, what it cost, and every step's output."""

    run_id: str
    status: str
    output: Any
    usage: Usage = attrs.field(factory=Usage)
    usage_by_executor: dict[str, Usage] = attrs.field(factory=dict)
    steps: dict[str, Any] = attrs.field(factory=dict)
    error: ErrorInfo | None = None


class _History:
    """A run's events so far, for ``RunHandle.events()`` (late iterators see them all)."""

    __slots__ = ("_waiter", "done", "events")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: Event) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def iterate(self) -> AsyncIterator[Event]:
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.done:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)


class RunHandle:
    """A run started with ``Engine.start``: its id, its events, its result, cancel."""

    def __init__(self, run_id: str, task: asyncio.Task[RunResult], history: _History) -> None:
        self.run_id = run_id
        self._task = task
        self._history = history
        self._cancel_requested = False

    def events(self) -> AsyncIterator[Event]:
        """Every event of the run, from the first (even if already emitted) to the last."""
        return self._history.iterate()

    async def result(self) -> RunResult:
        """Wait for the run; raise StepFailed, RunCancelled or the error that stopped it."""
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                raise RunCancelled(
                    f"run {self.run_id} was cancelled; resume it with engine.resume"
                    f"({self.run_id!r})"
                ) from None
            raise

    def cancel(self) -> None:
        """Cancel the run: in-flight steps are cancelled, the run is recorded as cancelled."""
        self._cancel_requested = True
        self._task.cancel()

    def done(self) -> bool:
        """True once the run has finished, whatever the outcome."""
        return self._task.done()


@attrs.define
class _RunSpec:
    run_id: str
    plan: Plan
    inputs: dict[str, Any]
    record: Any  # RunRecord | None
    finished: Mapping[tuple[str, int | None], Any]
    resumed: bool
    history: _History | None


class Engine:
    """Runs pipelines; use as ``async with Engine(...) as engine``."""

    def __init__(
        self,
        *,
        storage: StorageAdapter | str | None = "memory",
        registry: ExecutorRegistry | None = None,
        secrets: SecretStore | None = None,
        plugin_steps: Mapping[str, StepFunction] | None = None,
        bus: EventBus | None = None,
        max_concurrency: int | None = None,
        default_retry: RetryPolicy | None = None,
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise UsageError("max_concurrency must be at least 1 (or None for no limit)")
        self.registry = registry if registry is not None else ExecutorRegistry()
        self.secrets = secrets
        self.plugin_steps: dict[str, StepFunction] = dict(plugin_steps or {})
        self.bus = bus if bus is not None else EventBus()
        self._owns_bus = bus is None
        self.max_concurrency = max_concurrency
        self.default_retry = default_retry or RetryPolicy()
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self.sleep = sleep
        self.random = random
        self.holder = f"engine-{uuid.uuid4().hex[:12]}"
        self._storage_arg = storage
        self.storage: StorageAdapter | None = None
        self._owns_storage = False
        self.runstore: Any = None
        self.global_limit: asyncio.Semaphore | None = None
        self._limits: dict[str, ExecutorLimits] = {}
        self._plans: dict[int, tuple[Pipeline, Plan]] = {}
        self._handles: set[RunHandle] = set()
        self._opened = False
        self._closed = False
        self.owned_resources: list[Any] = []
        """Extra objects (a secret store from a config file) closed with the engine."""

    # --- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the storage and the run store (``async with`` does it; idempotent)."""
        if self._closed:
            raise UsageError("this engine is closed; create a new one")
        if self._opened:
            return
        storage = self._storage_arg
        if storage == "memory":
            from taskloom.adapters.memory import MemoryStorage

            storage = MemoryStorage()
            self._owns_storage = True
        elif isinstance(storage, str):
            raise UsageError(f"storage must be a StorageAdapter, None or 'memory', not {storage!r}")
        self.storage = storage
        if storage is not None:
            from taskloom.sdk._runstore import RunStore

            self.runstore = RunStore(storage, clock=self.clock)
        if self.max_concurrency is not None:
            self.global_limit = asyncio.Semaphore(self.max_concurrency)
        self._opened = True

    async def aclose(self) -> None:
        """Cancel runs still going, flush and close what the engine owns (idempotent)."""
        if self._closed:
            return
        self._closed = True
        handles = list(self._handles)
        for handle in handles:
            handle.cancel()
        if handles:
            await asyncio.wait([h._task for h in handles])
        try:
            if self.runstore is not None:
                await self.runstore.aclose()
        finally:
            await self.registry.aclose()
            if self._owns_bus:
                await self.bus.aclose()
            if self._owns_storage and self.storage is not None:
                await self.storage.aclose()
            for resource in self.owned_resources:
                await resource.aclose()

    @classmethod
    def from_config(cls, path: str | Path, **overrides: Any) -> Engine:
        """Build an engine from ``taskloom.toml`` (see ``taskloom.sdk._config``)."""
        from taskloom.sdk._config import engine_from_config

        engine: Engine = engine_from_config(cls, path, **overrides)
        return engine

    # --- services for RunExecution ---------------------------------------------

    def limits(self, executor_id: str) -> ExecutorLimits:
        """The concurrency and rate limits of one executor id (built on first use)."""
        found = self._limits.get(executor_id)
        if found is None:
            settings = self.registry.settings(executor_id)
            found = ExecutorLimits(
                concurrency=settings.concurrency,
                requests_per_minute=settings.requests_per_minute,
                tokens_per_minute=settings.tokens_per_minute,
                clock=self.clock,
                sleep=self.sleep,
            )
            self._limits[executor_id] = found
        return found

    def register_step(self, name: str, function: StepFunction) -> None:
        """Make ``uses: <name>`` call ``function`` (plugin hosts call this)."""
        self.plugin_steps[name] = function

    # --- validation ------------------------------------------------------------

    def validate(
        self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None = None
    ) -> Pipeline:
        """Check ``pipeline`` (and ``inputs``) against this engine's executors and plugin
        steps; return it structured. Raises PipelineInvalid listing every problem.

        A ``Pipeline`` object is checked and compiled once per engine: running it
        again reuses the result, so validate it ahead of time to keep that work off
        the first run.
        """
        return self._prepare(pipeline, inputs).pipeline

    def _prepare(self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None) -> Plan:
        if isinstance(pipeline, Pipeline):
            cached = self._plans.get(id(pipeline))
            if cached is not None and cached[0] is pipeline:
                if inputs is not None:
                    problems = resolve_inputs(pipeline.inputs, inputs)[1]
                    if problems:
                        raise PipelineInvalid(problems)
                return cached[1]
        checked = validate_pipeline(
            pipeline, registry=self.registry, plugin_steps=self.plugin_steps, inputs=inputs
        )
        compiler = Compiler(
            checked,
            default_executor=self.registry.default_id,
            default_model=lambda eid: self.registry.settings(eid).default_model,
            default_retry=self.default_retry,
        )
        plan = compiler.compile(_digest(checked))
        if isinstance(pipeline, Pipeline):
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[id(pipeline)] = (pipeline, plan)
        return plan

    def _spec(
        self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None, history: _History | None
    ) -> _RunSpec:
        if self._closed:
            raise UsageError("this engine is closed; create a new one")
        given = dict(inputs or {})
        plan = self._prepare(pipeline, given)
        values, problems = resolve_inputs(plan.pipeline.inputs, given)
        if problems:
            raise PipelineInvalid(problems)
        return _RunSpec(
            run_id=uuid.uuid4().hex,
            plan=plan,
            inputs=values,
            record=None,
            finished={},
            resumed=False,
            history=history,
        )

    # --- running -----------------------------------------------------------------

    async def run(
        self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None = None
    ) -> RunResult:
        """Validate and run ``pipeline``; return its result or raise StepFailed.

        Cancelling the awaiting task cancels the run (recorded as cancelled).
        """
        spec = self._spec(pipeline, inputs, None)
        await self.open()
        return await self._drive(spec)

    def start(self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None = None) -> RunHandle:
        """Validate ``pipeline`` now, then run it in a task; return its handle."""
        spec = self._spec(pipeline, inputs, _History())
        return self._launch(spec, self._open_and_drive(spec))

    async def _open_and_drive(self, spec: _RunSpec) -> RunResult:
        await self.open()
        return await self._drive(spec)

    def _launch(self, spec: _RunSpec, coro: Awaitable[RunResult]) -> RunHandle:
        assert spec.history is not None
        task: asyncio.Task[RunResult] = asyncio.ensure_future(coro)
        handle = RunHandle(spec.run_id, task, spec.history)
        self._handles.add(handle)
        task.add_done_callback(lambda _t: self._handles.discard(handle))
        return handle

    async def resume(self, run_id: str, pipeline: PipelineSource | None = None) -> RunResult:
        """Continue run ``run_id`` from its checkpoints; a finished run returns its result.

        Raises RunNotFound, PipelineChanged (``pipeline`` differs from the run's),
        RunHeld (another process holds the run) or what the run itself raises.
        """
        spec = await self._resume_spec(run_id, pipeline, None)
        if isinstance(spec, RunResult):
            return spec
        return await self._drive(spec)

    def start_resume(self, run_id: str, pipeline: PipelineSource | None = None) -> RunHandle:
        """Like :meth:`resume`, in a task; return a handle (the run id is known at once)."""
        history = _History()

        async def go() -> RunResult:
            spec = await self._resume_spec(run_id, pipeline, history)
            if isinstance(spec, RunResult):
                history.close()
                return spec
            return await self._drive(spec)

        placeholder = _RunSpec(run_id, None, {}, None, {}, True, history)  # type: ignore[arg-type]
        return self._launch(placeholder, go())

    async def _resume_spec(
        self, run_id: str, pipeline: PipelineSource | None, history: _History | None
    ) -> _RunSpec | RunResult:
        await self.open()
        if self.runstore is None:
            raise UsageError("this engine keeps no state (storage=None): nothing to resume")
        record = await self.runstore.load_run(run_id)
        if record.status == "succeeded":
            finished = await self.runstore.finished_steps(run_id)
            steps = {sid: r.output for (sid, item), r in finished.items() if item is None}
            return RunResult(
                run_id=run_id,
                status="succeeded",
                output=record.output,
                usage=record.usage,
                usage_by_executor=dict(record.usage_by_executor),
                steps=steps,
            )
        if pipeline is None:
            source: PipelineSource = serde.structure(record.pipeline, Pipeline)
        else:
            source = pipeline
        plan = self._prepare(source, None)
        if plan.digest != record.pipeline_digest:
            raise PipelineChanged(
                f"run {run_id} began with pipeline digest {record.pipeline_digest[:12]}..., "
                f"this pipeline's is {plan.digest[:12]}...: resume with the original pipeline "
                "(or omit it to use the stored copy), or start a new run"
            )
        return _RunSpec(
            run_id=run_id,
            plan=plan,
            inputs=dict(record.inputs),
            record=record,
            finished={},
            resumed=True,
            history=history,
        )

    # --- one run ----------------------------------------------------------------

    async def _drive(self, spec: _RunSpec) -> RunResult:
        store = self.runstore
        history = spec.history
        bus_emit = self.bus.emit
        record_event = store.record_event if store is not None else None

        def emit(event: Event) -> None:
            if history is not None:
                history.push(event)
            bus_emit(event)
            if record_event is not None and _stored(event):
                record_event(event)

        started = self.clock()
        execution: RunExecution | None = None
        lease: Any = contextlib.nullcontext()
        if store is not None:
            from taskloom.sdk._runstore import LeaseKeeper

            lease = LeaseKeeper(store, spec.run_id, self.holder, ttl_s=self.lease_ttl_s)
        try:
            async with lease:
                if store is not None:
                    await self._begin(spec, started)
                    if spec.resumed:
                        spec.finished = await store.finished_steps(spec.run_id)
                execution = RunExecution(
                    run_id=spec.run_id,
                    plan=spec.plan,
                    inputs=spec.inputs,
                    services=self,
                    finished=spec.finished,
                    emit=emit,
                )
                emit(
                    RunStarted(
                        run_id=spec.run_id,
                        at=started,
                        pipeline=spec.plan.pipeline.name,
                        pipeline_digest=spec.plan.digest,
                        resumed=spec.resumed,
                    )
                )
                try:
                    await execution.run_graph()
                except BaseExceptionGroup as group:
                    raise first_error(group) from None
                output = self._output(spec.plan, execution)
                result = await self._finish(spec, execution, "succeeded", output, None, emit)
        except asyncio.CancelledError:
            if execution is not None:
                await self._finish(spec, execution, "cancelled", None, None, emit)
            raise
        except RunHeld:
            raise
        except StepFailed as exc:
            if execution is not None:
                await self._finish(spec, execution, "failed", None, exc, emit)
            raise
        except Exception as exc:
            # A storage failure or a non-JSON output: record the failure if the store
            # still works, then let the original error through.
            if execution is not None:
                with contextlib.suppress(Exception):
                    await self._finish(spec, execution, "failed", None, exc, emit)
            raise
        finally:
            if history is not None:
                history.close()
        return result

    def _output(self, plan: Plan, execution: RunExecution) -> Any:
        if plan.output is None:
            return execution.outputs.get(plan.nodes[-1].id) if plan.nodes else None
        try:
            return plan.output(execution.scope)
        except TemplateRenderError as exc:
            raise StepFailed(
                f"the pipeline's output could not be rendered: {exc}",
                step_id="$output",
                cause_type="TemplateRenderError",
            ) from None

    async def _begin(self, spec: _RunSpec, started: float) -> None:
        from taskloom.sdk._runrecords import RunRecord

        store = self.runstore
        if spec.record is None:
            spec.record = RunRecord(
                run_id=spec.run_id,
                pipeline_name=spec.plan.pipeline.name,
                pipeline_digest=spec.plan.digest,
                pipeline=serde.unstructure(spec.plan.pipeline),
                inputs=spec.inputs,
                status="running",
                created_at=started,
                started_at=started,
            )
            await store.create_run(spec.record)
        else:
            spec.record = attrs.evolve(spec.record, status="running", finished_at=None, error=None)
            await store.update_run(spec.record)

    async def _finish(
        self,
        spec: _RunSpec,
        execution: RunExecution,
        status: str,
        output: Any,
        error: BaseException | None,
        emit: Callable[[Event], None],
    ) -> RunResult:
        now = self.clock()
        started = spec.record.started_at if spec.record is not None else None
        duration = now - (started if started is not None else now)
        info = error_info(error) if error is not None else None
        if status == "succeeded":
            emit(
                RunSucceeded(run_id=spec.run_id, at=now, duration_s=duration, usage=execution.usage)
            )
        elif status == "failed":
            assert info is not None
            emit(
                RunFailed(
                    run_id=spec.run_id,
                    at=now,
                    error=info,
                    step_id=getattr(error, "step_id", None),
                    duration_s=duration,
                    usage=execution.usage,
                )
            )
        else:
            emit(
                RunCancelledEvent(
                    run_id=spec.run_id, at=now, duration_s=duration, usage=execution.usage
                )
            )
        store = self.runstore
        if store is not None and spec.record is not None:
            spec.record = attrs.evolve(
                spec.record,
                status=status,
                finished_at=now,
                output=output,
                error=info,
                usage=execution.usage,
                usage_by_executor=dict(execution.usage_by_executor),
                steps_done=len(spec.finished) + execution.steps_done,
            )
            await store.update_run(spec.record)
            await store.flush()
        return RunResult(
            run_id=spec.run_id,
            status=status,
            output=output,
            usage=execution.usage,
            usage_by_executor=dict(execution.usage_by_executor),
            steps=dict(execution.outputs),
            error=info,
        )
