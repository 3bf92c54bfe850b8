"""Running one run's steps: the DAG scheduler, leaves with retries, maps and groups.

Scheduling: each top-level step waits for a count of unfinished dependencies;
when a step finishes, dependents whose count reaches zero start at once. The
finishing task carries on with the first such dependent itself (a chain of a
thousand steps runs in one task, no task per step) and spawns tasks only for
the others. Everything lives in one ``asyncio.TaskGroup``, so a failure or a
cancellation stops all in-flight work and leaves no task behind.

A leaf (LLM call or plugin step) is retried per its ``RetryPolicy``; each
finished leaf, map item and group is checkpointed through the run store before
anything that depends on it starts, so a resume never repeats finished work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from taskloom.contracts import (
    CacheHit,
    ChunkStreamed,
    CompletionRequest,
    CompletionResult,
    ErrorInfo,
    Event,
    ExecutorTimeout,
    LLMExecutor,
    MalformedResponse,
    RetryableError,
    StepFailed,
    StepFailedEvent,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    Usage,
)
from taskloom.sdk._jsonschema import check, extract_json
from taskloom.sdk._plan import NodePlan, Plan, render_messages
from taskloom.sdk._ratelimit import ExecutorLimits
from taskloom.sdk._retry import call_with_retries
from taskloom.sdk._runrecords import StepRecord
from taskloom.sdk._runstore import cache_key as make_key
from taskloom.sdk._runstore import is_cacheable
from taskloom.sdk._template import Scope, TemplateRenderError

_ZERO = Usage()
_CONTINUED: Any = object()
"""Returned by a map that failed as a whole under ``on_error: continue`` (already recorded)."""


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as data for events and records."""
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        retryable=isinstance(exc, RetryableError),
    )


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


class _Attempt:
    """What a leaf's attempts produced: the output, usage, and bookkeeping."""

    __slots__ = ("attempts", "cached", "output", "usage")

    def __init__(self) -> None:
        self.attempts = 0
        self.output: Any = None
        self.usage = _ZERO
        self.cached = False


class RunExecution:
    """The mutable state of one run while it runs; the engine builds and drives it."""

    def __init__(
        self,
        *,
        run_id: str,
        plan: Plan,
        inputs: Mapping[str, Any],
        services: Any,
        finished: Mapping[tuple[str, int | None], Any],
        emit: Callable[[Event], None],
    ) -> None:
        self.run_id = run_id
        self.plan = plan
        self.svc = services
        self.finished = finished
        self.emit = emit
        self.outputs: dict[str, Any] = {}
        self.scope = Scope(inputs, self.outputs)
        # token sums per executor id as plain ints (None: steps without an executor);
        # Usage objects are built once, at the end, not per step
        self._tokens: dict[str | None, list[int]] = {}
        self.steps_done = 0
        self.failed_step: str | None = None
        self._remaining: dict[str, int] = {}
        self._tg: asyncio.TaskGroup | None = None
        for record in finished.values():
            self._account(record.usage, record.executor)

    def _account(self, usage: Usage, executor_id: str | None) -> None:
        sums = self._tokens.get(executor_id)
        if sums is None:
            sums = self._tokens[executor_id] = [0, 0]
        sums[0] += usage.prompt_tokens
        sums[1] += usage.completion_tokens

    @property
    def usage(self) -> Usage:
        """Tokens of every step of the run so far (checkpointed ones included)."""
        prompt = sum(s[0] for s in self._tokens.values())
        completion = sum(s[1] for s in self._tokens.values())
        return Usage(prompt_tokens=prompt, completion_tokens=completion)

    @property
    def usage_by_executor(self) -> dict[str, Usage]:
        """Tokens per executor id."""
        return {
            eid: Usage(prompt_tokens=s[0], completion_tokens=s[1])
            for eid, s in self._tokens.items()
            if eid is not None
        }

    # --- scheduling ----------------------------------------------------------

    async def run_graph(self) -> None:
        """Run every unfinished top-level step, each as soon as its dependencies finished."""
        done: set[str] = set()
        for node in self.plan.nodes:
            record = self.finished.get((node.id, None))
            if record is not None:
                self._restore(node, record)
                done.add(node.id)
                self.emit(
                    StepSkipped(
                        run_id=self.run_id,
                        at=self.svc.clock(),
                        step_id=node.id,
                        reason="finished before the resume",
                    )
                )
        ready: list[NodePlan] = []
        for node in self.plan.nodes:
            if node.id in done:
                continue
            count = sum(1 for dep in node.deps if dep not in done)
            self._remaining[node.id] = count
            if count == 0:
                ready.append(node)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for node in ready:
                tg.create_task(self._chain(node))

    def _restore(self, node: NodePlan, record: Any) -> None:
        self.outputs[node.id] = record.output
        if node.kind == "parallel":
            for child in node.children:
                child_record = self.finished.get((child.id, None))
                if child_record is not None:
                    self._restore(child, child_record)
                elif isinstance(record.output, dict) and child.id in record.output:
                    self.outputs[child.id] = record.output[child.id]

    async def _chain(self, node: NodePlan | None) -> None:
        while node is not None:
            await self.run_node(node, self.scope)
            following: NodePlan | None = None
            for dependent in node.dependents:
                left = self._remaining[dependent.id] - 1
                self._remaining[dependent.id] = left
                if left == 0:
                    if following is None:
                        following = dependent
                    else:
                        assert self._tg is not None
                        self._tg.create_task(self._chain(dependent))
            node = following

    # --- nodes ---------------------------------------------------------------

    async def run_node(self, node: NodePlan, scope: Scope) -> Any:
        """Run one step of any kind (skipping it when already checkpointed); return its output."""
        record = self.finished.get((node.id, None))
        if record is not None:
            self._restore(node, record)
            self.emit(
                StepSkipped(
                    run_id=self.run_id,
                    at=self.svc.clock(),
                    step_id=node.id,
                    reason="finished before the resume",
                )
            )
            return record.output
        output: Any
        if node.kind == "parallel":
            output = await self._run_parallel(node, scope)
        elif node.kind == "map":
            output = await self._run_map(node, scope)
            if output is _CONTINUED:
                self.outputs[node.id] = None
                return None
        else:
            output = await self.run_leaf(node, scope, step_id=node.id, item=None)
            self.outputs[node.id] = output
            return output
        self.outputs[node.id] = output
        await self._checkpoint(node.id, None, output, attempts=1, usage=_ZERO, started=None)
        return output

    async def _run_parallel(self, node: NodePlan, scope: Scope) -> dict[str, Any]:
        try:
            async with asyncio.TaskGroup() as tg:
                for child in node.children:
                    tg.create_task(self.run_node(child, scope))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return {child.id: self.outputs.get(child.id) for child in node.children}

    async def _run_map(self, node: NodePlan, scope: Scope) -> Any:
        assert node.map_render is not None
        started = self.svc.clock()
        try:
            items = node.map_render(scope)
        except TemplateRenderError as exc:
            return await self._map_failed(node, str(exc), started)
        if not isinstance(items, list):
            return await self._map_failed(
                node,
                f"'map' of step {node.id!r} must give a list, got {type(items).__name__}",
                started,
            )
        body = node.children[0]
        results: list[Any] = [None] * len(items)
        todo: list[int] = []
        for index in range(len(items)):
            record = self.finished.get((node.id, index))
            if record is not None:
                results[index] = record.output
            else:
                todo.append(index)
        as_name = node.as_name
        pending = iter(todo)

        async def worker() -> None:
            for index in pending:
                local = scope.child({as_name: items[index], "index": index})
                results[index] = await self.run_leaf(body, local, step_id=node.id, item=index)

        workers = min(node.concurrency, len(todo))
        if workers == 1:
            await worker()
        elif workers > 1:
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(workers):
                        tg.create_task(worker())
            except BaseExceptionGroup as group:
                raise first_error(group) from None
        return results

    async def _map_failed(self, node: NodePlan, message: str, started: float) -> Any:
        exc = StepFailed(message, step_id=node.id, cause_type="TemplateRenderError")
        await self._leaf_failed(node, node.id, None, exc, attempts=1, started=started)
        return _CONTINUED  # on_error: continue (with "fail", _leaf_failed raised)

    # --- leaves --------------------------------------------------------------

    async def run_leaf(
        self, node: NodePlan, scope: Scope, *, step_id: str, item: int | None
    ) -> Any:
        """Run an LLM call or plugin step with retries, checkpoint it, return its output."""
        svc = self.svc
        started = svc.clock()
        state = _Attempt()
        if node.kind == "llm":
            try:
                request = self._request(node, scope)
            except TemplateRenderError as exc:
                failure = StepFailed(str(exc), step_id=step_id, cause_type="TemplateRenderError")
                return await self._leaf_failed(node, step_id, item, failure, 1, started)
            executor_id = node.executor_id
            attempt_fn = self._llm_attempts(node, request, state, step_id, item)
        else:
            try:
                args = node.with_render(scope) if node.with_render is not None else {}
            except TemplateRenderError as exc:
                failure = StepFailed(str(exc), step_id=step_id, cause_type="TemplateRenderError")
                return await self._leaf_failed(node, step_id, item, failure, 1, started)
            executor_id = None
            attempt_fn = self._plugin_attempts(node, args, state, step_id, item)

        def on_retry(attempt: int, delay: float, exc: RetryableError) -> None:
            self.emit(
                StepRetrying(
                    run_id=self.run_id,
                    at=svc.clock(),
                    step_id=step_id,
                    attempt=attempt,
                    delay_s=delay,
                    error=error_info(exc),
                    item=item,
                )
            )

        deadline_at = started + node.deadline_s if node.deadline_s is not None else None
        retries = call_with_retries(
            attempt_fn,
            policy=node.retry,
            sleep=svc.sleep,
            random=svc.random,
            clock=svc.clock,
            deadline_at=deadline_at,
            on_retry=on_retry,
        )
        try:
            if deadline_at is None:  # asyncio.timeout(None) still costs: skip it on the hot path
                await retries
            else:
                async with asyncio.timeout(node.deadline_s):
                    await retries
        except TimeoutError:
            late = ExecutorTimeout(
                f"step {step_id!r} passed its deadline of {node.deadline_s} s; raise deadline_s "
                "or make the step faster"
            )
            return await self._leaf_failed(node, step_id, item, late, state.attempts, started)
        except Exception as exc:  # every failure of user code or an executor is data here
            return await self._leaf_failed(node, step_id, item, exc, state.attempts, started)
        self._account(state.usage, executor_id)
        self.emit(
            StepSucceeded(
                run_id=self.run_id,
                at=svc.clock(),
                step_id=step_id,
                attempt=state.attempts,
                duration_s=svc.clock() - started,
                usage=state.usage,
                item=item,
                cached=state.cached,
            )
        )
        await self._checkpoint(
            step_id,
            item,
            state.output,
            attempts=state.attempts,
            usage=state.usage,
            started=started,
            executor_id=executor_id,
            cached=state.cached,
        )
        return state.output

    def _request(self, node: NodePlan, scope: Scope) -> CompletionRequest:
        fields: dict[str, Any] = node.request_fields
        messages: Any = render_messages(node, scope)
        return CompletionRequest(messages=messages, **fields)

    def _llm_attempts(
        self,
        node: NodePlan,
        request: CompletionRequest,
        state: _Attempt,
        step_id: str,
        item: int | None,
    ) -> Callable[[int], Awaitable[None]]:
        svc = self.svc
        executor_id = node.executor_id
        assert executor_id is not None
        cache_key: str | None = None
        if (
            node.cache
            and svc.runstore is not None
            and is_cacheable(request, nondeterministic=node.cache_nondeterministic)
        ):
            cache_key = make_key(executor_id, request)

        async def attempt(number: int) -> None:
            state.attempts = number
            self.emit(
                StepStarted(
                    run_id=self.run_id, at=svc.clock(), step_id=step_id, attempt=number, item=item
                )
            )
            if cache_key is not None and number == 1:
                hit = await svc.runstore.cache_get(cache_key)
                if hit is not None:
                    try:
                        state.output = self._parse(node, hit)
                    except MalformedResponse:
                        pass  # a stale entry that no longer satisfies the schema: call again
                    else:
                        state.cached = True
                        self.emit(
                            CacheHit(
                                run_id=self.run_id,
                                at=svc.clock(),
                                step_id=step_id,
                                cache_key=cache_key,
                                item=item,
                            )
                        )
                        return
            executor = svc.registry.peek(executor_id) or await svc.registry.get(executor_id)
            limits: ExecutorLimits = svc.limits(executor_id)
            result = await self._call(node, executor, limits, request, step_id, item)
            state.usage = state.usage + result.usage
            state.output = self._parse(node, result)
            if cache_key is not None:
                await svc.runstore.cache_put(cache_key, result, ttl_s=node.cache_ttl_s)

        return attempt

    async def _call(
        self,
        node: NodePlan,
        executor: LLMExecutor,
        limits: ExecutorLimits,
        request: CompletionRequest,
        step_id: str,
        item: int | None,
    ) -> CompletionResult:
        svc = self.svc
        gate = svc.global_limit
        if gate is not None:
            await gate.acquire()
        try:
            if limits.semaphore is not None:
                await limits.semaphore.acquire()
            try:
                if limits.active:
                    await limits.admit()
                try:
                    if node.stream:
                        call = self._stream(executor, request, step_id, item)
                    else:
                        call = executor.complete(request)
                    if node.timeout_s is None:
                        result = await call
                    else:
                        async with asyncio.timeout(node.timeout_s):
                            result = await call
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

    async def _stream(
        self, executor: LLMExecutor, request: CompletionRequest, step_id: str, item: int | None
    ) -> CompletionResult:
        parts: list[str] = []
        usage = _ZERO
        finish: Any = "stop"
        stream = executor.stream(request)
        try:
            async for chunk in stream:
                parts.append(chunk.delta)
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                self.emit(
                    ChunkStreamed(
                        run_id=self.run_id,
                        at=self.svc.clock(),
                        step_id=step_id,
                        delta=chunk.delta,
                        index=chunk.index,
                        item=item,
                    )
                )
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return CompletionResult(text="".join(parts), finish_reason=finish, usage=usage)

    def _parse(self, node: NodePlan, result: CompletionResult) -> Any:
        if not node.wants_json:
            return result.text
        try:
            value = extract_json(result.text)
        except ValueError as exc:
            raise MalformedResponse(f"step {node.id!r}: {exc}") from None
        if node.json_schema is not None:
            problems = check(value, node.json_schema)
            if problems:
                shown = "; ".join(problems[:5])
                raise MalformedResponse(
                    f"step {node.id!r}: the reply does not satisfy the JSON Schema: {shown}"
                )
        return value

    def _plugin_attempts(
        self, node: NodePlan, args: Any, state: _Attempt, step_id: str, item: int | None
    ) -> Callable[[int], Awaitable[None]]:
        svc = self.svc
        function = svc.plugin_steps[node.uses]

        async def attempt(number: int) -> None:
            state.attempts = number
            self.emit(
                StepStarted(
                    run_id=self.run_id, at=svc.clock(), step_id=step_id, attempt=number, item=item
                )
            )
            gate = svc.global_limit
            if gate is not None:
                await gate.acquire()
            try:
                async with asyncio.timeout(node.timeout_s):
                    state.output = await function(args)
            except TimeoutError:
                raise ExecutorTimeout(
                    f"step {step_id!r}: no result within {node.timeout_s} s"
                ) from None
            finally:
                if gate is not None:
                    gate.release()

        return attempt

    async def _leaf_failed(
        self,
        node: NodePlan,
        step_id: str,
        item: int | None,
        exc: BaseException,
        attempts: int,
        started: float,
    ) -> Any:
        info = error_info(exc)
        keep_going = node.on_error == "continue"
        self.emit(
            StepFailedEvent(
                run_id=self.run_id,
                at=self.svc.clock(),
                step_id=step_id,
                attempt=max(1, attempts),
                error=info,
                item=item,
                continued=keep_going,
            )
        )
        if keep_going:
            await self._checkpoint(
                step_id, item, None, attempts=attempts, usage=_ZERO, started=started, error=info
            )
            return None
        self.failed_step = step_id
        where = f"step {step_id!r}" + (f" (item {item})" if item is not None else "")
        if isinstance(exc, StepFailed):
            raise exc
        kind = "permanent" if not isinstance(exc, RetryableError) else "retryable"
        raise StepFailed(
            f"{where} failed after {max(1, attempts)} attempt(s) with a {kind} error: "
            f"{info.type}: {info.message}",
            step_id=step_id,
            cause_type=info.type,
        ) from exc

    async def _checkpoint(
        self,
        step_id: str,
        item: int | None,
        output: Any,
        *,
        attempts: int,
        usage: Usage,
        started: float | None,
        executor_id: str | None = None,
        cached: bool = False,
        error: ErrorInfo | None = None,
    ) -> None:
        self.steps_done += 1
        store = self.svc.runstore
        if store is None:
            return
        now = self.svc.clock()
        await store.record_step(
            StepRecord(
                run_id=self.run_id,
                step_id=step_id,
                item=item,
                status="failed" if error is not None else "succeeded",
                output=output,
                error=error,
                usage=usage,
                executor=executor_id,
                attempts=attempts,
                started_at=started if started is not None else now,
                finished_at=now,
                cached=cached,
            )
        )
