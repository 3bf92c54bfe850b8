"""ExecutorRegistry.unregister, and the plugin host unregistering a plugin's executors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    Capabilities,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    LLMExecutor,
    UnknownExecutor,
    UsageError,
)
from taskloom.sdk import ExecutorRegistry, ExecutorSettings
from taskloom.sdk._plugins.host import (
    CODE_DIR,
    ENVELOPE_NAME,
    PluginHost,
    RemovableExecutorSink,
    discover,
)
from taskloom.security import (
    PrivateKey,
    RollbackGuard,
    TrustStore,
    build_manifest,
    generate_key,
    sign_manifest,
)


class Closable:
    """An LLMExecutor that only counts how often it was closed."""

    def __init__(self) -> None:
        self.closes = 0

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        raise UsageError("not used in these tests")

    def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        raise UsageError("not used in these tests")

    async def aclose(self) -> None:
        self.closes += 1


# --- the registry ---------------------------------------------------------------


async def test_unregistered_instance_is_forgotten_everywhere_and_left_open() -> None:
    """After unregister an instance's id is unknown to get, peek, settings, ids and `in`;
    the instance (the caller's) is not closed."""
    mine = Closable()
    registry = ExecutorRegistry()
    registry.register("keep", Closable())
    registry.register("x", mine, settings=ExecutorSettings(concurrency=2))
    assert registry.peek("x") is mine
    await registry.unregister("x")
    assert "x" not in registry and registry.ids() == ["keep"]
    assert registry.peek("x") is None
    with pytest.raises(UnknownExecutor):
        registry.settings("x")
    with pytest.raises(UnknownExecutor):
        await registry.get("x")
    assert mine.closes == 0
    await registry.aclose()
    assert mine.closes == 0


async def test_an_executor_built_from_a_factory_is_closed_once() -> None:
    """The registry owns what its factory built: unregister closes it, aclose does not again."""
    built: list[Closable] = []

    def factory() -> Closable:
        built.append(Closable())
        return built[-1]

    registry = ExecutorRegistry()
    registry.register("f", factory)
    assert await registry.get("f") is built[0]
    await registry.unregister("f")
    assert built[0].closes == 1
    await registry.aclose()
    assert [e.closes for e in built] == [1]


async def test_a_factory_never_used_is_never_called() -> None:
    """Unregistering a factory that never built anything builds nothing."""
    calls: list[int] = []

    def factory() -> Closable:
        calls.append(1)
        return Closable()

    registry = ExecutorRegistry()
    registry.register("lazy", factory)
    await registry.unregister("lazy")
    assert calls == [] and registry.ids() == []


async def test_unknown_id_raises_unknown_executor_listing_the_known_ones() -> None:
    """Unregistering an id that is not there is UnknownExecutor naming the known ids."""
    registry = ExecutorRegistry()
    registry.register("b", Closable())
    registry.register("a", Closable())
    with pytest.raises(UnknownExecutor) as info:
        await registry.unregister("zz")
    assert info.value.known == ("a", "b")
    assert "known executors: a, b" in str(info.value)
    await registry.unregister("a")
    with pytest.raises(UnknownExecutor):
        await registry.unregister("a")


async def test_the_id_can_be_registered_again_with_new_settings() -> None:
    """After unregister, the same id takes a new executor and new settings."""
    registry = ExecutorRegistry()
    registry.register("x", Closable(), settings=ExecutorSettings(concurrency=1))
    await registry.unregister("x")
    fresh = Closable()
    registry.register("x", fresh, settings=ExecutorSettings(concurrency=7))
    assert registry.settings("x").concurrency == 7
    assert await registry.get("x") is fresh


async def test_removing_the_default_leaves_no_default_until_the_next_registration() -> None:
    """Steps naming no executor are never silently sent to another one: no default until
    the next executor registered, which becomes it."""
    registry = ExecutorRegistry()
    registry.register("first", Closable())
    registry.register("second", Closable())
    assert registry.default_id == "first"
    await registry.unregister("second")
    assert registry.default_id == "first"
    await registry.unregister("first")
    assert registry.default_id is None
    registry.register("third", Closable())
    assert registry.default_id == "third"


async def _getting_from_a_slow_factory(
    executor_id: str,
) -> tuple[asyncio.Event, list[Closable], ExecutorRegistry, asyncio.Task[Any]]:
    """A registry whose ``executor_id`` comes from a factory that waits for the returned
    gate, and a get() of it already waiting for that factory; ``built`` collects what the
    factory makes."""
    gate = asyncio.Event()
    built: list[Closable] = []

    async def slow_factory() -> Closable:
        await gate.wait()
        built.append(Closable())
        return built[-1]

    registry = ExecutorRegistry()
    registry.register(executor_id, slow_factory)
    getting = asyncio.create_task(registry.get(executor_id))
    await asyncio.sleep(0)
    return gate, built, registry, getting


async def test_unregister_while_the_factory_runs_closes_what_it_built() -> None:
    """An executor built for an id unregistered meanwhile is closed, and get() says unknown."""
    gate, built, registry, getting = await _getting_from_a_slow_factory("slow")
    await registry.unregister("slow")
    gate.set()
    with pytest.raises(UnknownExecutor):
        await getting
    assert [e.closes for e in built] == [1]
    assert registry.peek("slow") is None


async def test_get_racing_a_replacement_returns_the_new_executor() -> None:
    """If the id is unregistered and registered again while its old factory runs, get()
    returns the new executor and closes the old one."""
    gate, old, registry, getting = await _getting_from_a_slow_factory("x")
    await registry.unregister("x")
    new = Closable()
    registry.register("x", new)
    gate.set()
    assert await getting is new
    assert [e.closes for e in old] == [1] and new.closes == 0


def test_the_registry_is_a_removable_executor_sink() -> None:
    """The plugin host recognises the registry as a sink that can forget executors."""
    assert isinstance(ExecutorRegistry(), RemovableExecutorSink)


class RegistryMachine(RuleBasedStateMachine):
    """Register, build, unregister and close in any order, beside a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.registry = ExecutorRegistry()
        self.model: dict[str, tuple[str, Closable | None]] = {}  # id -> (kind, built)
        self.instances: list[Closable] = []
        self.built: list[Closable] = []
        self.closed_by_registry: set[int] = set()

    def teardown(self) -> None:
        self.runner.close()

    ids = st.sampled_from(["a", "b", "c"])

    @rule(executor_id=ids, as_factory=st.booleans())
    def register(self, executor_id: str, as_factory: bool) -> None:
        if executor_id in self.model:
            with pytest.raises(UsageError):
                self.registry.register(executor_id, Closable())
            return
        if as_factory:

            def factory() -> Closable:
                self.built.append(Closable())
                return self.built[-1]

            self.registry.register(executor_id, factory)
            self.model[executor_id] = ("factory", None)
        else:
            instance = Closable()
            self.instances.append(instance)
            self.registry.register(executor_id, instance)
            self.model[executor_id] = ("instance", instance)

    @rule(executor_id=ids)
    def get(self, executor_id: str) -> None:
        if executor_id not in self.model:
            with pytest.raises(UnknownExecutor):
                self.runner.run(self.registry.get(executor_id))
            return
        got = self.runner.run(self.registry.get(executor_id))
        kind, known = self.model[executor_id]
        if known is not None:
            assert got is known
        self.model[executor_id] = (kind, got)  # type: ignore[assignment]

    @rule(executor_id=ids)
    def unregister(self, executor_id: str) -> None:
        if executor_id not in self.model:
            with pytest.raises(UnknownExecutor):
                self.runner.run(self.registry.unregister(executor_id))
            return
        kind, built = self.model.pop(executor_id)
        self.runner.run(self.registry.unregister(executor_id))
        if kind == "factory" and built is not None:
            self.closed_by_registry.add(id(built))

    @precondition(lambda self: bool(self.model))
    @rule()
    def close_all(self) -> None:
        self.runner.run(self.registry.aclose())
        for executor_id, (kind, built) in list(self.model.items()):
            if kind == "factory" and built is not None:
                self.closed_by_registry.add(id(built))
                self.model[executor_id] = (kind, None)  # aclose forgets the built one

    @invariant()
    def ids_and_peek_match_the_model(self) -> None:
        assert self.registry.ids() == sorted(self.model)
        for executor_id in ("a", "b", "c"):
            expected = self.model.get(executor_id, ("", None))[1]
            assert self.registry.peek(executor_id) is expected

    @invariant()
    def only_what_the_registry_built_and_dropped_is_closed_once(self) -> None:
        assert all(i.closes == 0 for i in self.instances)
        for executor in self.built:
            assert executor.closes == (1 if id(executor) in self.closed_by_registry else 0)


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


# --- the plugin host ---------------------------------------------------------------

EXECUTOR_PLUGIN = """
from taskloom.adapters.scripted import ScriptedExecutor

class P:
    async def setup(self, context):
        for executor_id in context.capabilities.executors:
            context.register_executor(executor_id, ScriptedExecutor())

    async def teardown(self):
        return None

plugin = P()
"""


def _signed_plugin(base: Path, name: str, executors: tuple[str, ...], key: PrivateKey) -> None:
    code = base / name / CODE_DIR
    code.mkdir(parents=True)
    (code / f"{name}.py").write_text(EXECUTOR_PLUGIN)
    now = int(time.time())
    manifest = build_manifest(
        code,
        name=name,
        version=1,
        entry_point=f"{name}:plugin",
        publisher="tests",
        capabilities=Capabilities(executors=executors),
        issued_at=now - 10,
        expires_at=now + 3600,
        min_sdk_version="0.1.0",
    )
    (base / name / ENVELOPE_NAME).write_bytes(sign_manifest(manifest, [key]))


@pytest.fixture
def key() -> PrivateKey:
    return generate_key()


def _host(registry: ExecutorRegistry, key: PrivateKey) -> PluginHost:
    trust = TrustStore()
    trust.add_key(key.public_key, plugins=["*"])
    storage = MemoryStorage()
    return PluginHost(
        storage=storage, executors=registry, trust=trust, rollback=RollbackGuard(storage)
    )


async def test_teardown_unregisters_a_plugins_executors(tmp_path: Path, key: PrivateKey) -> None:
    """Once the host tore a plugin down, its executors are no longer in the registry."""
    _signed_plugin(tmp_path, "remote_execs", ("shout", "whisper"), key)
    registry = ExecutorRegistry()
    registry.register("config", Closable())
    host = _host(registry, key)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert registry.ids() == ["config", "shout", "whisper"]
    await host.aclose()
    assert registry.ids() == ["config"]
    with pytest.raises(UnknownExecutor):
        await registry.get("shout")


async def test_teardown_leaves_an_id_someone_else_now_holds(
    tmp_path: Path, key: PrivateKey
) -> None:
    """An id the application unregistered and gave to its own executor stays at teardown."""
    _signed_plugin(tmp_path, "lender", ("shout",), key)
    registry = ExecutorRegistry()
    host = _host(registry, key)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    await registry.unregister("shout")
    mine = Closable()
    registry.register("shout", mine)
    await host.aclose()
    assert registry.peek("shout") is mine


class FailingSecondRegistry(ExecutorRegistry):
    """A registry whose second registration fails (a sink going wrong half-way)."""

    def register(self, executor_id: str, executor: Any, **kwargs: Any) -> None:
        if len(self.ids()) >= 1:
            raise UsageError(f"refusing {executor_id!r}")
        super().register(executor_id, executor, **kwargs)


async def test_a_plugin_failing_half_way_through_registration_leaves_no_executor(
    tmp_path: Path, key: PrivateKey
) -> None:
    """If registering the plugin's second executor fails, the first is unregistered too."""
    _signed_plugin(tmp_path, "halfway", ("one", "two"), key)
    registry = FailingSecondRegistry()
    host = _host(registry, key)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and "refusing" in (report.error or "")
    assert registry.ids() == []
    assert host.loaded == []
    await host.aclose()


async def test_the_plugin_can_be_loaded_again_after_teardown(
    tmp_path: Path, key: PrivateKey
) -> None:
    """Teardown frees the ids, so a new host can load the same plugin into the same registry."""
    _signed_plugin(tmp_path, "again", ("shout",), key)
    registry = ExecutorRegistry()
    first = _host(registry, key)
    assert (await first.load(discover([tmp_path], entry_points=False)))[0].loaded
    await first.aclose()
    second = _host(registry, key)
    (report,) = await second.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert isinstance(registry.peek("shout"), LLMExecutor)
    await second.aclose()
    assert registry.ids() == []
