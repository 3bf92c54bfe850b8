"""Budgets: a call that would start beyond the pipeline's budget is never started."""

from __future__ import annotations

from typing import Any

import pytest
from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    BudgetExceeded,
    PipelineInvalid,
    ProviderUnavailable,
    StepFailed,
)

FAST = {"max_attempts": 3, "initial_delay_s": 0, "jitter": 0}


def _steps(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "prompt": f"p{i}", **extra} for i in range(n)]


async def test_max_calls_stops_before_the_call_that_would_exceed_it() -> None:
    """With max_calls 2, the third step's call is never made; the run fails with
    BudgetExceeded naming the two calls spent."""
    engine, fake = make_engine(storage=MemoryStorage())
    async with engine:
        handle = engine.start(pipeline(*_steps(4), budget={"max_calls": 2}))
        with pytest.raises(BudgetExceeded, match=r"step 's2' was not started.*2 call\(s\)") as info:
            await handle.result()
        record = await engine.runstore.load_run(handle.run_id)
    assert fake.total_calls == 2
    assert info.value.spent_calls == 2 and info.value.max_calls == 2
    assert record.status == "failed"


async def test_max_tokens_counts_what_was_spent() -> None:
    """Each fake call spends 2 tokens: with max_tokens 3 the third call never starts."""
    engine, fake = make_engine()
    async with engine:
        with pytest.raises(BudgetExceeded) as info:
            await engine.run(pipeline(*_steps(5), budget={"max_tokens": 3}))
    assert fake.total_calls == 2
    assert info.value.spent_tokens == 4


async def test_retries_count_as_calls() -> None:
    """Every attempt is a call: two failed attempts and a success use a budget of 3."""
    fake = FakeExecutor()
    fake.fail("p0", ProviderUnavailable("down"), ProviderUnavailable("down"))
    engine, _ = make_engine(fake)
    async with engine:
        with pytest.raises(BudgetExceeded):
            await engine.run(pipeline(*_steps(2, retry=FAST), budget={"max_calls": 3}))
    assert fake.total_calls == 3


async def test_on_error_continue_does_not_swallow_a_budget() -> None:
    """BudgetExceeded fails the run even when the step says on_error: continue."""
    engine, fake = make_engine()
    async with engine:
        with pytest.raises(BudgetExceeded):
            await engine.run(pipeline(*_steps(3, on_error="continue"), budget={"max_calls": 1}))
    assert fake.total_calls == 1


async def test_a_map_never_starts_more_calls_than_the_budget() -> None:
    """Concurrent map items: exactly max_calls calls start, not one more."""
    engine, fake = make_engine(FakeExecutor(delay=0.01))
    body = {"id": "each", "prompt": "{{item}}"}
    async with engine:
        with pytest.raises(BudgetExceeded):
            await engine.run(
                pipeline(
                    {"id": "m", "map": "{{inputs.xs}}", "concurrency": 8, "step": body},
                    inputs={"xs": {"type": "array"}},
                    budget={"max_calls": 5},
                ),
                {"xs": list(range(20))},
            )
    assert fake.total_calls == 5


async def test_a_resumed_run_counts_the_calls_of_earlier_processes() -> None:
    """Checkpointed calls of the first process count after a resume: with a budget of
    3, two checkpointed calls leave room for one more, and the step after it is not
    started."""
    storage = MemoryStorage()
    first = FakeExecutor()
    first.fail("p2", ProviderUnavailable("down"))
    engine, _ = make_engine(first, storage=storage)
    doc = pipeline(*_steps(4, retry={"max_attempts": 1}), budget={"max_calls": 3})
    async with engine:
        handle = engine.start(doc)
        with pytest.raises(StepFailed):  # p2 is down
            await handle.result()
    assert first.total_calls == 3
    second = FakeExecutor()
    engine2, _ = make_engine(second, storage=storage)
    async with engine2:
        with pytest.raises(BudgetExceeded, match="step 's3' was not started") as info:
            await engine2.resume(handle.run_id)
    assert second.calls["p2"] == 1 and second.total_calls == 1
    assert info.value.spent_calls == 3


@pytest.mark.parametrize(
    "budget", [{"max_calls": 0}, {"max_tokens": -1}, {"max_calls": "2"}, {"x": 1}]
)
async def test_a_bad_budget_is_refused_before_anything_runs(budget: dict[str, Any]) -> None:
    """A budget that is not positive integers is PipelineInvalid with its path."""
    engine, fake = make_engine()
    async with engine:
        with pytest.raises(PipelineInvalid, match=r"\$\.budget"):
            await engine.run(pipeline(*_steps(1), budget=budget))
    assert fake.total_calls == 0
