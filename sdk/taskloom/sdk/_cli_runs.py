"""CLI commands about runs: run, resume, runs, show, events, cancel, validate."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskloom.contracts import (
    Event,
    RunCancelled,
    RunCancelledEvent,
    RunHeld,
    Secret,
    SecretStore,
    StepFailed,
    TaskloomError,
    UsageError,
    serde,
)
from taskloom.sdk._cli_context import CliContext, positive_int
from taskloom.sdk._cli_progress import Progress

TERMINAL = ("succeeded", "failed", "cancelled")


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
    from taskloom.sdk._engine import Engine
    from taskloom.sdk._plugin_host import PluginHost, discover
    from taskloom.sdk._registry import ExecutorRegistry
    from taskloom.security import RollbackGuard

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
        rollback=RollbackGuard(storage),
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
            redactor=ctx.out.redactor,  # secrets read by executors or plugins never get stored
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


async def _drive(ctx: CliContext, handle: Any, *, title: str) -> Any:
    """Show live progress from the handle's events (not in --json mode); return the result.

    The result is awaited, not the event stream's end: a run that fails before it
    starts (an unknown run id to resume) may never close its stream.
    """
    show = not ctx.out.json_mode and sys.stderr.isatty()
    progress = Progress(ctx.out.err, title=title, live=show)

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


def _print_result(ctx: CliContext, result: Any) -> int:
    data = _result_data(ctx, result)

    def human() -> None:
        ctx.out.note(f"run {result.run_id}: {result.status} ({result.usage.total_tokens} tokens)")
        if result.status == "succeeded":
            output = result.output
            ctx.out.console.print(
                output
                if isinstance(output, str)
                else json.dumps(output, indent=2, ensure_ascii=False),
                markup=False,
            )
        elif result.error is not None:
            ctx.out.note(f"taskloom: error: {result.error.type}: {result.error.message}")

    ctx.out.data(data, human)
    return 0 if result.status == "succeeded" else 1


async def _audit(ctx: CliContext, action: str, subject: str, **details: Any) -> None:
    from taskloom.sdk._cli_security import audit

    await audit(ctx, action, subject, **details)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    pipeline = _with_executor(_read_pipeline(args.pipeline), args.executor)
    inputs = parse_inputs(args.input, pipeline)
    engine, host = await build_engine(ctx)
    try:
        handle = engine.start(pipeline, inputs)
        await _audit(ctx, "run.start", handle.run_id, pipeline=str(pipeline.get("name", "")))
        try:
            result = await _drive(ctx, handle, title=str(pipeline.get("name", args.pipeline)))
        except (KeyboardInterrupt, asyncio.CancelledError):
            handle.cancel()
            _print_failure(
                ctx,
                handle.run_id,
                RunCancelled(f"interrupted; 'taskloom resume {handle.run_id}' continues the run"),
            )
            raise
        except RunHeld:
            return await _lost(ctx, handle.run_id)
        except (StepFailed, RunCancelled) as exc:
            await _audit(ctx, "run.finish", handle.run_id, status=_failed_status(exc))
            return _print_failure(ctx, handle.run_id, exc)
        await _audit(ctx, "run.finish", result.run_id, status=result.status)
        return _print_result(ctx, result)
    finally:
        await engine.aclose()
        await host.aclose()


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
    engine, host = await build_engine(ctx)
    try:
        handle = engine.start_resume(args.run_id, pipeline)
        await _audit(ctx, "run.resume", args.run_id)
        try:
            result = await _drive(ctx, handle, title=f"resume {args.run_id[:12]}")
        except RunHeld:
            if handle.run_id != args.run_id or not await _was_cancelled(ctx, args.run_id):
                raise
            return await _lost(ctx, args.run_id)
        except (StepFailed, RunCancelled) as exc:
            await _audit(ctx, "run.finish", handle.run_id, status=_failed_status(exc))
            return _print_failure(ctx, handle.run_id, exc)
        await _audit(ctx, "run.finish", result.run_id, status=result.status)
        return _print_result(ctx, result)
    finally:
        await engine.aclose()
        await host.aclose()


async def _runstore(ctx: CliContext) -> Any:
    from taskloom.sdk._runstore import RunStore

    return RunStore(await ctx.storage())


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


async def runs(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _runstore(ctx)
    try:
        records = await store.list_runs(
            status=args.status, pipeline=args.pipeline, limit=args.limit
        )
    finally:
        await store.aclose()
    rows = [
        {
            "run_id": r.run_id,
            "pipeline": r.pipeline_name,
            "status": r.status,
            "created_at": r.created_at,
            "finished_at": r.finished_at,
            "tokens": r.usage.total_tokens,
        }
        for r in records
    ]
    ctx.out.data(
        rows,
        lambda: ctx.out.table(
            "runs",
            ["run id", "pipeline", "status", "created", "tokens"],
            [
                [r["run_id"], r["pipeline"], r["status"], _when(r["created_at"]), r["tokens"]]
                for r in rows
            ],
        ),
    )
    return 0


async def show(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _runstore(ctx)
    try:
        record = await store.load_run(args.run_id)
        steps = await store.finished_steps(args.run_id)
        events = await store.events(args.run_id)
    finally:
        await store.aclose()
    step_rows = [
        {
            "step": step_id if item is None else f"{step_id}[{item}]",
            "status": s.status,
            "attempts": s.attempts,
            "duration_s": round(s.finished_at - s.started_at, 4),
            "tokens": s.usage.total_tokens,
            "cached": s.cached,
            "output": s.output,
        }
        for (step_id, item), s in sorted(steps.items(), key=lambda kv: kv[1].finished_at)
    ]
    data = {
        "run": serde.unstructure(record),
        "steps": step_rows,
        "events": len(events),
    }

    def human() -> None:
        duration = (
            f"{record.finished_at - record.started_at:.3f}s"
            if record.finished_at and record.started_at
            else "-"
        )
        ctx.out.console.print(
            f"run {record.run_id}\n"
            f"  pipeline: {record.pipeline_name} ({record.pipeline_digest[:12]})\n"
            f"  status: {record.status}\n  created: {_when(record.created_at)}\n"
            f"  duration: {duration}\n  tokens: {record.usage.prompt_tokens} prompt + "
            f"{record.usage.completion_tokens} completion\n  events: {len(events)}",
            markup=False,
        )
        if record.error is not None:
            ctx.out.console.print(
                f"  error: {record.error.type}: {record.error.message}", markup=False
            )
        ctx.out.table(
            "steps",
            ["step", "status", "attempts", "seconds", "tokens", "output"],
            [
                [
                    r["step"],
                    r["status"] + (" (cached)" if r["cached"] else ""),
                    r["attempts"],
                    r["duration_s"],
                    r["tokens"],
                    _short(r["output"]),
                ]
                for r in step_rows
            ],
        )
        if record.status == "succeeded":
            ctx.out.console.print("output: " + _short(record.output, 400), markup=False)

    ctx.out.data(data, human)
    return 0


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _event_line(seq: int, event: Event) -> str:
    data = serde.unstructure(event, Event)
    kind = data.pop("type")
    at = _when(data.pop("at", None))
    data.pop("run_id", None)
    rest = " ".join(f"{k}={_short(v, 80)}" for k, v in data.items() if v not in (None, "", {}, []))
    return f"{seq:>5} {at} {kind:<16} {rest}"


async def events(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _runstore(ctx)
    try:
        await store.load_run(args.run_id)
        after = 0
        collected: list[dict[str, Any]] = []  # --json without --follow: one array
        while True:
            batch = await store.events(args.run_id, after=after)
            for seq, event in batch:
                after = seq
                if ctx.out.json_mode:
                    document = {"seq": seq, **serde.unstructure(event, Event)}
                    if args.follow:
                        ctx.out.data(document)  # a stream: one document per line
                    else:
                        collected.append(document)
                else:
                    ctx.out.console.print(_event_line(seq, event), markup=False)
            if not args.follow:
                if ctx.out.json_mode:
                    ctx.out.data(collected)
                break
            record = await store.load_run(args.run_id)
            if record.status in TERMINAL and not batch:
                break
            await asyncio.sleep(args.interval)
    finally:
        await store.aclose()
    return 0


async def cancel(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _runstore(ctx)
    try:
        record = await store.load_run(args.run_id)
        if record.status in TERMINAL:
            ctx.out.data(
                {"run_id": record.run_id, "status": record.status, "cancelled": False},
                lambda: ctx.out.note(
                    f"run {record.run_id} already {record.status}; nothing to cancel"
                ),
            )
            return 1
        lease = await store.lease(args.run_id)
        now = time.time()
        live = lease is not None and lease.expires_at > now
        if live:
            # Take the lease away: the process running the run finds it gone at its next
            # renewal (every third of the lease TTL) and stops there.
            from taskloom.sdk._runrecords import NS_LEASES

            storage = await ctx.storage()
            stored = await storage.get(NS_LEASES, args.run_id)
            if stored is not None:
                await storage.delete(NS_LEASES, args.run_id, if_version=stored.version)
        import attrs

        await store.update_run(attrs.evolve(record, status="cancelled", finished_at=now))
        store.record_event(RunCancelledEvent(run_id=record.run_id, at=now))
        await store.flush()
        holder = lease.holder if (live and lease is not None) else None
        ctx.out.data(
            {"run_id": record.run_id, "status": "cancelled", "was_running_in": holder},
            lambda: ctx.out.note(
                f"run {record.run_id} cancelled"
                + (
                    f"; {holder} stops at its next lease renewal"
                    if holder
                    else " (no live process held it)"
                )
                + "; 'taskloom resume' can continue it"
            ),
        )
        await _audit(ctx, "run.cancel", record.run_id)
    finally:
        await store.aclose()
    return 0


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


def register(add: Callable[..., Any]) -> None:
    cmd = add("run", "run a pipeline, with live progress, and print its output", run)
    cmd.add_argument("pipeline", help="a pipeline/v1 JSON file")
    cmd.add_argument(
        "-i",
        "--input",
        action="append",
        metavar="KEY=VALUE",
        help="an input (KEY=@FILE reads a file)",
    )
    _executor_option(cmd)
    cmd = add("resume", "continue a run that crashed or was cancelled", resume)
    cmd.add_argument("run_id")
    cmd.add_argument("--pipeline", help="the pipeline file (default: the one stored with the run)")
    cmd = add("runs", "list runs, newest first", runs)
    cmd.add_argument("--status", choices=["pending", "running", *TERMINAL])
    cmd.add_argument("--pipeline", help="only runs of this pipeline name")
    cmd.add_argument("--limit", type=positive_int, default=20, help="at most this many runs")
    cmd = add("show", "show one run: steps, outputs, usage, timings", show)
    cmd.add_argument("run_id")
    cmd = add(
        "events",
        "print a run's events (--follow waits for more; with --json: one array, "
        "or with --follow one JSON document per line)",
        events,
    )
    cmd.add_argument("run_id")
    cmd.add_argument(
        "--follow", "-f", action="store_true", help="wait for new events until the run ends"
    )
    cmd.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    cmd = add("cancel", "cancel a run", cancel)
    cmd.add_argument("run_id")
    cmd = add("validate", "check a pipeline (and inputs) without running it", validate)
    cmd.add_argument("pipeline")
    cmd.add_argument("-i", "--input", action="append", metavar="KEY=VALUE")
    _executor_option(cmd)


def _executor_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "-e",
        "--executor",
        metavar="ID",
        help="the executor for steps that name none (overrides the pipeline's defaults)",
    )
