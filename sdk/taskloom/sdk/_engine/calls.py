"""Talking to an executor for one attempt: limits, the call, streaming, reading the reply.

Kept apart from the scheduler so that what an attempt does with an executor
(take the global and per-executor slots, wait for the rate limits, apply the
attempt's timeout, join a stream's chunks, parse and check a JSON reply) reads
in one place. ``error_info`` and ``first_error`` turn exceptions into data and
``TaskGroup`` failures into the one error they stand for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from taskloom.contracts import (
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ErrorInfo,
    ExecutorTimeout,
    LLMExecutor,
    MalformedResponse,
    Refused,
    ReplyTruncated,
    RetryableError,
    StepFailed,
    Usage,
)
from taskloom.sdk._engine.blame import mark_step_code
from taskloom.sdk._engine.ratelimit import ExecutorLimits
from taskloom.sdk._pipeline.plan import NodePlan
from taskloom.sdk._pipeline.replyschema import extract_json

OnChunk = Callable[[CompletionChunk], None]


def error_info(exc: BaseException, redact: Callable[[str], str] | None = None) -> ErrorInfo:
    """An exception as data for events and records, its text passed through ``redact``.

    Error texts leave the process (events, stored records, the CLI), so known
    secret values are masked here, once, before anything can see them; the
    exception itself and its causes are scrubbed too (``scrub_exception``), so
    that a traceback printed later, with or without its frames' locals, holds
    no key either.
    """
    message = str(exc) or type(exc).__name__
    if redact is not None:
        scrub_exception(exc, redact)
    return ErrorInfo(
        type=type(exc).__name__,
        message=redact(message) if redact is not None else message,
        retryable=isinstance(exc, RetryableError),
    )


_MAX_CHAIN = 32


def scrub_exception(exc: BaseException, redact: Callable[[str], str]) -> None:
    """Mask secret values in the text arguments of ``exc`` and of its causes, in place.

    ``str(exc)`` and ``repr(exc)`` (which a traceback with captured locals shows)
    derive from ``args`` for every exception that does not override them.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_CHAIN:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        args = current.args
        scrubbed = tuple(redact(a) if isinstance(a, str) else a for a in args)
        if scrubbed != args:
            # an exception type that refuses new args is left as it is
            with contextlib.suppress(AttributeError, TypeError):
                current.args = scrubbed
        for inner in (current.__cause__, current.__context__):
            if inner is not None:
                todo.append(inner)


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error a TaskGroup failure stands for: a StepFailed first, then any other."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, StepFailed):
            return exc
    for exc in leaves:
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return leaves[0] if leaves else group


async def call_executor(
    node: NodePlan,
    executor: LLMExecutor,
    limits: ExecutorLimits,
    request: CompletionRequest,
    gate: asyncio.Semaphore | None,
    on_chunk: OnChunk | None,
    step_id: str,
    before: Callable[[], Awaitable[None]] | None = None,
) -> CompletionResult:
    """One call, inside the global slot, the executor's slot, its rate limits and timeout.

    ``before`` runs once every wait is over, right before the call starts (the run's
    lease check: a process that lost the run must start no call).
    """
    if gate is not None:
        await gate.acquire()
    try:
        if limits.semaphore is not None:
            await limits.semaphore.acquire()
        try:
            if limits.active:
                await limits.admit()
            if before is not None:
                await before()
            try:
                if on_chunk is not None:
                    call = stream_reply(executor, request, on_chunk)
                else:
                    call = executor.complete(request)
                try:
                    if node.timeout_s is None:
                        result = await call
                    else:
                        async with asyncio.timeout(node.timeout_s):
                            result = await call
                except Exception as exc:
                    mark_step_code(exc)
                    raise
            except TimeoutError:
                raise ExecutorTimeout(
                    f"step {step_id!r}: no reply within {node.timeout_s} s"
                ) from None
            limits.spent(result.usage.total_tokens)
            return result
        finally:
            if limits.semaphore is not None:
                limits.semaphore.release()
    finally:
        if gate is not None:
            gate.release()


async def stream_reply(
    executor: LLMExecutor, request: CompletionRequest, on_chunk: OnChunk
) -> CompletionResult:
    """Stream a reply, handing each chunk to ``on_chunk``; return the joined result."""
    parts: list[str] = []
    usage = Usage()
    finish: Any = "stop"
    stream = executor.stream(request)
    try:
        async for chunk in stream:
            parts.append(chunk.delta)
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
            on_chunk(chunk)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return CompletionResult(text="".join(parts), finish_reason=finish, usage=usage)


def parse_reply(node: NodePlan, result: CompletionResult) -> Any:
    """The step's output: the text, or the parsed JSON checked against the step's schema.

    A reply that is not JSON or does not satisfy the schema is ``MalformedResponse``,
    a retryable error: another attempt may well produce a valid reply. A refusal is
    ``Refused`` and a reply cut off by ``max_tokens`` where a whole one is needed (a
    JSON step, or a text step with ``on_truncated: fail``) is ``ReplyTruncated``: both
    permanent, since the same request gets the same answer.
    """
    finish = result.finish_reason
    if finish == "refusal":
        shown = result.text.strip()[:200] or "(no text)"
        raise Refused(
            f"step {node.id!r}: the model refused to answer: {shown}; rephrase the prompt",
            refusal=result.text,
        )
    if finish == "length" and (node.wants_json or node.on_truncated == "fail"):
        what = "its JSON reply" if node.wants_json else "its reply (on_truncated: fail)"
        raise ReplyTruncated(
            f"step {node.id!r}: {what} was cut off by max_tokens or the context window "
            f"after {result.usage.completion_tokens} completion tokens; raise max_tokens "
            "or ask for a shorter reply"
        )
    if not node.wants_json:
        return result.text
    try:
        value = extract_json(result.text, embedded=node.extract_json)
    except ValueError as exc:
        raise MalformedResponse(f"step {node.id!r}: {exc}") from None
    if node.reply_schema is not None:
        problems = node.reply_schema.problems(value)
        if problems:
            shown = "; ".join(problems[:5])
            raise MalformedResponse(
                f"step {node.id!r}: the reply does not satisfy the JSON Schema: {shown}"
            )
    return value
