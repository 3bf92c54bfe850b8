"""The dependency graph of a pipeline's top-level steps.

The rule (also stated in ``taskloom.contracts._pipeline``): a step **without**
``needs`` depends on the step just before it in the list (the first step on
nothing), so a plain list runs in order; a step **with** ``needs`` depends on
exactly the steps it names, and ``"needs": []`` makes it a root. Steps inside a
``parallel`` group and the body of a ``map`` inherit their group's dependencies.

A step may *reference* (``{{steps.x.output}}``) only its ancestors in this graph:
the steps that are certain to have finished before it starts.
"""

from __future__ import annotations

from collections.abc import Sequence


def dependencies(ids: Sequence[str], needs: Sequence[tuple[str, ...] | None]) -> list[list[str]]:
    """For each step (by position) the ids it depends on; unknown names are kept."""
    deps: list[list[str]] = []
    for index, named in enumerate(needs):
        if named is None:
            deps.append([ids[index - 1]] if index > 0 else [])
        else:
            deps.append(list(dict.fromkeys(named)))
    return deps


def find_cycle(ids: Sequence[str], deps: Sequence[Sequence[str]]) -> list[str] | None:
    """One cycle (as a list of ids, first repeated last) if the graph has any."""
    known = set(ids)
    graph = {step_id: [d for d in ds if d in known] for step_id, ds in zip(ids, deps, strict=True)}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in ids:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, pos = stack[-1]
            children = graph[node]
            if pos < len(children):
                stack[-1] = (node, pos + 1)
                child = children[pos]
                mark = state.get(child)
                if mark == 1:
                    return [*path[path.index(child) :], child]
                if not mark:
                    state[child] = 1
                    stack.append((child, 0))
                    path.append(child)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None


def ancestor_masks(ids: Sequence[str], deps: Sequence[Sequence[str]]) -> list[int]:
    """For each step (by position) a bit mask of the positions it transitively depends on.

    Bit masks (Python ints) keep this near-linear in practice: a 10,000-step chain
    needs 10,000 ORs of ints, where sets of ids would copy 50 million entries.
    The graph must be acyclic and ``ids`` unique.
    """
    position = {step_id: index for index, step_id in enumerate(ids)}
    masks: list[int | None] = [None] * len(ids)
    for root in range(len(ids)):
        stack = [root]
        while stack:
            node = stack[-1]
            if masks[node] is not None:
                stack.pop()
                continue
            parents = [position[d] for d in deps[node] if d in position]
            pending = [p for p in parents if masks[p] is None]
            if pending:
                stack.extend(pending)
                continue
            mask = 0
            for parent in parents:
                mask |= masks[parent] | (1 << parent)  # type: ignore[operator]
            masks[node] = mask
            stack.pop()
    return [m or 0 for m in masks]
