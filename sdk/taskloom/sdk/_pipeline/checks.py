"""The semantic checks of a pipeline and the checking of the inputs given to a run.

Called by ``validate`` after structuring. ``steps`` may hold raw dicts where a
step failed to structure: their ids still count (so a reference to them is not
reported twice) but their insides are not checked again.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from taskloom.contracts import (
    APPROVAL_SCHEMA,
    ApprovalStep,
    InputSpec,
    InputStep,
    LLMStep,
    MapStep,
    ParallelStep,
    PipelineInvalid,
    PluginStep,
    Problem,
    StepDefaults,
)
from taskloom.sdk._pipeline import graph as _graph
from taskloom.sdk._pipeline.replyschema import check, schema_problems
from taskloom.sdk._pipeline.template import Ref, TemplateSyntaxError, parse, refs

_RESERVED_LOCALS = frozenset({"inputs", "steps", "index"})
_STEPS = (LLMStep, PluginStep, ParallelStep, MapStep, InputStep, ApprovalStep)
"""Structured steps; anything else in a step list is raw data that failed to structure."""
_NONE: frozenset[str] = frozenset()


class _Visible:
    """The steps certain to have finished before one step starts (``name in visible``).

    ``mask`` is the step's ancestor bit mask (``None``: everything is visible, as for
    the pipeline's output); a step inside a parallel group counts as its group.
    """

    __slots__ = ("_groups", "_mask", "_position")

    def __init__(self, mask: int | None, position: dict[str, int], groups: dict[str, str]) -> None:
        self._mask = mask
        self._position = position
        self._groups = groups

    def __contains__(self, name: object) -> bool:
        if self._mask is None:
            return True
        top = self._groups.get(name, name) if isinstance(name, str) else name
        index = self._position.get(top) if isinstance(top, str) else None
        return index is not None and bool((self._mask >> index) & 1)


def _step_id(step: Any) -> str | None:
    if isinstance(step, _STEPS):
        return step.id
    found = step.get("id") if isinstance(step, Mapping) else None
    return found if isinstance(found, str) else None


def _inner(step: Any, path: str) -> Iterator[tuple[Any, str]]:
    """The steps nested in a parallel group (recursively), with their paths."""
    if isinstance(step, ParallelStep):
        for index, inner in enumerate(step.parallel):
            ipath = f"{path}.parallel[{index}]"
            yield inner, ipath
            yield from _inner(inner, ipath)


def _suggest(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


class _Checker:
    def __init__(
        self,
        *,
        declared_inputs: Mapping[str, InputSpec],
        defaults: StepDefaults,
        executor_ids: list[str],
        default_executor: str | None,
        plugin_steps: Collection[str],
    ) -> None:
        self.problems: list[Problem] = []
        self.inputs = declared_inputs
        self.defaults = defaults
        self.executor_ids = executor_ids
        self.default_executor = default_executor
        self.plugin_steps = plugin_steps
        self.all_ids: set[str] = set()
        self.group_of: dict[str, str] = {}  # inner id -> top-level group id
        self.body_ids: dict[str, str] = {}  # map body id -> map id

    def add(self, path: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(path=path, message=message, hint=hint))

    # --- templates -----------------------------------------------------------

    def templates(
        self, value: Any, path: str, *, visible: _Visible, local_names: frozenset[str]
    ) -> None:
        try:
            found = list(refs(value))
        except TemplateSyntaxError as exc:
            self.add(path, f"bad template: {exc.message}", exc.hint)
            return
        for suffix, ref in found:
            self.reference(ref, path + suffix, visible=visible, local_names=local_names)

    def reference(
        self, ref: Ref, path: str, *, visible: _Visible, local_names: frozenset[str]
    ) -> None:
        where = f"{{{{{ref.source}}}}}"
        if ref.kind == "inputs":
            if ref.name not in self.inputs:
                hint = _suggest(ref.name, self.inputs) or (
                    f'declare it under "inputs" (declared: {", ".join(self.inputs) or "none"})'
                )
                self.add(path, f"{where} names an undeclared input {ref.name!r}", hint)
        elif ref.kind == "steps":
            if ref.name not in self.all_ids:
                hint = _suggest(ref.name, self.all_ids)
                if ref.name in self.body_ids:
                    hint = f"it is the body of map {self.body_ids[ref.name]!r}: refer to the map"
                self.add(path, f"{where} refers to an unknown step {ref.name!r}", hint)
            elif ref.name not in visible:
                self.add(
                    path,
                    f"{where} refers to step {ref.name!r}, which is not certain to have "
                    "finished before this one starts",
                    f'add {self.group_of.get(ref.name, ref.name)!r} to this step\'s "needs" '
                    "or move the step after it",
                )
        elif ref.name not in local_names:
            if local_names:
                hint = f"inside this map use {', '.join(sorted(local_names))}"
            else:
                hint = (
                    "item and index exist only inside a map's step; elsewhere use inputs.x "
                    "or steps.id.output"
                )
            self.add(path, f"{where}: unknown template root {ref.name!r}", hint)

    # --- steps ---------------------------------------------------------------

    def step(self, step: Any, path: str, *, visible: _Visible, inner: bool) -> None:
        if not isinstance(step, _STEPS):
            return  # a raw value whose structuring failed: already reported
        if inner and step.needs is not None:
            self.add(
                f"{path}.needs",
                "a step inside a parallel group or a map cannot have 'needs'",
                "put 'needs' on the group or the map instead",
            )
        if isinstance(step, LLMStep):
            self.llm(step, path, visible=visible, local_names=_NONE)
        elif isinstance(step, PluginStep):
            self.plugin(step, path, visible=visible, local_names=_NONE)
        elif isinstance(step, InputStep | ApprovalStep):
            self.waiting(step, path, visible=visible, inner=inner)
        elif isinstance(step, ParallelStep):
            if not step.parallel:
                self.add(f"{path}.parallel", "a parallel group needs at least one step")
            for index, child in enumerate(step.parallel):
                self.step(child, f"{path}.parallel[{index}]", visible=visible, inner=True)
        else:
            self.map(step, path, visible=visible)

    def waiting(
        self, step: InputStep | ApprovalStep, path: str, *, visible: _Visible, inner: bool
    ) -> None:
        """An input or approval step: a top-level step, a valid schema, a default that fits."""
        kind = "input" if isinstance(step, InputStep) else "approval"
        if inner:
            self.add(
                path,
                f"an {kind} step cannot be inside a parallel group (the run waits at it)",
                "make it a top-level step; 'needs' lets other steps go on while it waits",
            )
        if isinstance(step, InputStep):
            request_prompt, schema = step.input.prompt, step.input.schema
        else:
            request_prompt, schema = step.approval.prompt, APPROVAL_SCHEMA
        self.templates(request_prompt, f"{path}.{kind}.prompt", visible=visible, local_names=_NONE)
        schema_ok = True
        if isinstance(step, InputStep) and schema is not None:
            for where, reason in schema_problems(schema):
                schema_ok = False
                self.add(
                    f"{path}.input.schema{where}",
                    f"not a valid JSON Schema (2020-12): {reason}",
                    "fix the schema; Pydantic's model_json_schema() output is valid",
                )
        if step.on_timeout == "default":
            if step.timeout_s is None:
                self.add(
                    f"{path}.on_timeout",
                    "on_timeout: default applies only with a timeout_s",
                    "set timeout_s, or drop on_timeout",
                )
            if schema is not None and schema_ok:
                for problem in check(step.default, schema):
                    self.add(
                        f"{path}.default",
                        f"the default does not match the {kind} schema: {problem}",
                        "give a default the schema accepts",
                    )

    def map(self, step: MapStep, path: str, *, visible: _Visible) -> None:
        try:
            pieces = parse(step.map)
        except TemplateSyntaxError as exc:
            self.add(f"{path}.map", f"bad template: {exc.message}", exc.hint)
            pieces = []
        else:
            if len(pieces) != 1 or not isinstance(pieces[0], Ref):
                self.add(
                    f"{path}.map",
                    f"'map' must be exactly one reference to a list, got {step.map!r}",
                    'write for example "map": "{{inputs.documents}}"',
                )
            else:
                ref = pieces[0]
                self.reference(ref, f"{path}.map", visible=visible, local_names=_NONE)
                spec = self.inputs.get(ref.name) if ref.kind == "inputs" else None
                if spec is not None and not ref.path and spec.type != "array":
                    self.add(
                        f"{path}.map",
                        f"'map' refers to input {ref.name!r} of type {spec.type}, not a list",
                        'declare the input with "type": "array"',
                    )
        if step.as_ in _RESERVED_LOCALS:
            self.add(f"{path}.as", f"'as' cannot be {step.as_!r}", "choose another name")
        local_names = frozenset({step.as_, "index"})
        body = step.step
        if body.needs is not None:
            self.add(f"{path}.step.needs", "a map's step cannot have 'needs'", "put it on the map")
        if isinstance(body, LLMStep):
            self.llm(body, f"{path}.step", visible=visible, local_names=local_names)
        else:
            self.plugin(body, f"{path}.step", visible=visible, local_names=local_names)

    def llm(
        self, step: LLMStep, path: str, *, visible: _Visible, local_names: frozenset[str]
    ) -> None:
        if step.prompt is not None and step.messages is not None:
            self.add(
                path,
                "an LLM step has either 'prompt' or 'messages', not both",
                "put the prompt as the last user message",
            )
        if step.prompt is None and step.messages is None:
            self.add(path, "an LLM step needs 'prompt' or 'messages'")
        for name in ("prompt", "system"):
            value = getattr(step, name)
            if value is not None:
                self.templates(value, f"{path}.{name}", visible=visible, local_names=local_names)
        for index, message in enumerate(step.messages or ()):
            self.templates(
                message.content,
                f"{path}.messages[{index}].content",
                visible=visible,
                local_names=local_names,
            )
        wants_json = step.response_format is not None and step.response_format.type == "json"
        if step.extract_json and not wants_json:
            self.add(
                f"{path}.extract_json",
                "extract_json applies to JSON steps only: a text step's output is its reply",
                'set response_format: {"type": "json"} or drop extract_json',
            )
        if step.on_truncated == "fail" and wants_json:
            self.add(
                f"{path}.on_truncated",
                "a JSON step always fails when its reply is cut off: on_truncated is for "
                "text steps",
                "drop on_truncated",
            )
        schema = step.response_format.json_schema if step.response_format else None
        if schema is not None:
            for where, reason in schema_problems(schema):
                self.add(
                    f"{path}.response_format.json_schema{where}",
                    f"not a valid JSON Schema (2020-12): {reason}",
                    "fix the schema; Pydantic's model_json_schema() output is valid",
                )
        executor = step.executor or self.defaults.executor or self.default_executor
        if executor is None:
            self.add(
                f"{path}.executor",
                "no executor for this LLM step",
                "register an executor, or set 'executor' here or in 'defaults'",
            )
        elif executor not in self.executor_ids:
            where = f"{path}.executor" if step.executor else "$.defaults.executor"
            known = ", ".join(self.executor_ids) or "none registered"
            self.add(where, f"unknown executor {executor!r}", f"known executors: {known}")

    def plugin(
        self, step: PluginStep, path: str, *, visible: _Visible, local_names: frozenset[str]
    ) -> None:
        if step.uses not in self.plugin_steps:
            known = ", ".join(sorted(self.plugin_steps)) or "none registered"
            self.add(
                f"{path}.uses",
                f"unknown plugin step {step.uses!r}",
                f"registered plugin steps: {known}",
            )
        self.templates(step.with_, f"{path}.with", visible=visible, local_names=local_names)


def check_semantics(
    steps: list[Any],
    *,
    declared_inputs: Mapping[str, InputSpec],
    defaults: StepDefaults,
    output: Any,
    executor_ids: list[str],
    default_executor: str | None,
    plugin_steps: Collection[str],
) -> list[Problem]:
    """Every semantic problem of ``steps`` (structured, or raw where structuring failed)."""
    c = _Checker(
        declared_inputs=declared_inputs,
        defaults=defaults,
        executor_ids=executor_ids,
        default_executor=default_executor,
        plugin_steps=plugin_steps,
    )
    top_ids: list[str] = []
    for index, step in enumerate(steps):
        path = f"$.steps[{index}]"
        for candidate, cpath in [(step, path), *_inner(step, path)]:
            sid = _step_id(candidate)
            if sid is None:
                continue
            if sid in c.all_ids:
                c.add(f"{cpath}.id", f"duplicate step id {sid!r}", "give every step its own id")
            c.all_ids.add(sid)
            if candidate is not step:
                c.group_of[sid] = _step_id(step) or sid
        if isinstance(step, MapStep):
            c.body_ids[step.step.id] = step.id
        top_ids.append(_step_id(step) or f"#{index}")
    needs: list[tuple[str, ...] | None] = []
    top_set = set(top_ids)
    for index, step in enumerate(steps):
        named = step.needs if isinstance(step, _STEPS) else None
        for pos, name in enumerate(named or ()):
            if name not in top_set:
                hint = _suggest(name, top_ids)
                if name in c.group_of:
                    hint = f"it is inside group {c.group_of[name]!r}: name the group"
                c.add(
                    f"$.steps[{index}].needs[{pos}]", f"'needs' names unknown step {name!r}", hint
                )
        needs.append(named)
    first_at: dict[str, int] = {}
    for i, sid in enumerate(top_ids):
        first_at.setdefault(sid, i)
    graph_ids = [sid if first_at[sid] == i else f"{sid}#{i}" for i, sid in enumerate(top_ids)]
    deps = _graph.dependencies(graph_ids, needs)
    cycle = _graph.find_cycle(graph_ids, deps)
    if cycle is not None:
        at = graph_ids.index(cycle[0])
        c.add(
            f"$.steps[{at}].needs",
            "'needs' makes a cycle: " + " -> ".join(cycle),
            "remove one of these needs",
        )
    masks = _graph.ancestor_masks(graph_ids, deps) if cycle is None else None
    position = {sid: i for i, sid in enumerate(graph_ids)}
    for index, step in enumerate(steps):
        # With a cycle, "finished before" is meaningless: only the other checks apply.
        mask = masks[index] if masks is not None else None
        c.step(step, f"$.steps[{index}]", visible=_Visible(mask, position, c.group_of), inner=False)
    c.templates(output, "$.output", visible=_Visible(None, position, c.group_of), local_names=_NONE)
    return c.problems


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list, tuple),
}


MAX_INPUT_DEPTH = 256
"""Deepest nesting of lists and objects an input value may have."""
_MAX_INT = 10**4300
"""Python's JSON cannot write an integer of more than 4,300 digits."""


_PLAIN = "use text, numbers, true/false, null, lists and objects"


def unfit_json(value: Any, path: str = "$", *, most: int = 20) -> list[tuple[str, str, str]]:
    """Where and why ``value`` cannot be stored and sent as JSON: (path, reason, hint).

    Checked without recursion (a value may be nested thousands of levels deep):
    NaN and infinities, integers of more than 4,300 digits, lone surrogates in
    strings or keys, keys that are not text, non-JSON types, nesting deeper than
    ``MAX_INPUT_DEPTH``. At most ``most`` are returned.
    """
    found: list[tuple[str, str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack and len(found) < most:
        item, where, depth = stack.pop()
        if depth > MAX_INPUT_DEPTH:
            found.append((where, f"it nests more than {MAX_INPUT_DEPTH} levels deep", "flatten it"))
            continue
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -_MAX_INT < item < _MAX_INT:
                reason = "an integer of more than 4,300 digits"
                found.append((where, reason, "write it as a string"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                found.append((where, f"{item!r} is not a JSON number", "use a number"))
        elif isinstance(item, str):
            if not _valid_text(item):
                reason = "text that is not valid Unicode (a lone surrogate)"
                found.append((where, reason, "use valid Unicode text"))
        elif isinstance(item, list | tuple):
            shallow = depth < MAX_INPUT_DEPTH  # (a child deeper than that is reported)
            for index in range(len(item) - 1, -1, -1):
                child = item[index]
                if shallow and _plain_scalar(child):
                    continue  # nothing to report: no path to build (a map's 10,000 items)
                stack.append((child, f"{where}[{index}]", depth + 1))
        elif isinstance(item, Mapping):
            shallow = depth < MAX_INPUT_DEPTH
            for key, child in reversed(list(item.items())):
                if not isinstance(key, str):
                    found.append((where, f"an object key that is not text ({key!r})", _PLAIN))
                elif not _valid_text(key):
                    reason = "an object key that is not valid Unicode (a lone surrogate)"
                    found.append((where, reason, "use valid Unicode text"))
                elif not (shallow and _plain_scalar(child)):
                    name = f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]"
                    stack.append((child, name, depth + 1))
        else:
            found.append((where, f"a {type(item).__name__} is not JSON data", _PLAIN))
    return found


def json_value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored and sent as JSON (the first reason), or None."""
    found = unfit_json(value, most=1)
    if not found:
        return None
    where, reason, _hint = found[0]
    return reason if where == "$" else f"{reason} (at {where})"


def _plain_scalar(value: Any) -> bool:
    """Whether ``unfit_json`` finds nothing to report in ``value`` (at an allowed depth):
    None, a bool, an int within 4,300 digits, a finite float, valid text -- of exactly
    those types (a subclass takes the full check)."""
    kind = type(value)
    if kind is str:
        return value.isascii() or _valid_text(value)
    if kind is int:
        return bool(-_MAX_INT < value < _MAX_INT)
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is bool


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inputs_object(inputs: object) -> dict[str, Any]:
    """The inputs given to a run as a dict; PipelineInvalid if they are not a JSON object.

    ``None`` is no inputs. Keys must be text (input names).
    """
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise PipelineInvalid(
            [
                Problem(
                    path="inputs",
                    message=f"inputs must be a JSON object, got {type(inputs).__name__}",
                    hint='pass names and values, e.g. {"doc": "text"}',
                )
            ]
        )
    bad = [key for key in inputs if not isinstance(key, str)]
    if bad:
        raise PipelineInvalid(
            [
                Problem(
                    path="inputs",
                    message=f"input names must be text, got {bad[0]!r}",
                    hint="name each input as the pipeline declares it",
                )
            ]
        )
    return dict(inputs)


def resolve_inputs(
    declared: Mapping[str, InputSpec], given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Problem]]:
    """Apply defaults and check the given inputs; return them with any problems."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for name in given:
        if name not in declared:
            hint = _suggest(name, declared) or f"declared inputs: {', '.join(declared) or 'none'}"
            problems.append(
                Problem(path=f"inputs.{name}", message=f"unknown input {name!r}", hint=hint)
            )
    for name, spec in declared.items():
        if name in given:
            value = given[name]
            expected = _JSON_TYPES[spec.type]
            bad_bool = isinstance(value, bool) and spec.type != "boolean"
            unfit = (
                None if bad_bool or not isinstance(value, expected) else (json_value_problem(value))
            )
            if bad_bool or not isinstance(value, expected):
                problems.append(
                    Problem(
                        path=f"inputs.{name}",
                        message=f"input {name!r} must be of type {spec.type}, "
                        f"got {type(value).__name__}",
                        hint=spec.description or f"pass a JSON {spec.type}",
                    )
                )
            elif unfit is not None:
                problems.append(
                    Problem(
                        path=f"inputs.{name}",
                        message=f"input {name!r} is not valid JSON: {unfit}",
                        hint="pass plain JSON: finite numbers, valid Unicode text",
                    )
                )
            values[name] = list(value) if isinstance(value, tuple) else value
        elif spec.default is not None or not spec.required:
            values[name] = spec.default
        else:
            problems.append(
                Problem(
                    path=f"inputs.{name}",
                    message=f"missing required input {name!r}",
                    hint=spec.description or f"pass it, for example -i {name}=...",
                )
            )
    return values, problems
