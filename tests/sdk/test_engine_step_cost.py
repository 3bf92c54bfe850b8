"""What each chain step costs stays cut without changing what is written or raised.

A chain's checkpoints share one fence check per commit, a step's first attempt is made
without the retry loop's coroutine, and a checkpoint's ``finished_at`` reuses the text
of its StepSucceeded's ``at``; each of these is checked here against what it replaced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.contracts import (
    Append,
    Check,
    CommitResult,
    ConflictError,
    Delete,
    Event,
    LeaseLost,
    Op,
    ProviderUnavailable,
    Put,
    RetryPolicy,
    StepSucceeded,
)
from taskloom.contracts.serde import converter
from taskloom.sdk import Engine, ExecutorRegistry, load_pipeline
from taskloom.sdk._engine import leaf
from taskloom.sdk._engine.retry import call_with_retries
from taskloom.sdk._runs.batch import _Pending, merged
from taskloom.sdk._runs.codec import encode, encode_event
from taskloom.sdk._runs.records import NS_FENCES, NS_STEPS, StepRecord
from taskloom.sdk._runs.store import RunStore


class RecordingStorage(MemoryStorage):
    """A MemoryStorage that keeps the operations of every commit."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Op]] = []

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        self.batches.append(list(ops))
        return await super().commit(ops)


def _step(step_id: str) -> StepRecord:
    return StepRecord(run_id="r1", step_id=step_id, output="x", started_at=1.0, finished_at=2.0)


async def test_one_commit_of_a_runs_checkpoints_checks_its_fence_once() -> None:
    """Five checkpoints of a fenced run queued together commit five Puts and one Check."""
    storage = RecordingStorage()
    store = RunStore(storage)
    await store.acquire_lease("r1", "me", ttl_s=60)
    writes = [store.queue_step(_step(f"s{i}")) for i in range(5)]
    await asyncio.gather(*writes)
    await store.flush()
    (batch,) = [
        b for b in storage.batches if any(getattr(op, "namespace", "") == NS_STEPS for op in b)
    ]
    assert [op.key for op in batch if type(op) is Put] == [f"r1/s{i}/-" for i in range(5)]
    checks = [op for op in batch if type(op) is Check]
    assert len(checks) == 1 and checks[0].namespace == NS_FENCES and checks[0].key == "r1"
    await store.aclose()


async def test_a_merged_batch_of_a_run_that_lost_its_lease_still_fails() -> None:
    """With one check for many checkpoints, a stale holder's checkpoints all fail with the
    lost lease and none is stored, while the new holder's land."""
    storage = MemoryStorage()
    now = [1_000_000.0]
    stale = RunStore(storage, clock=lambda: now[0])
    fresh = RunStore(storage, clock=lambda: now[0])
    await stale.acquire_lease("r1", "stale", ttl_s=10)
    now[0] += 11  # the stale holder froze past its TTL
    await fresh.acquire_lease("r1", "fresh", ttl_s=10)
    writes = [stale.queue_step(_step(f"s{i}")) for i in range(3)]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(r) for r in results] == [LeaseLost] * 3
    await fresh.record_step(_step("t"))
    assert [r.key for r in await storage.scan(NS_STEPS, prefix="")] == ["r1/t/-"]
    await stale.aclose()
    await fresh.aclose()


def _batch(*groups: list[Op]) -> list[_Pending]:
    return [_Pending(ops, None) for ops in groups]


def test_merged_drops_a_check_repeated_with_no_write_of_its_key_between() -> None:
    """The same check again after writes of other keys is left out; the writes all stay."""
    check = Check(namespace="fences", key="r1", version=3)
    put_a = Put(namespace="steps", key="r1/a/-", value=b"1")
    put_b = Put(namespace="steps", key="r1/b/-", value=b"2")
    append = Append(stream="run:r1:events", payload=b"{}")
    ops = merged(_batch([put_a, check], [put_b, Check(namespace="fences", key="r1", version=3)]))
    assert ops == [put_a, check, put_b]
    assert merged(_batch([put_a, check], [append, check])) == [put_a, check, append]


def test_merged_keeps_a_check_after_a_write_of_its_key_or_another_version() -> None:
    """A check repeated after a Put or Delete of its key, or for another version, stays."""
    check = Check(namespace="fences", key="r1", version=3)
    put = Put(namespace="fences", key="r1", value=b"x")
    delete = Delete(namespace="fences", key="r1")
    assert merged(_batch([check], [put], [check])) == [check, put, check]
    assert merged(_batch([check], [delete], [check])) == [check, delete, check]
    other = Check(namespace="fences", key="r1", version=4)
    assert merged(_batch([check], [other])) == [check, other]
    elsewhere = Check(namespace="leases", key="r1", version=3)
    assert merged(_batch([check], [elsewhere])) == [check, elsewhere]


async def test_merged_commits_as_the_unmerged_batch_does_when_a_check_fails() -> None:
    """A batch whose repeated check fails after a write of its key fails as a whole, as it
    did with every check kept."""
    storage = MemoryStorage()
    await storage.put("fences", "r1", b"x")  # version 1
    check = Check(namespace="fences", key="r1", version=1)
    ops = merged(_batch([check], [Put(namespace="fences", key="r1", value=b"y")], [check]))
    with pytest.raises(ConflictError):
        await storage.commit(ops)
    assert (await storage.get("fences", "r1")).value == b"x"  # type: ignore[union-attr]


def _chain(steps: int, retry: dict[str, Any] | None = None) -> Any:
    step: dict[str, Any] = {"prompt": "next"}
    if retry is not None:
        step["retry"] = retry
    return load_pipeline(
        {
            "taskloom": "pipeline/v1",
            "name": "chain",
            "steps": [{"id": f"s{i}", **step} for i in range(steps)],
        }
    )


async def test_a_step_without_a_deadline_makes_its_first_attempt_outside_the_retry_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chain step that succeeds at once never enters call_with_retries or retry_after."""

    async def never(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the retry loop was entered")

    monkeypatch.setattr(leaf, "call_with_retries", never)
    monkeypatch.setattr(leaf, "retry_after", never)
    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor())
    async with Engine(registry=registry) as engine:
        result = await engine.run(_chain(3))
    assert result.status == "succeeded"


async def test_the_error_ending_the_retries_is_the_last_attempts_with_no_context() -> None:
    """The error that ends the retries is the last attempt's, not chained to the first's."""
    errors = [ProviderUnavailable("one"), ProviderUnavailable("two")]

    async def attempt(number: int) -> None:
        raise errors[number - 1]

    async def no_sleep(_delay: float) -> None:
        return None

    with pytest.raises(ProviderUnavailable) as caught:
        await call_with_retries(
            attempt,
            policy=RetryPolicy(max_attempts=2, initial_delay_s=0.0, jitter=0.0),
            sleep=no_sleep,
            random=lambda: 0.0,
            clock=lambda: 0.0,
        )
    assert caught.value is errors[1]
    assert caught.value.__context__ is None


def _converter_json(value: object, unstructure_as: Any = None) -> str:
    data = converter.unstructure(value, unstructure_as=unstructure_as)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def test_checkpoint_reuses_the_events_at_text_only_for_the_very_same_float() -> None:
    """finished_at is written from the last event's ``at`` only when it is that object:
    an equal float of another sign (-0.0 after 0.0) or another value is written itself."""
    for at, finished in ((0.0, -0.0), (-0.0, 0.0), (1.5, 2.5), (1765000000.123456, None)):
        event = StepSucceeded(run_id="r1", at=at, step_id="s")
        assert encode_event(event) == _converter_json(event, Event)
        same = at if finished is None else finished
        record = StepRecord(run_id="r1", step_id="s", output="x", started_at=1.0, finished_at=same)
        assert encode(record).decode() == _converter_json(record)
