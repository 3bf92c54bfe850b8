"""CLI commands that read and change stored runs: runs, show, events, cancel.

They open the run store directly and never build an engine, so they work on a
machine that has no executor or plugin configured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

from taskloom.contracts import Event, StepFailedEvent, StepStarted, StepSucceeded, serde
from taskloom.sdk._cli.context import CliContext

TERMINAL = ("succeeded", "failed", "cancelled")


async def _audit(ctx: CliContext, action: str, subject: str, **details: Any) -> None:
    from taskloom.sdk._cli.security import audit

    await audit(ctx, action, subject, **details)


async def _runstore(ctx: CliContext) -> Any:
    from taskloom.sdk._runs.store import RunStore

    return RunStore(await ctx.storage())


def provide_command(
    run_id: str, step_id: str, pipeline: Mapping[str, Any], config: str | None = None
) -> str:
    """The command that provides the value of waiting step ``step_id`` (shell-quoted)."""
    approval = any(
        isinstance(step, Mapping) and step.get("id") == step_id and "approval" in step
        for step in pipeline.get("steps", ()) or ()
    )
    value = '{"decision": "approve", "comment": ""}' if approval else "JSON"
    where = f" --config {shlex.quote(config)}" if config else ""
    return f"taskloom{where} input {run_id} {step_id} --value {shlex.quote(value)}"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


async def runs(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._runs.history import DamagedRun

    store = await _runstore(ctx)
    try:
        entries = await store.list_entries(
            status=args.status, pipeline=args.pipeline, limit=args.limit
        )
    finally:
        await store.aclose()
    rows: list[dict[str, Any]] = []
    damaged: list[str] = []
    for r in entries:
        if isinstance(r, DamagedRun):
            damaged.append(r.run_id)
            rows.append({"run_id": r.run_id, "status": "damaged", "error": str(r.error)})
            continue
        rows.append(
            {
                "run_id": r.run_id,
                "pipeline": r.pipeline_name,
                "status": r.status,
                "created_at": r.created_at,
                "finished_at": r.finished_at,
                "tokens": r.usage.total_tokens,
            }
        )

    def human() -> None:
        ctx.out.table(
            "runs",
            ["run id", "pipeline", "status", "created", "tokens"],
            [
                [
                    r["run_id"],
                    r.get("pipeline", "?"),
                    r["status"],
                    _when(r.get("created_at")),
                    r.get("tokens", ""),
                ]
                for r in rows
            ],
        )
        for run_id in damaged:
            ctx.out.note(
                f"run {run_id}: its stored record is damaged (does not decode); "
                f"`taskloom delete {run_id}` removes it, `taskloom doctor` checks the store"
            )

    ctx.out.data(rows, human)
    return 0


def _steps_from_events(
    events: list[tuple[int, Event]], checkpointed: set[tuple[str, int | None]]
) -> list[dict[str, Any]]:
    """Rows for the steps the history shows but no checkpoint holds: a failed step (the one
    that failed the run) and steps started but never finished (cancelled, crashed)."""
    started: dict[tuple[str, int | None], float] = {}
    rows: dict[tuple[str, int | None], dict[str, Any]] = {}
    for _seq, event in events:
        if isinstance(event, StepStarted):
            key = (event.step_id, event.item)
            started.setdefault(key, event.at)
            if key not in checkpointed and key not in rows:
                rows[key] = _event_row(key, "unfinished", event.attempt, 0.0, None)
        elif isinstance(event, StepSucceeded):
            rows.pop((event.step_id, event.item), None)
        elif isinstance(event, StepFailedEvent):
            key = (event.step_id, event.item)
            if key in checkpointed:
                continue
            took = event.at - started.get(key, event.at)
            error = f"{event.error.type}: {event.error.message}"
            rows[key] = _event_row(key, "failed", event.attempt, took, error)
    return list(rows.values())


def _event_row(
    key: tuple[str, int | None], status: str, attempts: int, took: float, error: str | None
) -> dict[str, Any]:
    step_id, item = key
    return {
        "step": step_id if item is None else f"{step_id}[{item}]",
        "status": status,
        "attempts": attempts,
        "duration_s": round(took, 4),
        "tokens": 0,
        "cached": False,
        "finish_reason": None,
        "truncated": False,
        "output": None,
        "error": error,
    }


async def show(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _runstore(ctx)
    try:
        run_id = await store.resolve_run_id(args.run_id)
        record = await store.load_run(run_id)
        steps = await store.finished_steps(run_id)
        events = await store.events(run_id)
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
            "finish_reason": s.finish_reason,
            "truncated": s.truncated,
            "output": s.output,
            "error": f"{s.error.type}: {s.error.message}" if s.error is not None else None,
        }
        for (step_id, item), s in sorted(steps.items(), key=lambda kv: kv[1].finished_at)
    ]
    step_rows.extend(_steps_from_events(events, set(steps)))
    # Masked with the secret values this process read (the shell keeps them between
    # commands): what the engine stored is masked already, this covers older records.
    data: dict[str, Any] = ctx.out.redact_data(
        {"run": serde.unstructure(record), "steps": step_rows, "events": len(events)}
    )
    run_data: dict[str, Any] = data["run"]

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
        if run_data.get("error") is not None:
            error = run_data["error"]
            ctx.out.console.print(f"  error: {error['type']}: {error['message']}", markup=False)
        ctx.out.table(
            "steps",
            ["step", "status", "attempts", "seconds", "tokens", "finish", "output or error"],
            [
                [
                    r["step"],
                    r["status"]
                    + (" (cached)" if r["cached"] else "")
                    + (" (truncated)" if r["truncated"] else ""),
                    r["attempts"],
                    r["duration_s"],
                    r["tokens"],
                    r["finish_reason"] or "-",
                    _short(r["error"] if r["error"] is not None else r["output"]),
                ]
                for r in data["steps"]
            ],
        )
        if record.status == "succeeded":
            ctx.out.console.print("output: " + _short(run_data["output"], 400), markup=False)
        if record.status == "waiting":
            config = getattr(args, "config", None)
            for step_id, since in sorted(record.waiting.items()):
                ctx.out.console.print(
                    f"waiting since {_when(since)} at step {step_id!r}; provide its value:\n"
                    f"  {provide_command(record.run_id, step_id, record.pipeline, config)}",
                    markup=False,
                )

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
        run_id = await store.resolve_run_id(args.run_id)
        after = 0
        collected: list[dict[str, Any]] = []  # --json without --follow: one array
        while True:
            batch = await store.events(run_id, after=after)
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
            record = await store.load_run(run_id)
            if record.status in TERMINAL and not batch:
                break
            if not batch and await _stopped(store, record):
                return _not_running(ctx, run_id, record.status)
            await asyncio.sleep(args.interval)
    finally:
        await store.aclose()
    return 0


async def _stopped(store: Any, record: Any) -> bool:
    """Whether a run that is not finished has nobody advancing it (its process crashed or
    was killed: no live lease)."""
    if record.status != "running":
        return False
    lease = await store.lease(record.run_id)
    if lease is not None and lease.expires_at > store.clock():
        return False
    # A worker gives its lease back in the commit of the run's outcome: the run may have
    # ended since its record was read.
    again = await store.load_run(record.run_id)
    return bool(again.status == "running")


def _not_running(ctx: CliContext, run_id: str, status: str) -> int:
    """``events --follow`` on a run nobody advances: say so and how to go on (exit 1)."""
    message = (
        f"run {run_id} is not running: it is recorded '{status}' but no process holds it "
        f"(it crashed or was killed); continue it with `taskloom resume {run_id}`"
    )
    if ctx.out.json_mode:
        ctx.out.data({"run_id": run_id, "status": status, "running": False, "note": message})
    else:
        ctx.out.note(message)
    return 1


async def cancel(args: argparse.Namespace, ctx: CliContext) -> int:
    """Stop a run wherever it runs, and return once nobody holds it (see ``_runs.cancel``)."""
    from taskloom.sdk._runs.cancel import cancel_run

    store = await _runstore(ctx)
    try:
        outcome = await cancel_run(store, await store.resolve_run_id(args.run_id))
    finally:
        await store.aclose()
    record = outcome.record
    run_id = record.run_id
    if not outcome.cancelled:
        late = outcome.stopped_holder is not None
        ctx.out.data(
            {"run_id": run_id, "status": record.status, "cancelled": False},
            lambda: ctx.out.note(
                f"run {run_id} {record.status} before the cancel reached it; nothing to cancel"
                if late
                else f"run {run_id} already {record.status}; nothing to cancel"
            ),
        )
        return 1
    holder = outcome.stopped_holder
    ctx.out.data(
        {"run_id": run_id, "status": "cancelled", "cancelled": True, "was_running_in": holder},
        lambda: ctx.out.note(
            f"run {run_id} cancelled"
            + (f" ({holder} stopped it)" if holder else " (no running process held it)")
            + f"; `taskloom resume {run_id}` continues it"
        ),
    )
    await _audit(ctx, "run.cancel", run_id)
    return 0
