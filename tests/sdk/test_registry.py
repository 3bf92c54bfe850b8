"""The executor registry: instances and lazy factories, settings, types from config."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engine_support import FakeExecutor

from taskloom.contracts import UnknownExecutor, UsageError
from taskloom.sdk import ExecutorRegistry, ExecutorSettings, _registry, register_executor_type


async def test_unknown_id_lists_the_known_ones() -> None:
    """get() and settings() of an unknown id raise UnknownExecutor naming the known ids."""
    registry = ExecutorRegistry()
    registry.register("b", FakeExecutor())
    registry.register("a", FakeExecutor())
    with pytest.raises(UnknownExecutor) as info:
        await registry.get("zz")
    assert info.value.known == ("a", "b")
    assert "known executors: a, b" in str(info.value)
    with pytest.raises(UnknownExecutor):
        registry.settings("zz")


async def test_factories_are_lazy_called_once_and_closed() -> None:
    """A sync or async factory runs on first get() only, once even when raced; aclose closes it."""
    made: list[FakeExecutor] = []

    def sync_factory() -> FakeExecutor:
        made.append(FakeExecutor())
        return made[-1]

    async def async_factory() -> FakeExecutor:
        await asyncio.sleep(0)
        made.append(FakeExecutor())
        return made[-1]

    registry = ExecutorRegistry()
    registry.register("s", sync_factory)
    registry.register("a", async_factory)
    assert made == []
    first = await asyncio.gather(*(registry.get("a") for _ in range(5)))
    assert len({id(x) for x in first}) == 1
    assert await registry.get("s") is await registry.get("s")
    assert len(made) == 2
    await registry.aclose()
    assert all(executor.closed for executor in made)


async def test_instances_belong_to_the_caller() -> None:
    """An executor registered as an instance is not closed by the registry."""
    executor = FakeExecutor()
    registry = ExecutorRegistry()
    registry.register("x", executor)
    await registry.aclose()
    assert not executor.closed


def test_default_is_first_or_explicit_and_duplicates_refused() -> None:
    """The first id is the default unless default=True says otherwise; ids are unique."""
    registry = ExecutorRegistry()
    registry.register("one", FakeExecutor())
    registry.register("two", FakeExecutor(), default=True)
    assert registry.default_id == "two"
    assert registry.ids() == ["one", "two"] and "one" in registry
    with pytest.raises(UsageError):
        registry.register("one", FakeExecutor())
    with pytest.raises(UsageError):
        registry.register("bad", 42)  # type: ignore[arg-type]


async def test_factory_returning_something_else_is_a_usage_error() -> None:
    """A factory must return an LLMExecutor."""
    registry = ExecutorRegistry()
    registry.register("x", lambda: "not an executor")  # type: ignore[arg-type,return-value]
    with pytest.raises(UsageError, match="not an LLMExecutor"):
        await registry.get("x")


async def test_config_types_resolve_from_registry_then_process_then_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """register_config builds by type: registry types, then process types, then adapters."""
    seen: list[tuple[dict[str, Any], Any]] = []

    def factory(options: Any, secrets: Any) -> FakeExecutor:
        seen.append((dict(options), secrets))
        return FakeExecutor()

    monkeypatch.setitem(_registry._EXECUTOR_TYPES, "proc-type", factory)
    registry = ExecutorRegistry()
    registry.register_type("own-type", factory)
    registry.register_config(
        "x",
        {"type": "own-type", "default_model": "m", "concurrency": 2, "mode": "echo"},
        secrets="S",  # type: ignore[arg-type]
    )
    registry.register_config("y", {"type": "proc-type", "requests_per_minute": 60})
    assert registry.settings("x") == ExecutorSettings(default_model="m", concurrency=2)
    assert registry.settings("y").requests_per_minute == 60.0
    await registry.get("x")
    await registry.get("y")
    assert [options for options, _ in seen] == [{"mode": "echo"}, {}]
    # the factory reads secrets through the registry's recording view of the store
    assert seen[0][1]._store == "S" and seen[1][1] is None
    with pytest.raises(UsageError, match="unknown executor type 'nope'"):
        registry.register_config("z", {"type": "nope"})
    with pytest.raises(UsageError, match="needs a 'type'"):
        registry.register_config("z", {})
    with pytest.raises(UsageError, match="invalid settings"):
        registry.register_config("z", {"type": "own-type", "concurrency": 0})
    await registry.aclose()


def test_register_executor_type_is_process_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """register_executor_type makes a type visible to every registry."""
    monkeypatch.setattr(_registry, "_EXECUTOR_TYPES", {})
    register_executor_type("t", lambda options, secrets: FakeExecutor())
    assert ExecutorRegistry().resolve_type("t") is _registry._EXECUTOR_TYPES["t"]
    with pytest.raises(UsageError):
        register_executor_type("", lambda options, secrets: FakeExecutor())


def test_adapter_module_without_from_config_is_explained() -> None:
    """A taskloom.adapters module without from_config cannot be an executor type."""
    with pytest.raises(UsageError, match="no from_config"):
        ExecutorRegistry().resolve_type("memory")
