"""Properties of the engine over random pipelines: same outputs as a sequential reference for
any concurrency, dependencies respected, invalid pipelines rejected before any call."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from engine_support import FakeExecutor, leftover_tasks, make_engine
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import PipelineInvalid, StepStarted, StepSucceeded
from taskloom.sdk._engine.steps import RunExecution

ITEMS = ["x", "y", "z", "w"]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


@st.composite
def dag_pipelines(draw: st.DrawFn) -> dict[str, Any]:
    """A random valid pipeline: LLM steps, maps and parallel groups wired by `needs`."""
    count = draw(st.integers(1, 7))
    steps: list[dict[str, Any]] = []
    ancestors: list[set[str]] = []
    deps: list[list[str]] = []
    for i in range(count):
        sid = f"s{i}"
        if i == 0 or draw(st.booleans()):
            needs = None
            direct = [f"s{i - 1}"] if i > 0 else []
        else:
            direct = sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]))))
            needs = direct
        seen: set[str] = set(direct)
        for d in direct:
            seen |= ancestors[int(d[1:])]
        ancestors.append(seen)
        deps.append(direct)
        refs = draw(st.lists(st.sampled_from(sorted(seen)), max_size=2)) if seen else []
        ref_text = " ".join(f"{{{{steps.{r}.output}}}}" for r in refs)
        kind = draw(st.sampled_from(["llm", "llm", "map", "parallel"]))
        if kind == "llm":
            step: dict[str, Any] = {"id": sid, "prompt": f"{sid} {ref_text}"}
        elif kind == "map":
            step = {
                "id": sid,
                "map": "{{inputs.items}}",
                "concurrency": draw(st.integers(1, 4)),
                "step": {
                    "id": f"{sid}b",
                    "prompt": f"{sid}[{{{{index}}}}]={{{{item}}}} {ref_text}",
                },
            }
        else:
            step = {
                "id": sid,
                "parallel": [
                    {"id": f"{sid}p{k}", "prompt": f"{sid}p{k} {ref_text}"}
                    for k in range(draw(st.integers(1, 3)))
                ],
            }
        if needs is not None:
            step["needs"] = needs
        steps.append(step)
    return {
        "taskloom": "pipeline/v1",
        "name": "random",
        "inputs": {"items": {"type": "array", "default": ITEMS[: draw(st.integers(0, 4))]}},
        "steps": steps,
        "output": {s["id"]: f"{{{{steps.{s['id']}.output}}}}" for s in steps},
        "_deps": deps,
    }


def reference(pipe: dict[str, Any]) -> dict[str, Any]:
    """A plain sequential interpreter of the same pipelines (list order is a topological order)."""
    outputs: dict[str, Any] = {}
    items = pipe["inputs"]["items"]["default"]

    def render(text: str, local: dict[str, Any]) -> str:
        for sid, value in outputs.items():
            text = text.replace(f"{{{{steps.{sid}.output}}}}", _text(value))
        for name, value in local.items():
            text = text.replace(f"{{{{{name}}}}}", _text(value))
        return text

    for step in pipe["steps"]:
        if "prompt" in step:
            outputs[step["id"]] = "None|" + render(step["prompt"], {})
        elif "map" in step:
            outputs[step["id"]] = [
                "None|" + render(step["step"]["prompt"], {"item": item, "index": i})
                for i, item in enumerate(items)
            ]
        else:
            group = {p["id"]: "None|" + render(p["prompt"], {}) for p in step["parallel"]}
            outputs.update(group)
            outputs[step["id"]] = group
    return {s["id"]: outputs[s["id"]] for s in pipe["steps"]}


def _owner(step_id: str) -> str:
    """The top-level step a leaf event belongs to (parallel children are s<i>p<k>)."""
    return step_id.split("p")[0]


def order_violations(events: list[Any], deps: list[list[str]]) -> list[tuple[str, str]]:
    """(step, dependency) pairs where the step started before the dependency succeeded."""
    first_start: dict[str, int] = {}
    last_success: dict[str, int] = {}
    for pos, event in enumerate(events):
        if isinstance(event, StepStarted):
            first_start.setdefault(_owner(event.step_id), pos)
        elif isinstance(event, StepSucceeded):
            last_success[_owner(event.step_id)] = pos
    bad = []
    for index, direct in enumerate(deps):
        sid = f"s{index}"
        if sid not in first_start:
            continue  # a map over no items starts nothing
        for dep in direct:
            if dep in last_success and last_success[dep] > first_start[sid]:
                bad.append((sid, dep))
    return bad


@settings(max_examples=40)
@given(pipe=dag_pipelines(), limit=st.sampled_from([None, 1, 2, 3, 8]))
def test_random_dags_match_sequential_reference_and_respect_dependencies(
    pipe: dict[str, Any], limit: int | None
) -> None:
    """Outputs equal the sequential reference for any concurrency limit, and no step starts
    before every step it depends on has succeeded."""
    deps = pipe.pop("_deps")
    expected = reference(pipe)

    async def scenario() -> None:
        engine, _ = make_engine(FakeExecutor(), max_concurrency=limit)
        async with engine:
            handle = engine.start(pipe)
            result = await handle.result()
            events = [e async for e in handle.events()]
        assert result.output == expected
        assert order_violations(events, deps) == []
        assert await leftover_tasks() == []

    asyncio.run(scenario())


MUTATIONS = [
    "duplicate",
    "unknown_ref",
    "later_ref",
    "unknown_field",
    "unknown_executor",
    "cycle",
    "bad_template",
    "unknown_need",
    "missing_input",
    "wrong_input",
]


def mutate(pipe: dict[str, Any], kind: str, i: int) -> tuple[dict[str, Any], str, str]:
    """Break ``pipe`` in one way; return it with the expected problem path prefix and text."""
    pipe = copy.deepcopy(pipe)
    steps = pipe["steps"]
    n = len(steps)
    i = i % n
    target = steps[i]
    if kind == "duplicate" and n > 1:
        j = (i + 1) % n
        steps[j]["id"] = steps[(j + 1) % n]["id"] if n > 2 else steps[i]["id"]
        return pipe, "$.steps[", "duplicate step id"
    if kind == "later_ref" and i < n - 1:
        steps[i] = {"id": target["id"], "prompt": f"{{{{steps.{steps[n - 1]['id']}.output}}}}"}
        if "needs" in target:
            steps[i]["needs"] = target["needs"]
        return pipe, f"$.steps[{i}].prompt", "not certain to have finished"
    if kind == "cycle" and n > 1:
        steps[0]["needs"] = [steps[n - 1]["id"]]
        steps[n - 1]["needs"] = [steps[0]["id"]]
        return pipe, "$.steps[", "cycle"
    if kind == "unknown_field":
        target["promt"] = "typo"
        return pipe, f"$.steps[{i}].promt", "unknown field"
    if kind == "unknown_executor":
        steps[i] = {"id": target["id"], "prompt": "p", "executor": "ghost"}
        return pipe, f"$.steps[{i}].executor", "unknown executor 'ghost'"
    if kind == "bad_template":
        steps[i] = {"id": target["id"], "prompt": "{{ oops"}
        return pipe, f"$.steps[{i}].prompt", "bad template"
    if kind == "unknown_need":
        target["needs"] = ["nowhere"]
        return pipe, f"$.steps[{i}].needs[0]", "unknown step 'nowhere'"
    if kind == "missing_input":
        pipe["inputs"]["needed"] = {"type": "string"}
        return pipe, "inputs.needed", "missing required input"
    if kind == "wrong_input":
        pipe["inputs"]["num"] = {"type": "integer", "default": "seven"}
        return pipe, "inputs.num", "must be of type integer"
    steps[i] = {"id": target["id"], "prompt": "{{steps.ghost.output}}"}
    return pipe, f"$.steps[{i}].prompt", "unknown step 'ghost'"


@settings(max_examples=60)
@given(pipe=dag_pipelines(), kind=st.sampled_from(MUTATIONS), where=st.integers(0, 10))
def test_random_invalid_pipelines_are_rejected_before_anything_runs(
    pipe: dict[str, Any], kind: str, where: int
) -> None:
    """A pipeline broken in any one way is refused with that problem and no executor call."""
    pipe.pop("_deps")
    broken, path, text = mutate(pipe, kind, where)
    inputs = {"num": "seven"} if kind == "wrong_input" else {}

    async def scenario() -> None:
        engine, fake = make_engine(FakeExecutor())
        async with engine:
            try:
                await engine.run(broken, inputs)
            except PipelineInvalid as exc:
                problems = exc.problems
            else:
                raise AssertionError(f"{kind}: the broken pipeline ran")
            runs = await engine.runstore.list_runs()
        assert fake.total_calls == 0
        assert runs == []
        assert any(p.path.startswith(path) and text in p.message for p in problems), (
            kind,
            problems,
        )
        assert all(p.path.startswith(("$", "inputs.")) and p.message for p in problems)

    asyncio.run(scenario())


def test_the_order_check_catches_a_scheduler_that_starts_dependents_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broken scheduler (dependents started with their dependency) fails the order check."""

    async def eager(self: Any, node: Any) -> None:
        assert self._tg is not None
        for dependent in node.dependents:
            self._tg.create_task(self.run_node(dependent, self.scope))
        await self.run_node(node, self.scope)

    monkeypatch.setattr(RunExecution, "_chain", eager)
    pipe = {
        "taskloom": "pipeline/v1",
        "name": "two",
        "steps": [{"id": "s0", "prompt": "a"}, {"id": "s1", "prompt": "b"}],
    }

    async def scenario() -> list[Any]:
        engine, _ = make_engine(FakeExecutor())
        async with engine:
            handle = engine.start(pipe)
            await handle.result()
            return [e async for e in handle.events()]

    events = asyncio.run(scenario())
    assert order_violations(events, [[], ["s0"]]) == [("s1", "s0")]
