"""The storage state machine exercises batches that touch one key several times, in
every example (a default run used to produce none)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from broken_adapters import storage_suite
from broken_storage import WrappedStorage

from taskloom.contracts import Check, CommitResult, Delete, Op, Put


class CountingStorage(WrappedStorage):
    """A working adapter that counts the commits touching one key more than once."""

    commits: ClassVar[list[Sequence[Op]]] = []

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        CountingStorage.commits.append(list(ops))
        return await self.inner.commit(ops)


def _touches_a_key_twice(ops: Sequence[Op], *, with_delete: bool) -> bool:
    kinds: dict[tuple[str, str], list[type]] = {}
    for op in ops:
        if isinstance(op, Put | Delete | Check):
            kinds.setdefault((op.namespace, op.key), []).append(type(op))
    return any(
        len(found) >= 2 and (not with_delete or (Delete in found and Put in found))
        for found in kinds.values()
    )


def test_every_example_commits_a_batch_touching_one_key_twice(tmp_path: Path) -> None:
    """Each example of the machine commits at least one such batch; most put and delete."""
    CountingStorage.commits.clear()
    suite = storage_suite(CountingStorage)
    suite.max_examples = 15  # type: ignore[misc]
    locations: Counter[str] = Counter()
    original = suite.open_storage

    def counting_open(location: Path):  # type: ignore[no-untyped-def]
        locations[str(location)] += 1
        return original(location)

    suite.open_storage = counting_open  # type: ignore[method-assign]
    machine = next(n for n in dir(suite) if n.endswith("_against_model"))
    getattr(suite, machine)(tmp_path)
    examples = len(locations)
    twice = [ops for ops in CountingStorage.commits if _touches_a_key_twice(ops, with_delete=False)]
    put_and_delete = [
        ops for ops in CountingStorage.commits if _touches_a_key_twice(ops, with_delete=True)
    ]
    assert examples >= 10, f"the machine ran only {examples} examples"
    assert len(twice) >= examples, f"{len(twice)} such batches in {examples} examples"
    assert len(put_and_delete) >= examples // 2, (
        f"{len(put_and_delete)} batches put and delete one key in {examples} examples"
    )
