"""One leaf of a run (an LLM call or a plugin step): attempts, retries, events, checkpoint.

Each attempt emits ``StepStarted``; a retryable failure emits ``StepRetrying`` and
waits per the step's ``RetryPolicy`` (see ``taskloom.sdk._engine.retry``); the outcome is
``StepSucceeded`` or ``StepFailed``. A finished leaf is checkpointed through the
run store: with ``durability="sync"`` before its caller goes on, so nothing
that depends on it starts before it is durable; with ``"async"`` (the default)
it is queued and the run goes on, in order and within a bound (see
``taskloom.sdk._engine.window``). With ``on_error: continue`` a failure is checkpointed too
(output ``null``) and the run goes on; otherwise it raises ``StepFailed``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from taskloom.contracts import (
    Budget,
    BudgetExceeded,
    CacheHit,
    ChunkStreamed,
    CompletionChunk,
    CompletionRequest,
    ErrorInfo,
    Event,
    ExecutorTimeout,
    MalformedResponse,
    Refused,
    ReplyTruncated,
    RetryableError,
    RunHeld,
    SecretError,
    SecurityError,
    StepFailed,
    StepFailedEvent,
    StepRetrying,
    StepStarted,
    StepSucceeded,
    StorageError,
    Usage,
)
from taskloom.contracts._llm import FinishReason
from taskloom.sdk._engine.blame import internal_error, is_step_failure, mark_step_code
from taskloom.sdk._engine.calls import call_executor, error_info, parse_reply
from taskloom.sdk._engine.ratelimit import ExecutorLimits
from taskloom.sdk._engine.retry import call_with_retries, retry_after
from taskloom.sdk._engine.services import RunServices
from taskloom.sdk._engine.window import CheckpointWindow
from taskloom.sdk._pipeline.plan import NodePlan, render_messages
from taskloom.sdk._pipeline.template import Scope, TemplateRenderError
from taskloom.sdk._runs.codec import encode, encode_step
from taskloom.sdk._runs.records import StepRecord, StepStatus
from taskloom.sdk._runs.store import EncodedStep, RunStore
from taskloom.sdk._runs.store import cache_key as make_key

_ZERO = Usage()


def _always() -> bool:
    return True


async def settle(waiting: Awaitable[None] | None) -> None:
    """Await what ``_queue_checkpoint`` returned, if anything: the checkpoint of a step
    that is not on the hot path (a failure that goes on, a skipped or provided step)."""
    if waiting is not None:
        await waiting


class _Slot:
    """A leaf's slot in the run's checkpoint window: held until its checkpoint fills it."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = True


class _Attempt:
    """What a leaf's attempts produced: the output, usage, and bookkeeping."""

    __slots__ = ("attempts", "cached", "finish_reason", "output", "usage")

    def __init__(self) -> None:
        self.attempts = 0
        self.output: Any = None
        self.usage = _ZERO
        self.cached = False
        self.finish_reason: FinishReason | None = None


class LeafRunner:
    """Runs leaves (LLM calls, plugin steps) of one run and keeps their accounting.

    ``RunExecution`` (the scheduler) builds on it; a leaf needs only the run id,
    the engine's services, the emit function and the token sums.
    """

    def __init__(
        self,
        *,
        run_id: str,
        services: RunServices,
        emit: Callable[[Event], None],
        item_starts_seen: Callable[[], bool] | None = None,
    ) -> None:
        self.run_id = run_id
        self.svc = services
        self.emit = emit
        # Whether anyone can see the StepStarted of a map item right now (a handle's
        # history or a bus subscriber; item starts are never stored). When no one can,
        # a 10,000-item map skips building 10,000 events that would go nowhere.
        self.item_starts_seen = item_starts_seen or _always
        # token sums per executor id as plain ints (None: steps without an executor);
        # Usage objects are built once, at the end, not per step
        self._tokens: dict[str | None, list[int]] = {}
        self.steps_done = 0
        self.failed_step: str | None = None
        # the pipeline's budget, and the LLM calls started so far (checkpointed ones of
        # earlier processes included): a call that would pass it is never started
        self.budget: Budget | None = None
        self.calls_started = 0
        # durability="async": checkpoints queued and not yet durable (see _engine_window)
        self.window = CheckpointWindow() if services.durability == "async" else None

    def _spend_call(self, budget: Budget, step_id: str) -> None:
        """Count one LLM call about to start, or raise ``BudgetExceeded`` instead."""
        tokens = sum(s[0] + s[1] for s in self._tokens.values())
        over = (budget.max_calls is not None and self.calls_started >= budget.max_calls) or (
            budget.max_tokens is not None and tokens >= budget.max_tokens
        )
        if over:
            limits = ", ".join(
                f"{name} {value}"
                for name, value in (
                    ("max_calls", budget.max_calls),
                    ("max_tokens", budget.max_tokens),
                )
                if value is not None
            )
            raise BudgetExceeded(
                f"step {step_id!r} was not started: the run's budget ({limits}) is spent "
                f"({self.calls_started} call(s), {tokens} token(s) so far); raise the "
                "pipeline's budget and resume the run to go on",
                spent_tokens=tokens,
                spent_calls=self.calls_started,
                max_tokens=budget.max_tokens,
                max_calls=budget.max_calls,
            )
        self.calls_started += 1

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

    def run_leaf(
        self, node: NodePlan, scope: Scope, *, step_id: str, item: int | None
    ) -> Awaitable[Any]:
        """Run one leaf (see ``_run_leaf``), inside its span when telemetry is on. A plain
        function returning the awaitable: no coroutine frame of its own per step."""
        telemetry = self.svc.telemetry
        if telemetry is None:
            return self._run_leaf(node, scope, step_id=step_id, item=item)
        return telemetry.trace_step(
            step_id, item, self._run_leaf(node, scope, step_id=step_id, item=item)
        )

    async def _run_leaf(
        self, node: NodePlan, scope: Scope, *, step_id: str, item: int | None
    ) -> Any:
        """Run an LLM call or plugin step with retries, checkpoint it, return its output.

        With ``durability="async"`` the leaf first takes a slot of the run's checkpoint
        window (waiting for room), so the window bounds the leaves in flight and the
        finished ones not yet durable together: what a crash can make run again.
        """
        window = self.window
        slot: _Slot | None = None
        if window is not None and self.svc.runstore is not None:
            if not window.try_reserve():
                await window.reserve()
            slot = _Slot()
        try:
            svc = self.svc
            started = svc.clock()
            state = _Attempt()
            if node.kind == "llm":
                try:
                    request = self._request(node, scope)
                except TemplateRenderError as exc:
                    failure = StepFailed(
                        str(exc), step_id=step_id, cause_type="TemplateRenderError"
                    )
                    return await self._leaf_failed(
                        node, step_id, item, failure, 1, started, slot=slot
                    )
                executor_id = node.executor_id
                attempt_fn = self._llm_attempts(node, request, state, step_id, item)
            else:
                try:
                    args = node.with_render(scope) if node.with_render is not None else {}
                except TemplateRenderError as exc:
                    failure = StepFailed(
                        str(exc), step_id=step_id, cause_type="TemplateRenderError"
                    )
                    return await self._leaf_failed(
                        node, step_id, item, failure, 1, started, slot=slot
                    )
                executor_id = None
                attempt_fn = self._plugin_attempts(node, args, state, step_id, item)

            deadline_s = node.deadline_s
            try:
                if deadline_s is None:
                    # the hot path: attempt 1 called here (no retry coroutine, no
                    # asyncio.timeout(None), which still costs), the rest only if it failed
                    failed: RetryableError | None = None
                    try:
                        await attempt_fn(1)
                    except RetryableError as exc:
                        failed = exc
                    if failed is not None:
                        await retry_after(
                            failed,
                            attempt_fn,
                            policy=node.retry,
                            sleep=svc.sleep,
                            random=svc.random,
                            clock=svc.clock,
                            on_retry=self._retry_emitter(step_id, item),
                        )
                else:
                    async with asyncio.timeout(deadline_s):
                        await call_with_retries(
                            attempt_fn,
                            policy=node.retry,
                            sleep=svc.sleep,
                            random=svc.random,
                            clock=svc.clock,
                            deadline_at=started + deadline_s,
                            on_retry=self._retry_emitter(step_id, item),
                        )
            except TimeoutError:
                late = ExecutorTimeout(
                    f"step {step_id!r} passed its deadline of {node.deadline_s} s; raise "
                    "deadline_s or make the step faster"
                )
                return await self._leaf_failed(
                    node, step_id, item, late, state.attempts, started, state.usage, slot=slot
                )
            except (StorageError, SecretError, SecurityError, RunHeld):
                raise  # the store, the credentials or the lease failed, not the step: never hide it
            except Exception as exc:
                if not is_step_failure(exc):  # the engine broke, not the step: fail the run
                    broken = internal_error(exc, run_id=self.run_id, step_id=step_id)
                    if broken is exc:
                        raise
                    raise broken from exc
                return await self._leaf_failed(
                    node, step_id, item, exc, state.attempts, started, state.usage, slot=slot
                )
            self._account(state.usage, executor_id)
            state.output = svc.mask(state.output)  # before it is checkpointed, used or shown
            now = svc.clock()
            self.emit(
                StepSucceeded(
                    run_id=self.run_id,
                    at=now,
                    step_id=step_id,
                    attempt=state.attempts,
                    duration_s=now - started,
                    usage=state.usage,
                    item=item,
                    cached=state.cached,
                    finish_reason=state.finish_reason,
                )
            )
            waiting = self._queue_checkpoint(
                step_id,
                item,
                state.output,
                attempts=state.attempts,
                usage=state.usage,
                started=started,
                executor_id=executor_id,
                cached=state.cached,
                finished=now,
                slot=slot,
                finish_reason=state.finish_reason,
            )
            if waiting is not None:
                await waiting
            return state.output
        finally:
            # a leaf that ended without a checkpoint (it failed, or was cancelled)
            if slot is not None and slot.held and window is not None:
                window.release()

    def _retry_emitter(
        self, step_id: str, item: int | None
    ) -> Callable[[int, float, RetryableError], None]:
        """What ``retry_after`` calls before each retry: emit the step's StepRetrying."""
        svc = self.svc

        def on_retry(attempt: int, delay: float, exc: RetryableError) -> None:
            self.emit(
                StepRetrying(
                    run_id=self.run_id,
                    at=svc.clock(),
                    step_id=step_id,
                    attempt=attempt,
                    delay_s=delay,
                    error=error_info(exc, svc.redact),
                    item=item,
                )
            )

        return on_retry

    def _started(self, step_id: str, attempt: int, item: int | None) -> None:
        """Emit an attempt's StepStarted (a map item's only if anyone can see it)."""
        if item is None or self.item_starts_seen():
            self.emit(
                StepStarted(
                    run_id=self.run_id,
                    at=self.svc.clock(),
                    step_id=step_id,
                    attempt=attempt,
                    item=item,
                )
            )

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
        """The step's ``attempt(number)``: ``_llm_attempt`` with the step's arguments
        bound (a partial: no closure cells to build per step)."""
        cache_key: str | None = None
        if (
            node.cache
            and self.svc.runstore is not None
            # only deterministic requests (temperature 0 or a seed) unless the pipeline
            # opts in: caching a sampled reply would freeze a random choice
            and (node.cache_nondeterministic or request.deterministic)
        ):
            assert node.executor_id is not None
            cache_key = make_key(node.executor_id, request)
        return functools.partial(self._llm_attempt, node, request, state, step_id, item, cache_key)

    async def _llm_attempt(
        self,
        node: NodePlan,
        request: CompletionRequest,
        state: _Attempt,
        step_id: str,
        item: int | None,
        cache_key: str | None,
        number: int,
    ) -> None:
        """One attempt of an LLM step: the cache, the budget, the lease, the call."""
        svc = self.svc
        executor_id = node.executor_id
        assert executor_id is not None
        runstore = svc.runstore
        state.attempts = number
        self._started(step_id, number, item)
        if cache_key is not None and runstore is not None and number == 1:
            hit = await runstore.cache_get(cache_key)
            if hit is not None:
                try:
                    state.output = parse_reply(node, hit)
                except (MalformedResponse, ReplyTruncated, Refused):
                    pass  # a stale entry that no longer satisfies the step: call again
                else:
                    state.cached = True
                    state.finish_reason = hit.finish_reason
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
        if self.budget is not None:
            self._spend_call(self.budget, step_id)
        executor = svc.registry.peek(executor_id) or await svc.registry.get(executor_id)
        if svc.telemetry is not None:
            executor = svc.telemetry.traced(executor, executor_id)
        limits: ExecutorLimits = svc.limits(executor_id)
        store = svc.runstore
        if (
            limits.plain
            and not node.stream
            and node.timeout_s is None
            and (svc.global_limit is None)
        ):
            # nothing to wait for or time: the call itself (one coroutine frame less)
            if store is not None and not store.check_lease(self.run_id):
                await store.ensure_lease(self.run_id)  # never call for a lost run
            try:
                result = await executor.complete(request)
            except Exception as exc:
                mark_step_code(exc)
                raise
        else:
            on_chunk = self._chunk_emitter(step_id, item) if node.stream else None
            before = self._lease_check(store) if store is not None else None
            result = await call_executor(
                node, executor, limits, request, svc.global_limit, on_chunk, step_id, before
            )
        state.usage = result.usage if state.usage is _ZERO else state.usage + result.usage
        state.output = parse_reply(node, result)
        state.finish_reason = result.finish_reason
        if cache_key is not None and runstore is not None:
            await runstore.cache_put(
                cache_key, svc.mask(result), ttl_s=node.cache_ttl_s, run_id=self.run_id
            )

    def _lease_check(self, store: RunStore) -> Callable[[], Awaitable[None]]:
        """What ``call_executor`` runs before the call: never call for a lost run."""
        run_id = self.run_id

        async def before() -> None:
            if not store.check_lease(run_id):
                await store.ensure_lease(run_id)

        return before

    def _chunk_emitter(self, step_id: str, item: int | None) -> Callable[[CompletionChunk], None]:
        def on_chunk(chunk: CompletionChunk) -> None:
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

        return on_chunk

    def _plugin_attempts(
        self, node: NodePlan, args: Any, state: _Attempt, step_id: str, item: int | None
    ) -> Callable[[int], Awaitable[None]]:
        svc = self.svc
        function = svc.plugin_steps[node.uses]

        async def attempt(number: int) -> None:
            state.attempts = number
            self._started(step_id, number, item)
            gate = svc.global_limit
            if gate is not None:
                await gate.acquire()
            try:
                store = svc.runstore
                if store is not None and not store.check_lease(self.run_id):
                    await store.ensure_lease(self.run_id)  # never start work for a lost run
                async with asyncio.timeout(node.timeout_s):
                    try:
                        state.output = await function(args)
                    except Exception as exc:
                        mark_step_code(exc)
                        raise
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
        usage: Usage = _ZERO,
        *,
        slot: _Slot | None = None,
    ) -> Any:
        """Record a failed leaf; with ``on_error: continue`` return None, else raise StepFailed.

        Tokens spent by failed attempts (a reply that did not parse) still count.
        """
        info = error_info(exc, self.svc.redact)
        keep_going = node.on_error == "continue"
        executor_id = node.executor_id if node.kind == "llm" else None
        self._account(usage, executor_id)
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
            await settle(
                self._queue_checkpoint(
                    step_id,
                    item,
                    None,
                    attempts=attempts,
                    usage=usage,
                    started=started,
                    executor_id=executor_id,
                    error=info,
                    slot=slot,
                )
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

    def _queue_checkpoint(
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
        finished: float | None = None,
        slot: _Slot | None = None,
        finish_reason: FinishReason | None = None,
    ) -> Awaitable[None] | None:
        """Queue the checkpoint; return what to await before going on (room in the
        window, or with ``durability="sync"`` the commit), or None when there is nothing
        to wait for -- the case of every step that took a window slot, so a leaf's
        checkpoint costs no coroutine of its own."""
        self.steps_done += 1
        store = self.svc.runstore
        if store is None:
            return None
        now = finished if finished is not None else self.svc.clock()
        status: StepStatus = "failed" if error is not None else "succeeded"
        began = started if started is not None else now
        # the record's bytes, written without building the StepRecord when its fields
        # pass the record's own test (as a step's always do); else the record itself,
        # which converts the values or refuses them as it always did
        value = encode_step(
            self.run_id,
            step_id,
            item,
            status,
            output,
            error,
            usage,
            executor_id,
            attempts,
            began,
            now,
            cached,
            finish_reason,
        )
        if value is None:
            value = encode(
                StepRecord(
                    run_id=self.run_id,
                    step_id=step_id,
                    item=item,
                    status=status,
                    output=output,
                    error=error,
                    usage=usage,
                    executor=executor_id,
                    attempts=attempts,
                    started_at=began,
                    finished_at=now,
                    cached=cached,
                    finish_reason=finish_reason,
                )
            )
        step: EncodedStep = (self.run_id, step_id, item, value)
        window = self.window
        if slot is not None and window is not None:
            slot.held = False
            window.add_reserved(store.queue_encoded_step, step)
            return None
        if window is not None:
            if window.try_add(store.queue_encoded_step, step):
                return None
            return window.add(store.queue_encoded_step, step)
        return store.queue_encoded_step(step)
