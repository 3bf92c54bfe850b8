"""CheckpointWindow on its own: the bound, first-come room, cancellation, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskloom.contracts import StorageUnavailable
from taskloom.sdk._engine_window import CheckpointWindow


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
    for index in range(3):
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
