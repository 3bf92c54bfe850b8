"""A plugin's context reaches only its grants: no private path to the real storage or
secret store, capabilities that cannot be rebound, hosts checked with scheme and port,
and development mode that still refuses signed plugins failing verification."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from test_plugin_host import STEP_PLUGIN, _host, _plugin_modules, make_plugin

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import Capabilities, CapabilityDenied, Secret
from taskloom.sdk._plugins.context import HostedPluginContext
from taskloom.sdk._plugins.host import ENVELOPE_NAME, discover
from taskloom.security import PrivateKey, TrustStore, generate_key


@pytest.fixture
def key() -> PrivateKey:
    return generate_key()


@pytest.fixture
def trust(key: PrivateKey) -> TrustStore:
    store = TrustStore()
    store.add_key(key.public_key, plugins=["*"])
    return store


class _Secrets:
    """A secret store holding one declared and one undeclared secret."""

    async def get(self, name: str, /) -> Secret:
        return Secret({"mine": "granted-value", "theirs": "undeclared-value"}[name])


def _context(caps: Capabilities) -> tuple[HostedPluginContext, MemoryStorage]:
    storage = MemoryStorage()
    context = HostedPluginContext(
        plugin_name="p",
        capabilities=caps,
        storage=storage,
        secrets=_Secrets(),  # type: ignore[arg-type]
    )
    return context, storage


def _reachable(root: object, depth: int = 4) -> list[object]:
    """Every object reachable from ``root`` through instance attributes and slots."""
    seen: dict[int, object] = {}
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
                continue
            seen[id(obj)] = obj
            names = list(getattr(obj, "__dict__", {}))
            for klass in type(obj).__mro__:
                names.extend(getattr(klass, "__slots__", ()))
            for name in names:
                try:
                    nxt.append(object.__getattribute__(obj, name))
                except AttributeError:
                    continue
            if isinstance(obj, dict):
                nxt.extend(obj.values())
            elif isinstance(obj, list | tuple | set | frozenset):
                nxt.extend(obj)
        frontier = nxt
    return list(seen.values())


def test_the_context_holds_no_reference_to_the_real_storage_or_secret_store() -> None:
    """Neither _secrets, _storage._inner nor any attribute walk reaches beyond the grants."""
    context, storage = _context(Capabilities(secrets=("mine",), storage_namespaces=("ns",)))
    for attribute in ("_secrets", "_caps", "_storage"):
        assert not hasattr(context, attribute)
    with pytest.raises(AttributeError):
        _ = context.storage._inner  # type: ignore[attr-defined]
    reachable = _reachable(context) + _reachable(context.storage)
    assert not any(obj is storage for obj in reachable)
    assert not any(isinstance(obj, _Secrets) for obj in reachable)


async def test_capabilities_cannot_be_rebound() -> None:
    """Assigning _caps (or anything) on the context fails; the grant stays as signed."""
    context, _ = _context(Capabilities(secrets=("mine",)))
    wider = Capabilities(secrets=("mine", "theirs"))
    for name in ("_caps", "capabilities", "anything"):
        with pytest.raises(AttributeError):
            setattr(context, name, wider)
    with pytest.raises(AttributeError):
        HostedPluginContext.__init__(
            context, plugin_name="p", capabilities=wider, storage=MemoryStorage(), secrets=None
        )
    with pytest.raises(CapabilityDenied):
        await context.secret("theirs")
    assert (await context.secret("mine")).reveal() == "granted-value"


async def test_the_storage_view_cannot_reach_the_rollback_marks() -> None:
    """The scoped view refuses other namespaces and has no path to the real adapter."""
    context, storage = _context(Capabilities(storage_namespaces=("ns",)))
    await storage.put("trust.rollback", "other", b"mark")
    with pytest.raises(CapabilityDenied):
        await context.storage.put("trust.rollback", "other", b"reset")
    with pytest.raises(AttributeError):
        context.storage.revoked = False  # type: ignore[misc]
    record = await storage.get("trust.rollback", "other")
    assert record is not None and record.value == b"mark"


@pytest.mark.parametrize(
    ("grant", "url", "allowed"),
    [
        ("api.example.com", "https://api.example.com/v1", True),
        ("api.example.com", "http://api.example.com/v1", False),
        ("api.example.com", "https://api.example.com:8443/v1", False),
        ("api.example.com:8443", "https://api.example.com:8443/v1", True),
        ("http://localhost:8080", "http://localhost:8080/v1", True),
        ("http://localhost:8080", "http://localhost:8081/v1", False),
        ("*.example.com", "https://eu.api.example.com/", True),
        ("*.example.com", "https://example.com/", False),
        ("api.example.com", "https://user:pw@evil.net/?api.example.com", False),
    ],
)
def test_check_url_enforces_scheme_host_and_port(grant: str, url: str, allowed: bool) -> None:
    """A host grant admits its own scheme and port only (https:443 unless it says so)."""
    context, _ = _context(Capabilities(network_hosts=(grant,)))
    if allowed:
        context.check_url(url)
    else:
        with pytest.raises(CapabilityDenied):
            context.check_url(url)


async def test_dev_mode_refuses_a_trusted_plugin_whose_files_were_tampered(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin signed by a trusted key but changed since: refused in development mode too."""
    root = make_plugin(tmp_path, "tampered", {"tampered.py": STEP_PLUGIN}, key)
    (root / "src" / "tampered.py").write_text(STEP_PLUGIN + "\nPLANTED = 1\n")
    host, _, _ = await _host(trust, dev_mode=True)
    with warnings.catch_warnings(record=True):
        (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.error_type == "FileDigestMismatch"
    assert _plugin_modules("tampered") == []
    await host.aclose()


async def test_dev_mode_refuses_a_rolled_back_plugin(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """An older signed release after a newer one was seen: refused in development mode too."""
    make_plugin(tmp_path / "v2", "rolled", {"rolled.py": STEP_PLUGIN}, key, version=2)
    old = make_plugin(tmp_path / "v1", "rolled", {"rolled.py": STEP_PLUGIN}, key, version=1)
    host, _, storage = await _host(trust, dev_mode=True)
    (first,) = await host.load(discover([tmp_path / "v2"], entry_points=False))
    assert first.loaded and first.verified
    await host.aclose()
    from taskloom.sdk._plugins.host import PluginHost
    from taskloom.security import RollbackGuard

    again = PluginHost(
        storage=storage,
        executors=type(host._executors)(),
        trust=trust,
        rollback=RollbackGuard(storage),
        dev_mode=True,
    )
    assert (old / ENVELOPE_NAME).is_file()
    with warnings.catch_warnings(record=True):
        (report,) = await again.load(discover([tmp_path / "v1"], entry_points=False))
    assert not report.loaded and report.error_type == "RollbackDetected"
    await again.aclose()


def _reply(request: Any) -> Any:
    import httpx

    seen.append(str(request.url))
    return httpx.Response(
        200,
        json={
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        },
    )


seen: list[str] = []


class _Wrapper:
    """A registered executor that hides the one it forwards to (no base_url to inspect)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def complete(self, request: Any) -> Any:
        return await self.inner.complete(request)

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("trick", ["repointed", "wrapper", "port", "scheme"])
async def test_every_request_is_checked_at_the_transport(trick: str) -> None:
    """A re-pointed URL, a wrapper or another port/scheme never reaches the network."""
    import httpx

    from taskloom.adapters.openai import OpenAIExecutor
    from taskloom.contracts import CompletionRequest, Message

    seen.clear()
    transport = httpx.MockTransport(_reply)
    context, _ = _context(Capabilities(executors=("remote",), network_hosts=("api.example.com",)))
    good = OpenAIExecutor(base_url="https://api.example.com/v1", model="m", transport=transport)
    target = {
        "repointed": "https://evil.example.net/v1",
        "wrapper": "https://evil.example.net/v1",
        "port": "https://api.example.com:8443/v1",
        "scheme": "http://api.example.com/v1",
    }[trick]
    bad = OpenAIExecutor(base_url=target, model="m", transport=transport)
    if trick == "wrapper":
        context.register_executor("remote", _Wrapper(bad))  # type: ignore[arg-type]
    else:
        context.register_executor("remote", good)
        good._url = bad._url  # re-pointed after the registration check
    executor = context.executors["remote"]
    request = CompletionRequest(messages=(Message(role="user", content="x"),))
    with pytest.raises(CapabilityDenied, match="network host"):
        await executor.complete(request)
    with pytest.raises(CapabilityDenied):
        async for _ in executor.stream(request):
            pass
    assert seen == []
    ok = OpenAIExecutor(base_url="https://api.example.com/v1", model="m", transport=transport)
    allowed, _ = _context(Capabilities(executors=("remote",), network_hosts=("api.example.com",)))
    allowed.register_executor("remote", ok)
    assert (await allowed.executors["remote"].complete(request)).text == "hi"
    assert seen == ["https://api.example.com/v1/chat/completions"]
    for created in (good, bad, ok):
        await created.aclose()


LEAKY_PLUGIN = """
class P:
    async def setup(self, context):
        self.context = context
        context.register_step("leak", self.leak)

    async def teardown(self):
        return None

    async def leak(self, args):
        return {"token": (await self.context.secret("token")).reveal()}

plugin = P()
"""


async def test_an_embedded_engine_masks_what_a_plugin_read(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Host and engine sharing a registry: a secret the plugin read is masked in its output."""
    from taskloom.adapters.secrets import EnvSecretStore
    from taskloom.contracts import MASK
    from taskloom.sdk import Engine, ExecutorRegistry
    from taskloom.sdk._plugins.host import PluginHost
    from taskloom.security import RollbackGuard

    value = "tok-embedded-5e4d3c2b1a"
    make_plugin(
        tmp_path,
        "leaky",
        {"leaky.py": LEAKY_PLUGIN},
        key,
        caps=Capabilities(steps=("leak",), secrets=("token",)),
    )
    storage = MemoryStorage()
    registry = ExecutorRegistry()
    host = PluginHost(
        storage=storage,
        executors=registry,
        trust=trust,
        rollback=RollbackGuard(storage),
        secrets=EnvSecretStore(environ={"TASKLOOM_SECRET_TOKEN": value}),
    )
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    try:
        async with Engine(storage=storage, registry=registry, plugin_steps=host.steps) as engine:
            result = await engine.run(
                {
                    "taskloom": "pipeline/v1",
                    "name": "t",
                    "steps": [{"id": "s", "uses": "leaky.leak"}],
                }
            )
            stored = await engine.runstore.finished_steps(result.run_id)
    finally:
        await host.aclose()
    assert result.output == {"token": MASK}
    assert stored[("s", None)].output == {"token": MASK}
