"""Running one run's steps: the DAG scheduler, parallel groups and maps.

Scheduling: each top-level step waits for a count of unfinished dependencies;
when a step finishes, dependents whose count reaches zero start at once. The
finishing task carries on with the first such dependent itself (a chain of a
thousand steps runs in one task, no task per step) and spawns tasks only for
the others. Everything lives in one ``asyncio.TaskGroup``, so a failure or a
cancellation stops all in-flight work and leaves no task behind.

A map runs ``concurrency`` workers that take the next unfinished item in turn
(10,000 items cost ``concurrency`` tasks, not 10,000). On resume, checkpointed
steps, group children and map items are restored instead of run (see
``taskloom.sdk._engine.leaf`` for leaves: attempts, retries, events and checkpoints).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, get_args

from taskloom.contracts import Event, StepFailed, StepSkipped, Usage
from taskloom.sdk._engine.calls import first_error
from taskloom.sdk._engine.leaf import _ZERO, LeafRunner, settle
from taskloom.sdk._engine.services import RunServices
from taskloom.sdk._engine.waiting import WAITING, rejected, rejection, wait_or_resolve
from taskloom.sdk._engine.window import DEFAULT_LIMIT, CheckpointWindow
from taskloom.sdk._pipeline.plan import NodeKind, NodePlan, Plan
from taskloom.sdk._pipeline.template import Scope, TemplateRenderError

_CONTINUED: Any = object()
"""Returned by a map that failed as a whole under ``on_error: continue`` (already recorded)."""


def _subtree_ids(node: NodePlan) -> set[str]:
    ids = {node.id}
    for child in node.children:
        ids |= _subtree_ids(child)
    return ids


def trusted_checkpoints(
    plan: Plan, finished: Mapping[tuple[str, int | None], Any]
) -> Mapping[tuple[str, int | None], Any]:
    """The checkpoints a resume may restore: none of a step that needs a step not done.

    The engine never stores a step's checkpoint without those of its needs (writes
    are ordered, and a run's later checkpoints are refused after a lost one). A store
    that did anyway -- an adapter whose commits are not atomic, a record deleted by
    hand -- would have the resume skip work built on an output that runs again (and
    may come out different). So a step counts as done only when everything it needs
    is done, and the finished items or children of a step whose needs are not all
    done are dropped too: all of that runs again.
    """
    if not finished:
        return finished  # a fresh run: nothing to check
    nodes = plan.nodes
    done = {node.id for node in nodes if (node.id, None) in finished}
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.id in done and any(dep not in done for dep in node.deps):
                done.discard(node.id)
                changed = True
    stale: set[str] = set()
    for node in nodes:
        if node.id not in done and any(dep not in done for dep in node.deps):
            stale |= _subtree_ids(node)
    if not stale:
        return finished
    return {key: record for key, record in finished.items() if key[0] not in stale}


def widest(nodes: list[NodePlan] | tuple[NodePlan, ...]) -> int:
    """The most leaves one of ``nodes`` can have in flight at once (a map's concurrency
    times its body's width, a parallel group's members together, a leaf one)."""

    def width(node: NodePlan) -> int:
        if node.kind == "map":
            return max(1, node.concurrency) * max((width(c) for c in node.children), default=1)
        if node.kind == "parallel":
            return sum(width(c) for c in node.children) or 1
        return 1

    return max((width(n) for n in nodes), default=1)


_LEAVES: frozenset[NodeKind] = frozenset(get_args(NodeKind)) - {"input", "parallel", "map"}
"""The kinds ``run_node`` runs as a leaf (an LLM call or a plugin step)."""


class RunExecution(LeafRunner):
    """The mutable state of one run while it runs; the engine builds and drives it."""

    def __init__(
        self,
        *,
        run_id: str,
        plan: Plan,
        inputs: Mapping[str, Any],
        services: RunServices,
        finished: Mapping[tuple[str, int | None], Any],
        emit: Callable[[Event], None],
        item_starts_seen: Callable[[], bool] | None = None,
        spent: tuple[Usage, Mapping[str, Usage]] | None = None,
        waiting_since: Mapping[str, float] | None = None,
    ) -> None:
        """``spent``: what earlier processes spent on the run (``_runs.spend``), total and by
        executor; without it the usage starts from the checkpoints' usage.
        ``waiting_since``: the input steps an earlier drive waited at, and since when."""
        super().__init__(
            run_id=run_id, services=services, emit=emit, item_starts_seen=item_starts_seen
        )
        self.plan = plan
        self.finished = trusted_checkpoints(plan, finished)
        self.outputs: dict[str, Any] = {}
        self.scope = Scope(inputs, self.outputs)
        self._remaining: dict[str, int] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.budget = plan.pipeline.budget
        if self.window is not None:
            # 256 finished-but-not-durable checkpoints plus every call the pipeline can
            # have in flight at once: a wide map keeps its concurrency (a window of 256
            # alone capped a 500-wide map at 256 calls in flight)
            self.window = CheckpointWindow(DEFAULT_LIMIT + widest(plan.nodes))
        self.waiting_since = waiting_since or {}
        self.waiting: dict[str, float] = {}
        """The input steps this drive stopped at (the run is then recorded ``waiting``)."""
        for record in self.finished.values():
            if spent is None:
                self._account(record.usage, record.executor)
            if record.executor is not None and not record.cached:
                self.calls_started += record.attempts
        if spent is not None:
            self._account_spent(*spent)

    def _account_spent(self, total: Usage, by_executor: Mapping[str, Usage]) -> None:
        """Start from what earlier processes spent (total and by executor id)."""
        rest = [total.prompt_tokens, total.completion_tokens]
        for executor_id, usage in by_executor.items():
            self._account(usage, executor_id)
            rest[0] -= usage.prompt_tokens
            rest[1] -= usage.completion_tokens
        if rest[0] > 0 or rest[1] > 0:  # spent by steps of no known executor (plugins)
            self._account(
                Usage(prompt_tokens=max(rest[0], 0), completion_tokens=max(rest[1], 0)), None
            )

    # --- scheduling ----------------------------------------------------------

    async def run_graph(self) -> None:
        """Run every unfinished top-level step, each as soon as its dependencies finished."""
        done: set[str] = set()
        for node in self.plan.nodes if self.finished else ():  # (a fresh run: none done)
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
        for node in self.plan.nodes if done else ():
            if node.kind == "input" and node.id in done:
                comment = rejected(node, self.outputs.get(node.id))
                if comment is not None:  # a rejected approval fails the run
                    raise rejection(self, node, comment)
        ready: list[NodePlan] = []
        for node in self.plan.nodes:
            if node.id in done:
                continue
            count = sum(1 for dep in node.deps if dep not in done) if done else len(node.deps)
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
        finished, outputs = self.finished, self.outputs
        while node is not None:
            if node.kind in _LEAVES and (node.id, None) not in finished:
                # run_node's leaf case, without a coroutine of its own per step
                outputs[node.id] = await self.run_leaf(node, self.scope, step_id=node.id, item=None)
            else:
                await self.run_node(node, self.scope)
            if node.id in self.waiting:
                return  # what needs it waits for its value (a later drive runs it)
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
        if node.kind == "input":
            output = await wait_or_resolve(
                self, node, scope, self.waiting, self.waiting_since.get(node.id)
            )
            if output is WAITING:
                return None
            self.outputs[node.id] = output
            return output
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
        await settle(
            self._queue_checkpoint(node.id, None, output, attempts=1, usage=_ZERO, started=None)
        )
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
            # each worker waits for its item's checkpoint (durability="sync") or takes a
            # slot of the run's window before its call ("async"): see _engine.window
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
