"""A resume that fails before it runs still ends its handle's event stream."""

from __future__ import annotations

import asyncio

import pytest

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import RunNotFound
from taskloom.sdk import Engine


async def test_failed_resume_ends_the_event_stream() -> None:
    """Iterating events() of a resume of an unknown run ends; result() raises RunNotFound."""
    async with Engine(storage=MemoryStorage()) as engine:
        handle = engine.start_resume("no-such-run")
        events = await asyncio.wait_for(_collect(handle), 10)
        assert events == []
        with pytest.raises(RunNotFound):
            await handle.result()


async def _collect(handle: object) -> list[object]:
    return [event async for event in handle.events()]  # type: ignore[attr-defined]
