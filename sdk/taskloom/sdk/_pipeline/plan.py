"""A validated pipeline compiled for running: settings resolved, templates compiled, graph built.

Compiling once per pipeline (the engine caches plans) keeps the hot path free of
re-parsing templates, re-resolving defaults and re-walking the graph: running a
step is then a few dict lookups, the executor call and the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from taskloom.contracts import (
    APPROVAL_SCHEMA,
    ApprovalStep,
    InputStep,
    LLMStep,
    MapStep,
    Message,
    ParallelStep,
    Pipeline,
    PluginStep,
    ResponseFormat,
    RetryPolicy,
    Step,
)
from taskloom.sdk._pipeline import graph as _graph
from taskloom.sdk._pipeline.replyschema import ReplySchema
from taskloom.sdk._pipeline.template import Renderer, Scope, compile_json, compile_text, to_text

NodeKind = Literal["llm", "plugin", "parallel", "map", "input"]
_NO_RETRY_SET = RetryPolicy()


class NodePlan:
    """One step, compiled. Leaves (llm, plugin) call something; groups and maps hold leaves."""

    __slots__ = (
        "approval",
        "as_name",
        "cache",
        "cache_nondeterministic",
        "cache_ttl_s",
        "children",
        "concurrency",
        "deadline_s",
        "dependents",
        "deps",
        "executor_id",
        "extract_json",
        "id",
        "input_default",
        "input_prompt",
        "input_schema",
        "kind",
        "map_render",
        "messages",
        "on_error",
        "on_timeout",
        "on_truncated",
        "reply_schema",
        "request_fields",
        "response_format",
        "retry",
        "step",
        "stream",
        "timeout_s",
        "uses",
        "wants_json",
        "with_render",
    )

    def __init__(self, step: Step, kind: NodeKind) -> None:
        self.step = step
        self.id = step.id
        self.kind = kind
        self.deps: list[str] = []
        self.dependents: list[NodePlan] = []
        self.children: list[NodePlan] = []
        self.on_error = "fail"
        self.retry = _NO_RETRY_SET
        self.timeout_s: float | None = None
        self.deadline_s: float | None = None
        self.executor_id: str | None = None
        self.messages: list[tuple[str, Renderer, str | None, str | None]] = []
        self.request_fields: dict[str, Any] = {}
        self.response_format: ResponseFormat | None = None
        self.wants_json = False
        self.reply_schema: ReplySchema | None = None
        self.extract_json = False
        self.on_truncated = "continue"
        self.stream = False
        self.cache = False
        self.cache_ttl_s: float | None = None
        self.cache_nondeterministic = False
        self.uses = ""
        self.with_render: Renderer | None = None
        self.map_render: Renderer | None = None
        self.as_name = "item"
        self.concurrency = 1
        # input and approval steps (kind "input"); timeout_s is how long it may wait
        self.approval = False
        self.input_prompt: Renderer | None = None
        self.input_schema: dict[str, Any] | None = None
        self.on_timeout = "fail"
        self.input_default: Any = None


class Plan:
    """The compiled pipeline: top-level nodes in order, every node by id, the output."""

    def __init__(
        self,
        pipeline: Pipeline,
        nodes: list[NodePlan],
        output: Callable[[Scope], Any] | None,
        digest: str,
        stored_pipeline: dict[str, Any],
    ) -> None:
        self.pipeline = pipeline
        self.stored_pipeline = stored_pipeline
        """The pipeline as run records keep it (``compact_pipeline``)."""
        self.nodes = nodes
        self.by_id: dict[str, NodePlan] = {}
        self.output = output
        self.digest = digest
        for node in nodes:
            self._index(node)

    def _index(self, node: NodePlan) -> None:
        self.by_id[node.id] = node
        if node.kind == "parallel":
            for child in node.children:
                self._index(child)


class Compiler:
    """Resolves each step's settings from the step, the pipeline's defaults and the engine."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        default_executor: str | None,
        default_model: Callable[[str], str | None],
        default_retry: RetryPolicy,
    ) -> None:
        self.pipeline = pipeline
        self.defaults = pipeline.defaults
        self.default_executor = default_executor
        self.default_model = default_model
        self.default_retry = default_retry

    def compile(self, digest: str, stored_pipeline: dict[str, Any]) -> Plan:
        nodes = [self.node(step, parent_on_error=None) for step in self.pipeline.steps]
        ids = [n.id for n in nodes]
        deps = _graph.dependencies(ids, [s.needs for s in self.pipeline.steps])
        by_id = {n.id: n for n in nodes}
        for node, named in zip(nodes, deps, strict=True):
            node.deps = named
            for dep in named:
                by_id[dep].dependents.append(node)
        output = self.pipeline.output
        render = compile_json(output) if output is not None else None
        return Plan(self.pipeline, nodes, render, digest, stored_pipeline)

    def node(self, step: Step, *, parent_on_error: str | None) -> NodePlan:
        d = self.defaults
        on_error = step.on_error or parent_on_error or d.on_error or "fail"
        if isinstance(step, ParallelStep):
            node = NodePlan(step, "parallel")
            node.children = [self.node(child, parent_on_error=None) for child in step.parallel]
        elif isinstance(step, MapStep):
            node = NodePlan(step, "map")
            node.map_render = compile_text(step.map)
            node.as_name = step.as_
            node.concurrency = step.concurrency
            node.children = [self.node(step.step, parent_on_error=on_error)]
        elif isinstance(step, InputStep | ApprovalStep):
            node = NodePlan(step, "input")
            if isinstance(step, InputStep):
                node.input_prompt = compile_text(step.input.prompt)
                node.input_schema = step.input.schema
            else:
                node.approval = True
                node.input_prompt = compile_text(step.approval.prompt)
                node.input_schema = APPROVAL_SCHEMA
            node.timeout_s = step.timeout_s
            node.on_timeout = step.on_timeout
            node.input_default = step.default
        elif isinstance(step, PluginStep):
            node = NodePlan(step, "plugin")
            node.uses = step.uses
            node.with_render = compile_json(step.with_)
            self._runtime(node, step)
        else:
            node = NodePlan(step, "llm")
            self._llm(node, step)
            self._runtime(node, step)
        node.on_error = on_error
        return node

    def _runtime(self, node: NodePlan, step: LLMStep | PluginStep) -> None:
        d = self.defaults
        node.retry = step.retry or d.retry or self.default_retry
        node.timeout_s = step.timeout_s if step.timeout_s is not None else d.timeout_s
        node.deadline_s = step.deadline_s if step.deadline_s is not None else d.deadline_s

    def _llm(self, node: NodePlan, step: LLMStep) -> None:
        d = self.defaults
        executor_id = step.executor or d.executor or self.default_executor
        assert executor_id is not None, "validation guarantees an executor"
        node.executor_id = executor_id
        if step.system is not None:
            node.messages.append(("system", compile_text(step.system), None, None))
        if step.messages is not None:
            for m in step.messages:
                node.messages.append((m.role, compile_text(m.content), m.name, m.tool_call_id))
        if step.prompt is not None:
            node.messages.append(("user", compile_text(step.prompt), None, None))
        node.request_fields = {
            "model": step.model or d.model or self.default_model(executor_id),
            "temperature": step.temperature if step.temperature is not None else d.temperature,
            "top_p": step.top_p,
            "max_tokens": step.max_tokens if step.max_tokens is not None else d.max_tokens,
            "stop": step.stop,
            "seed": step.seed,
            "response_format": step.response_format,
        }
        node.response_format = step.response_format
        node.wants_json = step.response_format is not None and step.response_format.type == "json"
        schema = step.response_format.json_schema if step.response_format else None
        node.reply_schema = ReplySchema(schema) if node.wants_json and schema is not None else None
        node.extract_json = step.extract_json
        node.on_truncated = step.on_truncated
        node.stream = step.stream
        node.cache = step.cache if step.cache is not None else bool(d.cache)
        node.cache_ttl_s = d.cache_ttl_s
        node.cache_nondeterministic = bool(d.cache_nondeterministic)


def render_messages(node: NodePlan, scope: Scope) -> tuple[Message, ...]:
    """The request's messages for one call (templates rendered as text)."""
    out = []
    for role, render, name, tool_call_id in node.messages:
        value = render(scope)
        text = value if isinstance(value, str) else _text(value)
        out.append(
            Message(role=role, content=text, name=name, tool_call_id=tool_call_id)  # type: ignore[arg-type]
        )
    return tuple(out)


def _text(value: Any) -> str:
    return to_text(value)
