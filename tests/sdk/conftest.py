"""Checks every sdk test gets: no asyncio task is left running after an async test.

An engine that forgets a task (a lease renewer, a flusher, a subscriber) passes its
own test and breaks the next one; checking after every async test finds it where it
was made. A test that must leave something running says so with
``@pytest.mark.leaves_tasks``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest
from engine_support import leftover_tasks


@pytest.fixture(autouse=True)
async def no_leftover_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After each async test, no task other than the test's own is still running."""
    yield
    if inspect.iscoroutinefunction(request.function) and not request.node.get_closest_marker(
        "leaves_tasks"
    ):
        left = await leftover_tasks()
        assert left == [], f"tasks still running after the test: {left}"
