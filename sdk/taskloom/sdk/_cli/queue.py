"""CLI commands of the run queue: submit, queue, worker.

``submit`` validates a pipeline and its inputs and queues a run (nothing runs in
this process); ``queue`` shows each queue's depth, oldest waiting run and running
count, and defines queues; ``worker`` claims and runs queued runs (and runs whose
holder crashed) until SIGTERM or Ctrl-C, then finishes or gives back what it holds
within ``--grace`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

from taskloom.sdk._cli.context import CliContext, positive_int
from taskloom.sdk._cli.drive import _read_pipeline, _with_executor, build_engine, parse_inputs

__all__ = ["register"]


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def register(add: Callable[..., Any]) -> None:
    cmd = add("submit", "queue a run of a pipeline for a worker; print its id at once", submit)
    cmd.add_argument("pipeline", help="a pipeline/v1 JSON file")
    cmd.add_argument("-i", "--input", action="append", metavar="KEY=VALUE")
    cmd.add_argument("-e", "--executor", metavar="ID", help="executor for steps that name none")
    cmd.add_argument("--queue", default="default", help="the queue (default: default)")
    cmd.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    cmd.add_argument("--idempotency-key", metavar="KEY", help="the same key submits one run")
    cmd.add_argument("--run-id", metavar="ID", help="the run's id (default: a new one)")
    cmd = add("queue", "show the run queues (depth, oldest, running); define one", queue)
    cmd.add_argument("--define", metavar="NAME", help="define (or redefine) queue NAME")
    cmd.add_argument("--concurrency", type=positive_int, help="with --define: runs at once")
    cmd.add_argument(
        "--starts-per-minute", type=float, help="with --define: at most this many starts a minute"
    )
    cmd.add_argument("--max-claims", type=positive_int, help="with --define: poison-run limit")
    cmd = add("worker", "claim and run queued runs until SIGTERM or Ctrl-C", worker)
    cmd.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help="a queue to take runs from (repeat for more; default: default)",
    )
    cmd.add_argument("--concurrency", type=positive_int, default=1, help="runs at once here")
    cmd.add_argument(
        "--grace",
        type=_seconds,
        default=30.0,
        help="on SIGTERM, seconds to let runs finish before giving them back (default 30)",
    )
    cmd.add_argument("--poll", type=float, default=0.2, help=argparse.SUPPRESS)


async def submit(args: argparse.Namespace, ctx: CliContext) -> int:
    pipeline = _with_executor(_read_pipeline(args.pipeline), args.executor)
    inputs = parse_inputs(args.input, pipeline)
    engine, host = await build_engine(ctx)
    try:
        run_id = await engine.submit(
            pipeline,
            inputs,
            run_id=args.run_id,
            idempotency_key=args.idempotency_key,
            queue=args.queue,
            priority=args.priority,
        )
    finally:
        await engine.aclose()
        await host.aclose()

    def human() -> None:
        ctx.out.console.print(run_id)  # alone on stdout: RUN=$(taskloom submit ...) works
        ctx.out.note(
            f"queued on {args.queue!r}; a `taskloom worker` runs it "
            f"(follow it with `taskloom events {run_id} --follow`)"
        )

    ctx.out.data({"run_id": run_id, "queue": args.queue, "status": "queued"}, human)
    return 0


async def queue(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._queue.submit import define_queue, queue_stats
    from taskloom.sdk._runs.store import RunStore

    store = RunStore(await ctx.storage())
    try:
        if args.define is not None:
            await define_queue(
                store,
                args.define,
                concurrency=args.concurrency,
                starts_per_minute=args.starts_per_minute,
                max_claims=args.max_claims,
            )
        stats = await queue_stats(store)
    finally:
        await store.aclose()
    now = time.time()
    rows = [
        {
            "queue": s.name,
            "depth": s.depth,
            "oldest_age_s": None if s.oldest_at is None else round(now - s.oldest_at, 3),
            "running": s.running,
            "concurrency": s.concurrency,
            "starts_per_minute": s.starts_per_minute,
        }
        for s in stats
    ]
    ctx.out.data(
        {"queues": rows},
        lambda: ctx.out.table(
            "queues",
            ["queue", "depth", "oldest", "running", "limit", "starts/min"],
            [
                [
                    r["queue"],
                    r["depth"],
                    "" if r["oldest_age_s"] is None else f"{r['oldest_age_s']:.1f}s ago",
                    r["running"],
                    r["concurrency"] or "-",
                    r["starts_per_minute"] or "-",
                ]
                for r in rows
            ],
        ),
    )
    return 0


async def worker(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._workers.worker import Worker

    engine, host = await build_engine(ctx)
    try:
        found = Worker(
            engine,
            queues=args.queues or ["default"],
            concurrency=args.concurrency,
            poll_s=args.poll,
            grace_s=args.grace,
        )
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, found.stop)
                installed.append(signum)
        ctx.out.note(
            f"worker {engine.holder} taking runs from {', '.join(found.queues)} "
            f"(up to {found.concurrency} at once); SIGTERM or Ctrl-C stops it"
        )
        try:
            async with found:
                await found.wait_stopped()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        stats = found.stats
        ctx.out.data(
            {"holder": engine.holder, **_stats(stats)},
            lambda: ctx.out.note(
                f"worker stopped: {stats.claimed} claimed ({stats.recovered} recovered), "
                f"{stats.succeeded} succeeded, {stats.failed} failed, {stats.requeued} "
                f"given back, {stats.lost} taken over, {stats.poisoned} poison"
            ),
        )
    finally:
        await engine.aclose()
        await host.aclose()
    return 0


def _stats(stats: Any) -> dict[str, Any]:
    import attrs

    data: dict[str, Any] = attrs.asdict(stats)
    return data
