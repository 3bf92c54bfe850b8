"""The engine: validate a pipeline, run it durably, stream its events, resume it.

``Engine`` composes a ``StorageAdapter`` (through a ``RunStore``), an
``ExecutorRegistry``, plugin step functions, a ``SecretStore`` and an
``EventBus``. ``run`` validates everything first (nothing runs on a bad
pipeline), creates the run record, runs the steps (see ``taskloom.sdk._engine.steps`` for
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
import logging
import random as _random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from taskloom.contracts import (
    InputTimedOut,
    NotAnInputStep,
    Pipeline,
    PipelineChanged,
    PipelineInvalid,
    RetryPolicy,
    Secret,
    SecretStore,
    StepFailed,
    StepFunction,
    StorageAdapter,
    TaskloomError,
    UsageError,
    check_name,
    serde,
)
from taskloom.sdk._config.toml import DURABILITY_MODES
from taskloom.sdk._engine import waiting as _waiting
from taskloom.sdk._engine.bus import EventBus
from taskloom.sdk._engine.handle import History, RunHandle, RunResult
from taskloom.sdk._engine.ratelimit import ExecutorLimits
from taskloom.sdk._engine.run import RunSpec, drive
from taskloom.sdk._pipeline.checks import inputs_object, resolve_inputs
from taskloom.sdk._pipeline.compact import pipeline_forms
from taskloom.sdk._pipeline.plan import Compiler, Plan
from taskloom.sdk._pipeline.validate import validate_pipeline
from taskloom.sdk._queue.records import DEFAULT_QUEUE, QueueDefinition
from taskloom.sdk._queue.submit import QueueStats, define_queue, queue_stats, submit_run
from taskloom.sdk._registry import ExecutorRegistry, ExecutorSettings
from taskloom.sdk._runs.history import DamagedRun
from taskloom.sdk._runs.records import RunRecord
from taskloom.sdk._runs.store import RunStore

if TYPE_CHECKING:
    from taskloom.sdk._telemetry.tracing import Telemetry
    from taskloom.security import Redactor

logger = logging.getLogger(__name__)
PipelineSource = Pipeline | Mapping[str, Any] | str | Path


def _consume(task: asyncio.Task[RunResult]) -> None:
    """Retrieve a background run's outcome (its record says it; nobody awaits the task)."""
    if not task.cancelled():
        task.exception()


_PLAN_CACHE_SIZE = 64


class Engine:
    """Runs pipelines; use as ``async with Engine(...) as engine``."""

    # Set once by the constructor (or by ``open``): changing one afterwards would
    # silently do nothing (the limits, the run store and the bus are built from them).
    _READ_ONLY = frozenset(
        {
            "registry",
            "secrets",
            "plugin_steps",
            "bus",
            "max_concurrency",
            "default_retry",
            "lease_ttl_s",
            "durability",
            "redactor",
            "clock",
            "sleep",
            "random",
            "holder",
            "storage",
            "runstore",
            "global_limit",
            "owned_resources",
            "recovered",
            "telemetry",
            "submitted",
            "recover",
        }
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._READ_ONLY and name in self.__dict__:
            raise AttributeError(
                f"Engine.{name} is read-only once the engine is built: pass it to "
                f"Engine(...) (or set it in taskloom.toml) and build a new engine"
            )
        object.__setattr__(self, name, value)

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
        durability: str = "async",
        redactor: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        holder: str | None = None,
        recover: bool = False,
        telemetry: bool | Telemetry = False,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise UsageError("max_concurrency must be at least 1 (or None for no limit)")
        if recover and not holder:
            raise UsageError(
                "recover=True resumes the runs this engine's holder name held when its "
                "process crashed: give the engine a stable holder= name (one per process, "
                "the same after a restart); workers (taskloom worker) recover any crashed run"
            )
        if holder is not None:
            check_name(holder, what="holder name")
        if durability not in DURABILITY_MODES:
            raise UsageError(
                f"durability must be 'async' (checkpoints committed in order while the run "
                f"goes on; the default) or 'sync' (each step waits for its checkpoint), "
                f"not {durability!r}"
            )
        self.registry: Final = registry if registry is not None else ExecutorRegistry()
        self.secrets: Final = secrets
        self._plugin_steps: dict[str, StepFunction] = dict(plugin_steps or {})
        self.plugin_steps: Final[Mapping[str, StepFunction]] = MappingProxyType(self._plugin_steps)
        """Plugin step functions by ``uses`` name (read-only; ``register_step`` adds)."""
        self.bus: Final = bus if bus is not None else EventBus()
        self._owns_bus = bus is None
        self.max_concurrency: Final = max_concurrency
        self.default_retry: Final = default_retry or RetryPolicy()
        self.lease_ttl_s: Final = lease_ttl_s
        self.durability: Final = durability
        """"async": a finished step's checkpoint is queued and the run goes on; checkpoints
        are committed in order, at most a bounded number are pending, and a run reports
        success only when all are durable. "sync": each step waits until its checkpoint
        is durable before anything after it starts."""
        self.redactor: Final = redactor
        """Masks more secret values in error texts (``taskloom.security.Redactor``, or any
        object with ``redact(text) -> text``), beside the engine's own redactor of the
        secrets it resolved."""
        self._secret_redactor: Redactor | None = None
        """Always on: every secret value the engine resolved (executors built from config
        read their keys through the registry, which reports each one here), and the
        encodings of each, are masked in every error text, event and stored record.
        Built at the first secret (importing ``taskloom.security`` costs)."""
        self.registry.watch_secrets(self.remember_secret)
        self.clock: Final = clock
        self.sleep: Final = sleep
        self.random: Final = random
        self.holder: Final = holder or f"engine-{uuid.uuid4().hex[:12]}"
        """Who this engine is when it holds a run's lease (unique per engine by default)."""
        if telemetry is True:
            from taskloom.sdk._telemetry.tracing import Telemetry as _Telemetry

            telemetry = _Telemetry()
        self.telemetry: Final[Telemetry | None] = telemetry or None
        """OpenTelemetry spans and metrics of runs, steps and calls (the ``otel`` extra);
        None when disabled, which costs one ``is None`` test per step."""
        if self.telemetry is not None:
            self.telemetry.bind(self.redact)
        self._storage_arg = storage
        self.storage: StorageAdapter | None = None
        self._owns_storage = False
        self.runstore: RunStore | None = None
        self.global_limit: asyncio.Semaphore | None = None
        self._limits: dict[str, tuple[ExecutorSettings, ExecutorLimits]] = {}
        self._plans: dict[int, tuple[Pipeline, Plan]] = {}
        self._stored_plans: dict[str, Plan] = {}
        """Plans of stored pipelines by digest: a worker resuming thousands of runs of one
        pipeline checks and compiles it once, not once per run."""
        self._handles: set[RunHandle] = set()
        self._driving: set[str] = set()
        """Runs this engine drives now: a second drive of one (a resume or a provide while
        it runs) is ``RunHeld``, never a second holder under the same name."""
        self._opened = False
        self._closed = False
        self.owned_resources: Final[list[Any]] = []
        """Extra objects (a secret store from a config file) closed with the engine."""
        self.submitted: Final = asyncio.Event()
        """Set when this engine stores a queued run (wakes an in-process worker at once)."""
        self.recover: Final = recover
        self.recovered: Final[list[RunHandle]] = []
        """With ``recover=True``: the runs ``open`` found crashed under this engine's holder
        name and resumed, one handle each."""

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
        self.__dict__["storage"] = storage
        if storage is not None:
            self.__dict__["runstore"] = RunStore(storage, clock=self.clock)
        if self.max_concurrency is not None:
            self.__dict__["global_limit"] = asyncio.Semaphore(self.max_concurrency)
        self._opened = True
        if self.recover and self.runstore is not None:
            await self._recover_own()

    async def _recover_own(self) -> None:
        """Resume every unfinished run whose lease names this engine's holder: this
        process (the same holder name, restarted) held it when it crashed."""
        store = self.runstore
        assert store is not None
        for run_id in await store.runs_held_by(self.holder):
            self.recovered.append(self.start_resume(run_id))

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
        """Build an engine from ``taskloom.toml`` (see ``taskloom.sdk._config.build``)."""
        from taskloom.sdk._config.build import engine_from_config

        engine: Engine = engine_from_config(cls, path, **overrides)
        return engine

    # --- services for RunExecution ---------------------------------------------

    def remember_secret(self, secret: Secret | str) -> None:
        """Mask ``secret``'s value (and its encodings) in every error text from now on."""
        if self._secret_redactor is None:
            from taskloom.security import Redactor

            self._secret_redactor = Redactor()
        self._secret_redactor.add(secret)

    def redact(self, text: str) -> str:
        """``text`` with the secret values the engine resolved, and the redactor's, masked."""
        if self.redactor is not None:
            text = self.redactor.redact(text)
        if self._secret_redactor is not None:
            text = self._secret_redactor.redact(text)
        return text

    def mask(self, value: Any) -> Any:
        """``value`` (a step output, a reply to cache, a run output) with every secret value
        the redactor knows masked in its strings: what a step returns is checkpointed,
        cached and printed, so a provider that echoes its key or a plugin that returns a
        secret it read must never put the value there."""
        if value is None:
            return value
        redactor = self.redactor
        if redactor is not None:
            walk = getattr(redactor, "redact_data", None)
            if walk is None:  # a text-only redactor: strings only
                value = redactor.redact(value) if isinstance(value, str) else value
            else:
                value = walk(value)
        if self._secret_redactor is not None:  # the secrets the engine itself resolved
            value = self._secret_redactor.redact_data(value)
        return value

    def limits(self, executor_id: str) -> ExecutorLimits:
        """The concurrency and rate limits of one executor id (built on first use)."""
        settings = self.registry.settings(executor_id)
        cached = self._limits.get(executor_id)
        if cached is not None and cached[0] is settings:
            return cached[1]
        # first use, or the id was unregistered and registered again with new settings
        found = ExecutorLimits(
            concurrency=settings.concurrency,
            requests_per_minute=settings.requests_per_minute,
            tokens_per_minute=settings.tokens_per_minute,
            clock=self.clock,
            sleep=self.sleep,
        )
        self._limits[executor_id] = (settings, found)
        return found

    def register_step(self, name: str, function: StepFunction) -> None:
        """Make ``uses: <name>`` call ``function`` (plugin hosts call this)."""
        self._plugin_steps[name] = function

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
                    problems = resolve_inputs(pipeline.inputs, inputs_object(inputs))[1]
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
        plan = compiler.compile(*pipeline_forms(checked))
        if isinstance(pipeline, Pipeline):
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[id(pipeline)] = (pipeline, plan)
        return plan

    def _spec(
        self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None, history: History | None
    ) -> RunSpec:
        if self._closed:
            raise UsageError("this engine is closed; create a new one")
        given = inputs_object(inputs)
        plan = self._prepare(pipeline, given)
        values, problems = resolve_inputs(plan.pipeline.inputs, given)
        if problems:
            raise PipelineInvalid(problems)
        return RunSpec(
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
        return await drive(self, spec)

    def start(self, pipeline: PipelineSource, inputs: Mapping[str, Any] | None = None) -> RunHandle:
        """Validate ``pipeline`` now, then run it in a task; return its handle."""
        spec = self._spec(pipeline, inputs, History())
        return self._launch(spec, self._open_and_drive(spec))

    async def _open_and_drive(self, spec: RunSpec) -> RunResult:
        await self.open()
        return await drive(self, spec)

    def _launch(self, spec: RunSpec, coro: Awaitable[RunResult]) -> RunHandle:
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
        return await drive(self, spec)

    async def provide(
        self, run_id: str, step_id: str, value: Any, *, by: str | None = None
    ) -> RunResult:
        """Give input step ``step_id`` of waiting run ``run_id`` its value, then continue
        the run here and return its result (``waiting`` again if it reaches another input
        step). ``by`` names who provided it in the run's history (default: the OS user).

        The value is checked against the step's JSON Schema first: nothing is recorded
        for a value that does not match (``InputRejected``, with the JSON path of the
        violation). Raises ``RunNotFound``; ``NotAnInputStep``; ``AlreadyProvided``;
        ``NotWaiting`` (the run does not wait at that step now); ``InputTimedOut`` (the
        step waited past its ``timeout_s``: the run was resolved by its ``on_timeout``
        instead and the value was not used); ``RunHeld`` (another process provides or
        runs it right now); or what the run itself raises (``StepFailed``).
        """
        spec = await self._provide_spec(run_id, step_id, value, by, None)
        return await drive(self, spec)

    async def start_provide(
        self, run_id: str, step_id: str, value: Any, *, by: str | None = None
    ) -> RunHandle:
        """Like :meth:`provide`, continuing the run in a task: the value is checked (and
        every error of ``provide`` raised) before this returns the run's handle."""
        history = History()
        spec = await self._provide_spec(run_id, step_id, value, by, history)
        return self._launch(spec, drive(self, spec))

    async def _provide_spec(
        self, run_id: str, step_id: str, value: Any, by: str | None, history: History | None
    ) -> RunSpec:
        """Check ``value`` for waiting step ``step_id`` of run ``run_id`` (see ``provide``)
        and return the spec of the drive that records it and goes on."""
        await self.open()
        if self.runstore is None:
            raise UsageError("this engine keeps no state (storage=None): no run can wait")
        if not isinstance(step_id, str) or not step_id:
            raise UsageError(f"step_id must be a step's id (text), got {step_id!r}")
        if by is not None and (not isinstance(by, str) or not by):
            raise UsageError(f"by must name who provides the value (text), got {by!r}")
        record = await self.runstore.load_run(run_id)
        plan = self._stored_plan(record)
        node = plan.by_id.get(step_id)
        if node is None or node.kind != "input":
            inputs = [n.id for n in plan.nodes if n.kind == "input"]
            what = "has no step" if node is None else f"has a {node.kind} step"
            raise NotAnInputStep(
                f"run {run_id}'s pipeline {what} {step_id!r} that waits for a value; its "
                f"input steps: {', '.join(inputs) or 'none'}",
                run_id=run_id,
                step_id=step_id,
                status=record.status,
            )
        finished = await self.runstore.finished_steps(run_id)
        _waiting.check_waiting(record, node, finished)
        if _waiting.timed_out(node, record.waiting[step_id], self.clock()):
            outcome = "failed"
            try:
                result = await self.resume(run_id)  # resolves the timeout (and goes on)
                outcome = result.status
            except StepFailed:
                pass
            raise InputTimedOut(
                f"input step {step_id!r} of run {run_id} waited past its timeout_s of "
                f"{node.timeout_s} s: the value was not used; on_timeout: {node.on_timeout} "
                f"resolved the step and the run is {outcome} now",
                run_id=run_id,
                step_id=step_id,
                timeout_s=node.timeout_s or 0.0,
            )
        problems = _waiting.value_problems(node, value)
        if problems:
            raise _waiting.refuse_value(run_id, node, problems)
        spec = RunSpec(
            run_id=run_id,
            plan=plan,
            inputs=dict(record.inputs),
            record=record,
            finished={},
            resumed=True,
            history=history,
            provided=_waiting.Provided(step_id, value, by or _waiting.default_provider()),
        )
        return spec

    async def resolve_timeouts(self) -> list[RunHandle]:
        """Continue, each in a task, every waiting run of this store that waits at an input
        step past its ``timeout_s``: its ``on_timeout`` applies (the run fails with
        ``InputTimedOut``, or goes on with the step's default). Returns their handles.

        Workers call this periodically; an application without workers can call it from
        its own scheduler (a timed-out step is also resolved by ``resume`` or ``provide``).
        """
        await self.open()
        if self.runstore is None:
            return []
        now = self.clock()
        handles: list[RunHandle] = []
        for record in await self.runstore.list_entries(status="waiting"):
            if isinstance(record, DamagedRun):
                logger.warning(
                    "run %s waits but its stored record is damaged (%s); its input timeout is "
                    "not checked: `taskloom delete %s` removes it",
                    record.run_id,
                    record.error,
                    record.run_id,
                )
                continue
            try:
                plan = self._stored_plan(record)
            except TaskloomError as exc:  # one run's stored pipeline must not stop the sweep
                logger.warning(
                    "run %s waits but its stored pipeline cannot be read (%s); "
                    "its input timeout is not checked",
                    record.run_id,
                    exc,
                )
                continue
            late = any(
                node is not None and node.kind == "input" and _waiting.timed_out(node, since, now)
                for node, since in ((plan.by_id.get(s), t) for s, t in record.waiting.items())
            )
            if late:
                handle = self.start_resume(record.run_id)
                handle._task.add_done_callback(_consume)  # its outcome is in its record
                handles.append(handle)
        return handles

    def start_resume(self, run_id: str, pipeline: PipelineSource | None = None) -> RunHandle:
        """Like :meth:`resume`, in a task; return a handle (the run id is known at once)."""
        history = History()

        async def go() -> RunResult:
            try:
                spec = await self._resume_spec(run_id, pipeline, history)
            except BaseException:
                history.close()  # iterators of handle.events() must end, not wait forever
                raise
            if isinstance(spec, RunResult):
                history.close()
                return spec
            return await drive(self, spec)

        placeholder = RunSpec(run_id, None, {}, None, {}, True, history)  # type: ignore[arg-type]
        return self._launch(placeholder, go())

    async def _resume_loaded(self, record: RunRecord) -> RunResult:
        """Resume a run whose record the caller just read under its lease (a worker that
        claimed it): ``resume`` without reading the record again."""
        spec = await self._resume_spec(record.run_id, None, None, record)
        if isinstance(spec, RunResult):
            return spec
        return await drive(self, spec)

    async def _resume_spec(
        self,
        run_id: str,
        pipeline: PipelineSource | None,
        history: History | None,
        record: RunRecord | None = None,
    ) -> RunSpec | RunResult:
        await self.open()
        if self.runstore is None:
            raise UsageError("this engine keeps no state (storage=None): nothing to resume")
        if record is None:
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
        plan = self._stored_plan(record) if pipeline is None else self._prepare(pipeline, None)
        if plan.digest != record.pipeline_digest:
            raise PipelineChanged(
                f"run {run_id} began with pipeline digest {record.pipeline_digest[:12]}..., "
                f"this pipeline's is {plan.digest[:12]}...: resume with the original pipeline "
                "(or omit it to use the stored copy), or start a new run"
            )
        return RunSpec(
            run_id=run_id,
            plan=plan,
            inputs=dict(record.inputs),
            record=record,
            finished={},
            resumed=record.started_at is not None,  # a queued run starts for the first time
            history=history,
        )

    def _stored_plan(self, record: RunRecord) -> Plan:
        """The plan of the pipeline stored with ``record`` (compiled once per digest)."""
        plan = self._stored_plans.get(record.pipeline_digest)
        if plan is not None:
            return plan
        plan = self._prepare(serde.structure(record.pipeline, Pipeline), None)
        if plan.digest == record.pipeline_digest:
            if len(self._stored_plans) >= _PLAN_CACHE_SIZE:
                self._stored_plans.pop(next(iter(self._stored_plans)))
            self._stored_plans[plan.digest] = plan
        return plan

    # --- the run queue -------------------------------------------------------------

    async def submit(
        self,
        pipeline: PipelineSource,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
    ) -> str:
        """Store a queued run of ``pipeline`` and return its id at once; workers run it.

        The pipeline and inputs are validated first: a bad one raises
        ``PipelineInvalid`` and nothing is queued. ``queue`` must be defined
        (``define_queue``; ``"default"`` always is) or ``UnknownQueue`` is raised.
        Higher ``priority`` runs first (ints within +-1,000,000), then oldest first.

        Idempotent: a submission with the ``idempotency_key`` or ``run_id`` of an
        earlier one returns that run's id and stores nothing new, however many are
        made at once from however many processes; if the earlier run has another
        pipeline or other inputs, ``SubmissionConflict`` is raised instead.
        A worker (``taskloom.sdk.Worker`` or ``taskloom worker``) on the same store
        claims and runs it; follow it with ``events`` or ``resume``.
        """
        if self._closed:
            raise UsageError("this engine is closed; create a new one")
        given = inputs_object(inputs)
        plan = self._prepare(pipeline, given)
        values, problems = resolve_inputs(plan.pipeline.inputs, given)
        if problems:
            raise PipelineInvalid(problems)
        store = await self._queue_store()
        run = await submit_run(
            store,
            plan,
            values,
            run_id=run_id,
            idempotency_key=idempotency_key,
            queue=queue,
            priority=priority,
        )
        self.submitted.set()
        return run

    async def define_queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        starts_per_minute: float | None = None,
        max_claims: int | None = None,
    ) -> QueueDefinition:
        """Define (or redefine) a queue in the store, for every worker and submitter.

        ``concurrency``: at most this many of its runs are claimed at once across all
        workers; ``starts_per_minute``: runs start at most this often, evenly spaced;
        ``max_claims``: a run claimed this often without finishing is failed as a
        poison run (default 5). None leaves a limit off.
        """
        return await define_queue(
            await self._queue_store(),
            name,
            concurrency=concurrency,
            starts_per_minute=starts_per_minute,
            max_claims=max_claims,
        )

    async def queues(self) -> list[QueueStats]:
        """Every queue's depth, oldest waiting submission and running count."""
        return await queue_stats(await self._queue_store())

    async def _queue_store(self) -> RunStore:
        await self.open()
        if self.runstore is None:
            raise UsageError("this engine keeps no state (storage=None): it has no run queue")
        store: RunStore = self.runstore
        return store

    # --- one run ----------------------------------------------------------------
