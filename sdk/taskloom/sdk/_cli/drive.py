"""CLI commands that build an engine and drive a pipeline: run, resume, validate.

``build_engine`` wires the configured store, executors, secrets and verified
plugins; ``run`` and ``resume`` show live progress from the run's events and
print one result document, whatever way the run ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from taskloom.contracts import (
    LLMStep,
    MapStep,
    ParallelStep,
    Pipeline,
    RunCancelled,
    RunHeld,
    RunNotFound,
    Secret,
    SecretStore,
    StepFailed,
    StorageError,
    TaskloomError,
    UsageError,
    serde,
)
from taskloom.sdk._cli.context import CliContext
from taskloom.sdk._cli.history import _audit, _runstore, provide_command
from taskloom.sdk._cli.progress import Progress, map_totals
from taskloom.sdk._config.build import make_telemetry


class LazySecrets:
    """The configured secret store, opened only when something asks for a secret.

    A pipeline that needs no secret must run on a machine with no secret store.
    """

    def __init__(self, ctx: CliContext) -> None:
        self._ctx = ctx

    async def get(self, name: str, /) -> Secret:
        secret = await (await self._ctx.secrets()).get(name)
        self._ctx.out.remember(secret)  # masked in any error text from now on
        return secret

    async def set(self, name: str, value: str | Secret, /) -> None:
        await (await self._ctx.secrets()).set(name, value)

    async def delete(self, name: str, /) -> bool:
        return await (await self._ctx.secrets()).delete(name)

    async def names(self) -> list[str]:
        return await (await self._ctx.secrets()).names()

    async def aclose(self) -> None:
        """The context closes the real store."""


def _read_pipeline(path_text: str) -> dict[str, Any]:
    path = Path(path_text)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"pipeline file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read pipeline {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a JSON object (a pipeline/v1 document)")
    return data


def _with_executor(pipeline: dict[str, Any], executor_id: str | None) -> dict[str, Any]:
    """``--executor ID``: the executor of every step that names none (``defaults.executor``)."""
    if executor_id is None:
        return pipeline
    defaults = pipeline.get("defaults", {})
    if not isinstance(defaults, dict):
        return pipeline  # validation reports the malformed defaults
    return {**pipeline, "defaults": {**defaults, "executor": executor_id}}


def parse_inputs(items: list[str] | None, pipeline: dict[str, Any]) -> dict[str, Any]:
    """``-i key=value`` and ``-i key=@file``; values of non-string inputs are JSON."""
    declared = pipeline.get("inputs") if isinstance(pipeline.get("inputs"), dict) else {}
    inputs: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"input {item!r} must look like key=value or key=@file")
        if raw.startswith("@"):
            source = raw[1:]
            if not source:
                raise UsageError(f"input {key}: give a file after '@' ({key}=@FILE)")
            try:
                raw = Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"input {key}: cannot read {source}: {exc.strerror}") from exc
            except UnicodeDecodeError:
                raise UsageError(
                    f"input {key}: {source} is not UTF-8 text; inputs are text or JSON"
                ) from None
        spec = declared.get(key) if isinstance(declared, dict) else None
        kind = spec.get("type", "string") if isinstance(spec, dict) else "string"
        if kind == "string":
            inputs[key] = raw
            continue
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise UsageError(
                f"input {key} is declared {kind}: give it as JSON, got {raw[:60]!r}"
            ) from None
    return inputs


async def build_engine(ctx: CliContext) -> tuple[Any, Any]:
    """An Engine over the configured store, executors and verified plugins."""
    from taskloom.adapters.scripted import ScriptedExecutor
    from taskloom.sdk._engine.engine import Engine
    from taskloom.sdk._plugins.host import PluginHost, discover
    from taskloom.sdk._registry import ExecutorRegistry

    storage = await ctx.storage()
    secrets: SecretStore = LazySecrets(ctx)
    registry = ExecutorRegistry()
    for executor_id, table in ctx.config.executors.items():
        registry.register_config(executor_id, table, secrets=secrets)
    if "scripted" not in registry:
        registry.register("scripted", ScriptedExecutor(), default=not ctx.config.executors)
    host = PluginHost(
        storage=storage,
        executors=registry,
        trust=ctx.trust(),
        rollback=ctx.marks(),  # beside the trust store: a new database does not reset them
        secrets=secrets,
        dev_mode=ctx.config.dev_mode,
    )
    try:
        for report in await host.load(discover(ctx.config.plugin_dirs)):
            if not report.loaded:
                ctx.out.note(f"plugin {report.name} not loaded: {report.error}")
            elif not report.verified:
                ctx.out.note(f"plugin {report.name} loaded WITHOUT verification (development mode)")
        engine = Engine(
            storage=storage,
            registry=registry,
            secrets=secrets,
            plugin_steps=host.steps,
            max_concurrency=ctx.config.max_concurrency,
            lease_ttl_s=ctx.config.lease_ttl_s,
            durability=ctx.config.durability,
            redactor=ctx.out.redactor,  # secrets read by executors or plugins never get stored
            telemetry=make_telemetry(ctx.config.telemetry),
        )
    except BaseException:
        await host.aclose()  # the shell goes on: plugins must not stay loaded
        raise
    try:
        await engine.open()
    except BaseException:
        await engine.aclose()
        await host.aclose()
        raise
    return engine, host


async def _drive(
    ctx: CliContext,
    handle: Any,
    *,
    title: str,
    totals: dict[str, int] | None = None,
    done_before: Mapping[str, int] | None = None,
) -> Any:
    """Show live progress from the handle's events (not in --json mode); return the result.

    The result is awaited, not the event stream's end: a run that fails before it
    starts (an unknown run id to resume) may never close its stream.
    """
    show = not ctx.out.json_mode and sys.stderr.isatty()
    progress = Progress(
        ctx.out.err, title=title, live=show, map_totals=totals, map_done=done_before
    )

    async def follow() -> None:
        async for event in handle.events():
            progress.update(event)

    with progress:
        follower = asyncio.create_task(follow())
        try:
            return await handle.result()
        finally:
            await asyncio.sleep(0)  # let the follower take the events already emitted
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)


def _result_data(ctx: CliContext, result: Any) -> dict[str, Any]:
    data = {
        "run_id": result.run_id,
        "status": result.status,
        "output": result.output,
        "usage": serde.unstructure(result.usage),
        "error": serde.unstructure(result.error) if result.error else None,
    }
    redacted: dict[str, Any] = ctx.out.redact_data(data)
    return redacted


def _failed_status(exc: TaskloomError) -> str:
    return "cancelled" if isinstance(exc, RunCancelled) else "failed"


def _print_failure(ctx: CliContext, run_id: str, exc: TaskloomError) -> int:
    """A run that raised: one document with its id, so that 'show' and 'resume' can find it."""
    message = ctx.out.redact(str(exc).strip() or type(exc).__name__)
    status = _failed_status(exc)
    ctx.out.data(
        {
            "run_id": run_id,
            "status": status,
            "output": None,
            "error": {"type": type(exc).__name__, "message": message},
        },
        lambda: ctx.out.note(
            f"run {run_id}: {status}: {type(exc).__name__}: {message.splitlines()[0]}\n"
            f"  details: taskloom show {run_id}; continue: taskloom resume {run_id}"
        ),
    )
    return 1


def _print_result(
    ctx: CliContext,
    result: Any,
    pipeline: Mapping[str, Any] | None = None,
    config: str | None = None,
) -> int:
    data = _result_data(ctx, result)
    if result.status == "waiting":
        data["waiting"] = [
            {
                "step_id": step,
                "command": provide_command(result.run_id, step, pipeline or {}, config),
            }
            for step in result.waiting
        ]

    def human() -> None:
        ctx.out.note(f"run {result.run_id}: {result.status} ({result.usage.total_tokens} tokens)")
        if result.status == "waiting":
            for entry in data["waiting"]:
                ctx.out.note(f"  step {entry['step_id']!r} waits for a value; provide it with:")
                ctx.out.console.print(f"  {entry['command']}", markup=False)
        elif result.status == "succeeded":
            output = data["output"]  # masked, like the --json document
            ctx.out.console.print(
                output
                if isinstance(output, str)
                else json.dumps(output, indent=2, ensure_ascii=False),
                markup=False,
            )
        elif result.error is not None:
            error = data["error"]
            ctx.out.note(f"taskloom: error: {error['type']}: {error['message']}")

    ctx.out.data(data, human)
    return 0 if result.status in ("succeeded", "waiting") else 1


def _executors_used(pipeline: Pipeline, default: str | None) -> set[str]:
    """The executor ids the steps of ``pipeline`` call (a step naming none uses the default)."""
    fallback = pipeline.defaults.executor or default
    used: set[str] = set()

    def visit(step: object) -> None:
        if isinstance(step, LLMStep):
            executor = step.executor or fallback
            if executor is not None:
                used.add(executor)
        elif isinstance(step, ParallelStep):
            for child in step.parallel:
                visit(child)
        elif isinstance(step, MapStep):
            visit(step.step)

    for step in pipeline.steps:
        visit(step)
    return used


async def _build_executors(engine: Any, pipeline: Pipeline) -> None:
    """Build every executor the pipeline calls before a run is stored: a config mistake (an
    unknown option, a literal api_key) is a usage error (exit 2), not a failed run."""
    registry = engine.registry
    for executor_id in sorted(_executors_used(pipeline, registry.default_id)):
        if executor_id in registry:
            await registry.get(executor_id)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    pipeline = _with_executor(_read_pipeline(args.pipeline), args.executor)
    inputs = parse_inputs(args.input, pipeline)
    engine, host = await build_engine(ctx)
    code: int | None = None
    try:
        await _build_executors(engine, engine.validate(pipeline, inputs))
        handle = engine.start(pipeline, inputs)
        audited = _audit(ctx, "run.start", handle.run_id, pipeline=str(pipeline.get("name", "")))

        async def held(_exc: RunHeld) -> int:
            return await _lost(ctx, handle.run_id)

        title = str(pipeline.get("name", args.pipeline))
        totals = map_totals(pipeline, inputs)
        code = await _to_the_end(
            ctx,
            handle,
            title,
            held,
            first=audited,
            totals=totals,
            pipeline=pipeline,
            config=getattr(args, "config", None),
        )
        return code
    finally:
        await _close(engine, host, said=code)


async def _to_the_end(
    ctx: CliContext,
    handle: Any,
    title: str,
    held: Callable[[RunHeld], Awaitable[int]],
    *,
    first: Awaitable[None],
    totals: dict[str, int] | None = None,
    done_before: Mapping[str, int] | None = None,
    pipeline: Mapping[str, Any] | None = None,
    config: str | None = None,
) -> int:
    """Await ``first`` (the audit entry), then drive a started or resumed run to its end
    and report it (exit code 0 or 1).

    Ctrl-C or SIGTERM, from the moment the run was started, cancels the run and says how
    to continue it; a lost lease is ``held``'s to explain; a failed or cancelled run is
    audited and printed like a finished one.
    """
    try:
        await first
        result = await _drive(ctx, handle, title=title, totals=totals, done_before=done_before)
    except (KeyboardInterrupt, asyncio.CancelledError):
        handle.cancel()
        _print_failure(
            ctx,
            handle.run_id,
            RunCancelled(f"interrupted; 'taskloom resume {handle.run_id}' continues the run"),
        )
        raise
    except RunHeld as exc:
        return await held(exc)
    except (StepFailed, RunCancelled) as exc:
        await _audit(ctx, "run.finish", handle.run_id, status=_failed_status(exc))
        return _print_failure(ctx, handle.run_id, exc)
    except Exception as exc:
        # (the audit write failed, say): stop the run and take its outcome, so that no
        # "Task exception was never retrieved" follows the one-line error
        handle.cancel()
        ended: Any = None
        with contextlib.suppress(Exception):
            ended = await handle.result()
        if ended is not None:
            # the run reached its outcome before the cancel (a fast run, a slow audit):
            # say the outcome its record holds, then the error, not "resume it"
            _print_result(ctx, ended, pipeline, config)
            raise
        if isinstance(exc, StorageError) and await _stored(ctx, handle.run_id):
            return _print_storage_failure(ctx, handle.run_id, exc)
        raise
    code = _print_result(ctx, result, pipeline, config)  # before the audit: a full disk may
    await _audit(ctx, "run.finish", result.run_id, status=result.status)  # refuse it
    return code


async def _close(engine: Any, host: Any, *, said: int | None) -> None:
    """Close the engine and plugins after a run command.

    A storage error while closing (queued writes that a full disk refuses) is
    raised only after a success; after a failure the command has already said
    what went wrong with the store, and a second error line would bury the
    resume hint.
    """
    try:
        await engine.aclose()
    except StorageError:
        if said == 0:
            raise
    finally:
        await host.aclose()


async def _stored(ctx: CliContext, run_id: str) -> bool:
    """Whether the run's record may have reached storage: False only when it surely did not.

    A full disk usually still lets us read; a file store with a commit to finish
    does not, and then the run is named anyway (resuming an unknown id only says so).
    """
    try:
        store = await _runstore(ctx)
    except Exception:
        return True
    try:
        await store.load_run(run_id)
    except RunNotFound:
        return False
    except Exception:
        return True
    finally:
        with contextlib.suppress(Exception):
            await store.aclose()
    return True


def _print_storage_failure(ctx: CliContext, run_id: str, exc: StorageError) -> int:
    """The store failed under a run (a full disk, say): one line naming the run to resume."""
    message = ctx.out.redact((str(exc).strip() or type(exc).__name__).splitlines()[0])
    line = f"run {run_id} stopped: {message}; then: taskloom resume {run_id}"
    ctx.out.data(
        {
            "run_id": run_id,
            "status": "interrupted",
            "output": None,
            "error": {"type": type(exc).__name__, "message": line},
        },
        lambda: ctx.out.note(f"taskloom: error: {line}"),
    )
    return 1


async def _was_cancelled(ctx: CliContext, run_id: str) -> bool:
    store = await _runstore(ctx)
    try:
        return bool((await store.load_run(run_id)).status == "cancelled")
    finally:
        await store.aclose()


async def _lost(ctx: CliContext, run_id: str) -> int:
    """The run's lease was taken away: by ``taskloom cancel``, or by another process."""
    if await _was_cancelled(ctx, run_id):
        ctx.out.data(
            {"run_id": run_id, "status": "cancelled"},
            lambda: ctx.out.note(f"run {run_id}: cancelled (by 'taskloom cancel')"),
        )
        return 1
    raise RunHeld(f"run {run_id}: another process took the run over; this one stopped")


async def resume(args: argparse.Namespace, ctx: CliContext) -> int:
    pipeline = _read_pipeline(args.pipeline) if args.pipeline else None
    store = await _runstore(ctx)
    try:
        args.run_id = await store.resolve_run_id(args.run_id)  # a unique prefix will do
        record = await store.load_run(args.run_id)
        finished = await store.finished_steps(args.run_id)
    finally:
        await store.aclose()
    # the progress line counts each map's items from those finished before the resume
    totals = map_totals(pipeline or record.pipeline, record.inputs)
    done_before = Counter(step_id for (step_id, item) in finished if item is not None)
    engine, host = await build_engine(ctx)
    code: int | None = None
    try:
        handle = engine.start_resume(args.run_id, pipeline)
        audited = _audit(ctx, "run.resume", args.run_id)

        async def held(exc: RunHeld) -> int:
            if handle.run_id != args.run_id or not await _was_cancelled(ctx, args.run_id):
                raise exc
            return await _lost(ctx, args.run_id)

        code = await _to_the_end(
            ctx,
            handle,
            f"resume {args.run_id[:12]}",
            held,
            first=audited,
            totals=totals,
            done_before=done_before,
            pipeline=pipeline or record.pipeline,
            config=getattr(args, "config", None),
        )
        return code
    finally:
        await _close(engine, host, said=code)


def parse_value(text: str) -> Any:
    """``--value JSON`` (or ``@FILE`` holding JSON) as a value."""
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--value: cannot read {source}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise UsageError(f"--value: {source} is not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise UsageError(
            f"--value must be JSON (a string is quoted: --value '\"text\"'), got "
            f"{text[:60]!r}: {exc}"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def provide(args: argparse.Namespace, ctx: CliContext) -> int:
    """``taskloom input RUN STEP --value JSON``: give a waiting step its value, go on."""
    value = parse_value(args.value)
    store = await _runstore(ctx)
    try:
        args.run_id = await store.resolve_run_id(args.run_id)  # a unique prefix will do
        record = await store.load_run(args.run_id)
    finally:
        await store.aclose()
    engine, host = await build_engine(ctx)
    code: int | None = None
    try:
        await _audit(ctx, "run.input", args.run_id, step=args.step_id)
        try:
            result = await engine.provide(args.run_id, args.step_id, value, by=args.by)
        except (StepFailed, RunCancelled) as exc:
            await _audit(ctx, "run.finish", args.run_id, status=_failed_status(exc))
            code = _print_failure(ctx, args.run_id, exc)
            return code
        code = _print_result(ctx, result, record.pipeline, getattr(args, "config", None))
        await _audit(ctx, "run.finish", result.run_id, status=result.status)
        return code
    finally:
        await _close(engine, host, said=code)


async def validate(args: argparse.Namespace, ctx: CliContext) -> int:
    pipeline = _with_executor(_read_pipeline(args.pipeline), args.executor)
    inputs = parse_inputs(args.input, pipeline) if args.input else None
    engine, host = await build_engine(ctx)
    try:
        engine.validate(pipeline, inputs)
    finally:
        await engine.aclose()
        await host.aclose()
    ctx.out.data(
        {"pipeline": args.pipeline, "valid": True},
        lambda: ctx.out.console.print(f"{args.pipeline}: valid", markup=False),
    )
    return 0
