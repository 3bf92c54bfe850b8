"""The event bus: filters, EventSink invariants EV1 (never hurts a run) and EV2 (order),
bounded queues, unsubscribe, and a run's event history."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from engine_support import make_engine, pipeline

from taskloom.contracts import (
    EventSink,
    RunStarted,
    RunSucceeded,
    StepStarted,
    StepSucceeded,
    UsageError,
)
from taskloom.sdk import EventBus


def started(run: str, step: str = "s") -> StepStarted:
    return StepStarted(run_id=run, at=0.0, step_id=step)


async def test_ev1_failing_subscriber_never_breaks_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EV1: a subscriber that raises is counted and logged; the run succeeds regardless."""

    def explode(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    engine, _ = make_engine()
    sub = engine.bus.subscribe(explode)
    caplog.set_level(logging.ERROR, logger="taskloom.events")
    async with engine:
        result = await engine.run(pipeline({"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}))
        await engine.bus.drain()
    assert result.status == "succeeded"
    assert sub.errors == 6 and sub.delivered == 0
    assert "subscriber" in caplog.text


async def test_ev1_slow_subscriber_never_blocks_the_run_and_drops_are_counted() -> None:
    """EV1: a subscriber that never returns fills its bounded queue; the rest is dropped."""
    forever = asyncio.Event()

    async def stuck(event: Any) -> None:
        await forever.wait()

    fast: list[Any] = []
    engine, _ = make_engine()
    slow = engine.bus.subscribe(stuck, queue_size=2)
    engine.bus.subscribe(fast.append)
    async with engine:
        steps = [{"id": f"s{i}", "prompt": str(i)} for i in range(10)]
        result = await engine.run(pipeline(*steps))
        await asyncio.sleep(0)
        assert result.status == "succeeded"
        assert slow.dropped > 0
        assert slow.delivered + slow.dropped + 3 >= 22  # one in the callback, two queued
        forever.set()
    assert len(fast) == 22  # RunStarted, 10 x (started, succeeded), RunSucceeded


async def test_ev2_a_sink_receives_a_runs_events_in_emitted_order() -> None:
    """EV2: an EventSink gets one run's events in exactly the order they were emitted."""

    class Sink:
        def __init__(self) -> None:
            self.events: list[Any] = []

        def emit(self, event: Any) -> None:
            self.events.append(event)

    sink = Sink()
    assert isinstance(sink, EventSink)
    engine, _ = make_engine()
    engine.bus.subscribe(sink)
    async with engine:
        handle = engine.start(
            pipeline(
                {
                    "id": "m",
                    "map": "{{inputs.xs}}",
                    "concurrency": 4,
                    "step": {"id": "s", "prompt": "{{item}}"},
                },
                inputs={"xs": {"type": "array"}},
            ),
            {"xs": list(range(8))},
        )
        await handle.result()
        history = [e async for e in handle.events()]
        await engine.bus.drain()
    assert sink.events == history


async def test_ev2_async_callbacks_are_awaited_in_order() -> None:
    """EV2: coroutine callbacks are awaited one event at a time, in order."""
    seen: list[int] = []
    bus = EventBus()

    async def slow(event: Any) -> None:
        await asyncio.sleep(0)
        seen.append(int(event.step_id))

    bus.subscribe(slow)
    for i in range(50):
        bus.emit(started("r", str(i)))
    await bus.drain()
    await bus.aclose()
    assert seen == list(range(50))


async def test_filters_by_type_and_run() -> None:
    """subscribe(types=..., run_id=...) delivers only matching events."""
    bus = EventBus()
    by_type: list[Any] = []
    by_tag: list[Any] = []
    by_run: list[Any] = []
    bus.subscribe(by_type.append, types=[StepStarted])
    bus.subscribe(by_tag.append, types=["run.succeeded"])
    bus.subscribe(by_run.append, run_id="r2")
    events = [
        started("r1"),
        RunSucceeded(run_id="r1", at=0.0),
        started("r2"),
        RunStarted(run_id="r2", at=0.0),
    ]
    for event in events:
        bus.emit(event)
    await bus.drain()
    await bus.aclose()
    assert by_type == [events[0], events[2]]
    assert by_tag == [events[1]]
    assert by_run == [events[2], events[3]]
    with pytest.raises(UsageError):
        bus.subscribe(print, types=["no.such"])
    with pytest.raises(UsageError):
        bus.subscribe(print, types=[int])


async def test_unsubscribe_stops_delivery() -> None:
    """Calling the subscription (or unsubscribe()) stops delivery and its task."""
    bus = EventBus()
    got: list[Any] = []
    sub = bus.subscribe(got.append)
    bus.emit(started("r"))
    await bus.drain()
    sub()
    bus.emit(started("r"))
    await asyncio.sleep(0)
    assert len(got) == 1 and bus.subscriptions == ()
    await bus.aclose()


async def test_handle_events_include_those_already_emitted() -> None:
    """handle.events() started after the run finished still yields every event."""
    engine, _ = make_engine()
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "x"}))
        result = await handle.result()
        early = [e async for e in handle.events()]
        again = [e async for e in handle.events()]
    assert early == again
    assert isinstance(early[0], RunStarted) and isinstance(early[-1], RunSucceeded)
    assert any(isinstance(e, StepSucceeded) and e.step_id == "a" for e in early)
    assert all(e.run_id == result.run_id for e in early)


async def test_handle_events_stream_live_while_running() -> None:
    """An iterator opened before the run ends receives events as they come, then stops."""
    engine, fake = make_engine()
    fake.gate = asyncio.Event()
    async with engine:
        handle = engine.start(pipeline({"id": "a", "prompt": "x"}))
        seen: list[Any] = []

        async def consume() -> None:
            async for event in handle.events():
                seen.append(event)
                if isinstance(event, StepStarted):
                    fake.gate.set()

        await asyncio.wait_for(consume(), timeout=5)
        await handle.result()
    assert isinstance(seen[-1], RunSucceeded)
