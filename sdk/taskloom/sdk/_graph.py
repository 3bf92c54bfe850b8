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
    graph = {
        step_id: [d for d in ds if d in set(ids)] for step_id, ds in zip(ids, deps, strict=True)
    }
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


def ancestors(ids: Sequence[str], deps: Sequence[Sequence[str]]) -> dict[str, frozenset[str]]:
    """For each id, every id it transitively depends on (the graph must be acyclic)."""
    by_id = dict(zip(ids, deps, strict=True))
    memo: dict[str, frozenset[str]] = {}

    def visit(root: str) -> frozenset[str]:
        stack = [root]
        while stack:
            node = stack[-1]
            if node in memo:
                stack.pop()
                continue
            pending = [d for d in by_id.get(node, ()) if d in by_id and d not in memo]
            if pending:
                stack.extend(pending)
                continue
            found: set[str] = set()
            for d in by_id.get(node, ()):
                if d in by_id:
                    found.add(d)
                    found |= memo[d]
            memo[node] = frozenset(found)
            stack.pop()
        return memo[root]

    return {step_id: visit(step_id) for step_id in ids}
