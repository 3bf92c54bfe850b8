"""CheckpointWindow on its own: the bound, first-come room, cancellation, failures."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import StorageUnavailable
from taskloom.sdk._engine.window import CheckpointWindow


class Writes:
    """Futures a test settles by hand, one per submitted write, in submission order."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []
        self.args: list[Any] = []

    def submit(self, arg: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        self.args.append(arg)
        return future

    def settle(self, index: int, error: BaseException | None = None) -> None:
        if error is None:
            self.futures[index].set_result(None)
        else:
            self.futures[index].set_exception(error)


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_try_add_queues_until_the_window_is_full() -> None:
    window, writes = CheckpointWindow(2), Writes()
    assert window.try_add(writes.submit, "a")
    assert window.try_add(writes.submit, "b")
    assert not window.try_add(writes.submit, "c")  # full: nothing submitted
    assert writes.args == ["a", "b"]
    writes.settle(0)
    await _turns()
    assert window.try_add(writes.submit, "c")
    assert writes.args == ["a", "b", "c"]
    for index in (1, 2):
        writes.settle(index)
    await window.settle()


async def test_room_goes_to_waiters_first_come_first_served() -> None:
    window, writes = CheckpointWindow(1), Writes()
    assert window.try_add(writes.submit, 0)
    tasks = [asyncio.create_task(window.add(writes.submit, i)) for i in (1, 2, 3)]
    await _turns()
    assert not window.try_add(writes.submit, "late")  # others wait: no overtaking
    writes.settle(0)
    # settled, and its callback has not run yet: the room is still the first waiter's
    assert not window.try_add(writes.submit, "late")
    await _turns()
    for index in range(1, 3):
        writes.settle(index)
        await _turns()
    assert writes.args == [0, 1, 2, 3]
    writes.settle(3)
    await asyncio.gather(*tasks)
    await window.settle()
    assert len(window) == 0


async def test_a_waiter_cancelled_in_line_neither_blocks_nor_takes_room() -> None:
    """Its finished step's checkpoint is queued over the bound (the run is ending)."""
    window, writes = CheckpointWindow(1), Writes()
    assert window.try_add(writes.submit, "a")
    waiting = asyncio.create_task(window.add(writes.submit, "b"))
    await _turns()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert writes.args == ["a", "b"]  # the finished step's checkpoint is queued anyway
    writes.settle(0)
    writes.settle(1)
    await _turns()
    # the cancelled waiter left the line: the next add goes straight in
    assert window.try_add(writes.submit, "c")
    writes.settle(2)
    await window.settle()


async def test_a_cancelled_waiter_that_was_given_room_queues_in_it() -> None:
    window, writes = CheckpointWindow(1), Writes()
    assert window.try_add(writes.submit, "a")
    waiting = asyncio.create_task(window.add(writes.submit, "b"))
    await _turns()
    writes.settle(0)
    await asyncio.sleep(0)  # the settled write hands its room to the waiter ...
    waiting.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert writes.args == ["a", "b"]
    assert not window.try_add(writes.submit, "c")  # "b" holds the only room
    writes.settle(1)
    await _turns()
    assert window.try_add(writes.submit, "c")
    writes.settle(2)
    await window.settle()


async def test_a_failed_write_is_raised_by_the_next_add_and_by_settle() -> None:
    window, writes = CheckpointWindow(4), Writes()
    assert window.try_add(writes.submit, "a")
    writes.settle(0, StorageUnavailable("disk gone"))
    await _turns()
    with pytest.raises(StorageUnavailable):
        window.try_add(writes.submit, "b")
    assert writes.args == ["a"]
    window2, writes2 = CheckpointWindow(4), Writes()
    assert window2.try_add(writes2.submit, "a")
    writes2.settle(0, StorageUnavailable("disk gone"))
    with pytest.raises(StorageUnavailable):
        await window2.settle()


async def test_a_submit_that_raises_gives_its_room_back() -> None:
    window = CheckpointWindow(1)

    def refuse(_arg: Any) -> asyncio.Future[None]:
        raise ValueError("too large")

    with pytest.raises(ValueError):
        window.try_add(refuse, "a")
    writes = Writes()
    assert window.try_add(writes.submit, "b")  # the room was not lost
    writes.settle(0)
    await window.settle()


async def test_many_waiters_never_exceed_the_bound() -> None:
    window, writes = CheckpointWindow(3), Writes()
    unsettled = 0
    peak = 0

    def submit(arg: Any) -> asyncio.Future[None]:
        nonlocal unsettled, peak
        unsettled += 1
        peak = max(peak, unsettled)
        return writes.submit(arg)

    tasks = [asyncio.create_task(window.add(submit, i)) for i in range(50)]
    settled = 0
    while settled < 50:
        await _turns()
        if settled < len(writes.futures):
            writes.settle(settled)
            unsettled -= 1
            settled += 1
    await asyncio.gather(*tasks)
    await window.settle()
    assert peak == 3
    assert writes.args == list(range(50))


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 4),
    tasks=st.integers(1, 12),
    script=st.lists(st.sampled_from(["turn", "settle", "fail", "cancel"]), max_size=60),
)
def test_random_schedules_keep_the_bound_the_order_and_never_hang(
    limit: int, tasks: int, script: list[str]
) -> None:
    """Tasks add in order; writes settle (or fail) oldest first; waiting tasks get
    cancelled at random. At every submit at most ``limit`` writes are unsettled (a
    cancelled waiter's write excepted), tasks that were not cancelled submit in the
    order they came, and once every write settles, every task has finished."""

    async def scenario() -> None:
        window, writes = CheckpointWindow(limit), Writes()
        over_bound: set[int] = set()
        cancelled: set[int] = set()
        unsettled = 0
        peak = 0
        settled = 0

        def submit(arg: int) -> asyncio.Future[None]:
            nonlocal unsettled, peak
            unsettled += 1
            if arg not in cancelled:
                peak = max(peak, unsettled - len(over_bound))
            else:
                over_bound.add(arg)
            return writes.submit(arg)

        async def one(index: int) -> None:
            with contextlib.suppress(StorageUnavailable):
                await window.add(submit, index)

        running = [asyncio.create_task(one(i)) for i in range(tasks)]
        for step in script:
            if step == "turn":
                await asyncio.sleep(0)
            elif step in ("settle", "fail") and settled < len(writes.futures):
                error = StorageUnavailable("gone") if step == "fail" else None
                writes.settle(settled, error)
                unsettled -= 1
                settled += 1
            elif step == "cancel":
                waiting = [i for i, t in enumerate(running) if not t.done() and i not in cancelled]
                if waiting:
                    cancelled.add(waiting[-1])
                    running[waiting[-1]].cancel()
        for _ in range(10 * tasks + 10):  # settle everything left, oldest first
            await asyncio.sleep(0)
            if settled < len(writes.futures):
                writes.settle(settled)
                unsettled -= 1
                settled += 1
        assert all(t.done() for t in running), "a task still waits with nothing unsettled"
        await asyncio.gather(*running, return_exceptions=True)
        assert peak <= limit
        kept = [a for a in writes.args if a not in cancelled]
        assert kept == sorted(kept)
        window.abandon()

    asyncio.run(scenario())


async def test_a_cancelled_waiter_whose_submit_raises_passes_its_room_on() -> None:
    """Room promised to a waiter that is cancelled and then cannot queue (the store
    refused the record) goes to the next in line instead of being lost."""
    window, writes = CheckpointWindow(1), Writes()
    assert window.try_add(writes.submit, "first")

    def refuse(_arg: Any) -> asyncio.Future[None]:
        raise ValueError("checkpoint too large")

    refused = asyncio.create_task(window.add(refuse, "a"))
    after = asyncio.create_task(window.add(writes.submit, "b"))
    await _turns()
    writes.settle(0)
    await asyncio.sleep(0)  # the room is promised to "a" ...
    refused.cancel()  # ... which is cancelled before it runs, then fails to queue
    with pytest.raises(ValueError):
        await refused
    await _turns()
    assert after.done()  # "b" got the room
    assert writes.args == ["first", "b"]
    writes.settle(1)
    await window.settle()
