"""The plugin host: verify before import, import from verified bytes, scoped contexts."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from taskloom.adapters.memory import MemorySecretStore, MemoryStorage
from taskloom.contracts import Capabilities, CapabilityDenied, LLMExecutor, UsageError
from taskloom.sdk._plugins.host import (
    CODE_DIR,
    ENVELOPE_NAME,
    PluginHost,
    UnsignedPluginWarning,
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

STEP_PLUGIN = """
LOG = []

class P:
    async def setup(self, context):
        LOG.append(("setup", context.plugin_name))
        context.register_step("shout", self.shout)

    async def teardown(self):
        LOG.append(("teardown", "NAME"))

    async def shout(self, args):
        return str(args["text"]).upper() + "!"

plugin = P()
"""


class Sink:
    """Collects executors the way the engine's registry would (a taken id is an error)."""

    def __init__(self) -> None:
        self.executors: dict[str, LLMExecutor] = {}

    def register(self, executor_id: str, executor: LLMExecutor, /) -> None:
        if executor_id in self.executors:
            raise UsageError(f"executor {executor_id!r} is already registered")
        self.executors[executor_id] = executor

    def __contains__(self, executor_id: object, /) -> bool:
        return executor_id in self.executors


def make_plugin(
    base: Path,
    name: str,
    files: Mapping[str, str],
    key: PrivateKey | None,
    *,
    caps: Capabilities | None = None,
    entry_point: str | None = None,
    version: int = 1,
) -> Path:
    root = base / name
    code = root / CODE_DIR
    for rel, text in files.items():
        path = code / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    now = int(time.time())
    manifest = build_manifest(
        code,
        name=name,
        version=version,
        entry_point=entry_point or f"{name}:plugin",
        publisher="tests",
        capabilities=caps or Capabilities(steps=("shout",)),
        issued_at=now - 10,
        expires_at=now + 3600,
        min_sdk_version="0.1.0",
    )
    (root / ENVELOPE_NAME).write_bytes(sign_manifest(manifest, [key or generate_key()]))
    return root


@pytest.fixture
def key() -> PrivateKey:
    return generate_key()


@pytest.fixture
def trust(key: PrivateKey) -> TrustStore:
    store = TrustStore()
    store.add_key(key.public_key, plugins=["*"])
    return store


async def _host(
    trust: TrustStore | None, *, dev_mode: bool = False, secrets: Any = None
) -> tuple[PluginHost, Sink, MemoryStorage]:
    storage = MemoryStorage()
    sink = Sink()
    host = PluginHost(
        storage=storage,
        executors=sink,
        trust=trust,
        rollback=RollbackGuard(storage),
        secrets=secrets,
        dev_mode=dev_mode,
    )
    return host, sink, storage


async def test_pl5_verified_plugin_loads_and_its_step_runs(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A signed, trusted plugin is set up once and its step is callable under its name."""
    make_plugin(tmp_path, "alpha", {"alpha.py": STEP_PLUGIN}, key)
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded and report.verified, report.error
    assert report.steps == ("alpha.shout",)
    assert await host.steps["alpha.shout"]({"text": "hi"}) == "HI!"
    await host.aclose()
    assert host.steps == {}


async def test_pl5_teardown_in_reverse_order(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Plugins are torn down in the reverse order of their setup."""
    order: list[str] = []
    for name in ("one", "two", "three"):
        make_plugin(tmp_path, name, {f"{name}.py": STEP_PLUGIN}, key)
    host, _, _ = await _host(trust)
    reports = await host.load(discover([tmp_path], entry_points=False))
    assert all(r.loaded for r in reports)
    for name in host.loaded:
        module = sys.modules[f"taskloom_plugins.{name}.{name}"]
        module.P.teardown = _recorder(order, name)
    loaded = list(host.loaded)
    assert loaded == ["one", "three", "two"]
    await host.aclose()
    assert order == list(reversed(loaded))


def _recorder(order: list[str], name: str) -> Any:
    async def teardown(self: Any) -> None:
        order.append(name)

    return teardown


async def test_tampered_file_is_refused_and_others_still_load(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A file changed after signing stops that plugin only; the others load."""
    make_plugin(tmp_path, "good", {"good.py": STEP_PLUGIN}, key)
    bad = make_plugin(tmp_path, "bad", {"bad.py": STEP_PLUGIN}, key)
    (bad / CODE_DIR / "bad.py").write_text(STEP_PLUGIN.replace("upper()", "lower()"))
    host, _, _ = await _host(trust)
    reports = {r.name: r for r in await host.load(discover([tmp_path], entry_points=False))}
    assert reports["good"].loaded
    assert not reports["bad"].loaded
    assert reports["bad"].error_type == "FileDigestMismatch"
    assert "taskloom_plugins.bad.bad" not in sys.modules
    await host.aclose()


async def test_untrusted_key_is_refused(tmp_path: Path, trust: TrustStore) -> None:
    """A plugin signed by a key the trust store does not hold never loads."""
    make_plugin(tmp_path, "stranger", {"stranger.py": STEP_PLUGIN}, generate_key())
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.error_type == "ThresholdNotMet"


async def test_planted_pyc_is_refused(tmp_path: Path, key: PrivateKey, trust: TrustStore) -> None:
    """A .pyc dropped beside a verified .py is an unlisted file: the plugin is refused."""
    root = make_plugin(tmp_path, "pyc", {"pyc.py": STEP_PLUGIN}, key)
    cache = root / CODE_DIR / "__pycache__"
    cache.mkdir()
    (cache / "pyc.cpython-311.pyc").write_bytes(b"\x00" * 32)
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.error_type == "FileSetMismatch"


async def test_code_runs_from_verified_bytes_not_from_disk(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file swapped on disk right after verification never executes."""
    root = make_plugin(tmp_path, "swap", {"swap.py": STEP_PLUGIN}, key)
    host, _, _ = await _host(trust)
    original = host.verify

    async def verify_then_swap(source: Any) -> Any:
        result = await original(source)
        (root / CODE_DIR / "swap.py").write_text("raise SystemExit('swapped code ran')\n")
        return result

    monkeypatch.setattr(host, "verify", verify_then_swap)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert await host.steps["swap.shout"]({"text": "ok"}) == "OK!"
    await host.aclose()


async def test_plugin_module_cannot_shadow_an_installed_package(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin file named json.py lives under the plugin's private package, not as json."""
    import json

    files = {
        "shadow.py": STEP_PLUGIN + "\nfrom . import json as _mine\n",
        "json.py": "HIJACKED = True\n",
    }
    make_plugin(tmp_path, "shadow", files, key)
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert sys.modules["json"] is json and not hasattr(json, "HIJACKED")
    assert sys.modules["taskloom_plugins.shadow.json"].HIJACKED is True
    await host.aclose()


async def test_pl1_undeclared_step_is_denied_and_isolated(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Registering a step the manifest did not declare fails that plugin's setup only."""
    make_plugin(
        tmp_path, "sneaky", {"sneaky.py": STEP_PLUGIN}, key, caps=Capabilities(steps=("other",))
    )
    make_plugin(tmp_path, "honest", {"honest.py": STEP_PLUGIN}, key)
    host, _, _ = await _host(trust)
    reports = {r.name: r for r in await host.load(discover([tmp_path], entry_points=False))}
    assert reports["sneaky"].error_type == "CapabilityDenied"
    assert "shout" in (reports["sneaky"].error or "")
    assert reports["honest"].loaded
    assert "sneaky.shout" not in host.steps
    await host.aclose()


SECRET_PLUGIN = """
class P:
    async def setup(self, context):
        self.value = (await context.secret("api_token")).reveal()
        context.register_step("shout", self.shout)

    async def teardown(self):
        self.value = None

    async def shout(self, args):
        return len(self.value)

plugin = P()
"""


async def test_pl2_undeclared_secret_is_denied(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin asking for a secret it did not declare is refused before the store is asked."""
    secrets = MemorySecretStore()
    await secrets.set("api_token", "s3cr3t-value")
    make_plugin(tmp_path, "greedy", {"greedy.py": SECRET_PLUGIN}, key)
    make_plugin(
        tmp_path,
        "allowed",
        {"allowed.py": SECRET_PLUGIN},
        key,
        caps=Capabilities(steps=("shout",), secrets=("api_token",)),
    )
    host, _, _ = await _host(trust, secrets=secrets)
    reports = {r.name: r for r in await host.load(discover([tmp_path], entry_points=False))}
    assert reports["greedy"].error_type == "CapabilityDenied"
    assert "api_token" in (reports["greedy"].error or "")
    assert "s3cr3t-value" not in (reports["greedy"].error or "")
    assert reports["allowed"].loaded
    assert await host.steps["allowed.shout"]({}) == len("s3cr3t-value")
    await host.aclose()


STORAGE_PLUGIN = """
class P:
    async def setup(self, context):
        await context.storage.put("notes", "k", b"v")
        self.denied = None
        try:
            await context.storage.get("runs", "anything")
        except Exception as exc:
            self.denied = type(exc).__name__
        context.register_step("shout", self.shout)

    async def teardown(self):
        self.denied = None

    async def shout(self, args):
        return self.denied

plugin = P()
"""


async def test_pl3_storage_only_under_declared_namespaces(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin reads and writes only its declared namespaces, stored under its own prefix."""
    make_plugin(
        tmp_path,
        "keeper",
        {"keeper.py": STORAGE_PLUGIN},
        key,
        caps=Capabilities(steps=("shout",), storage_namespaces=("notes",)),
    )
    host, _, storage = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert await host.steps["keeper.shout"]({}) == "CapabilityDenied"
    record = await storage.get("plugin.keeper.notes", "k")
    assert record is not None and record.value == b"v"
    assert await storage.get("notes", "k") is None
    await host.aclose()


def test_pl4_check_url_admits_only_declared_hosts() -> None:
    """check_url passes declared hosts and refuses every other host."""
    from taskloom.sdk._plugins.context import HostedPluginContext

    ctx = HostedPluginContext(
        plugin_name="net",
        capabilities=Capabilities(network_hosts=("api.example.com",)),
        storage=MemoryStorage(),
        secrets=None,
    )
    ctx.check_url("https://api.example.com/v1/chat")
    for url in (
        "https://evil.example.com/",
        "http://api.example.com.evil.net/",
        "file:///etc/passwd",
    ):
        with pytest.raises(CapabilityDenied):
            ctx.check_url(url)


FAILING_PLUGIN = """
class P:
    async def setup(self, context):
        context.register_step("shout", self.shout)
        raise RuntimeError("setup exploded")

    async def teardown(self):
        raise AssertionError("never set up, never torn down")

    async def shout(self, args):
        return "should not be registered"

plugin = P()
"""


async def test_pl6_failing_setup_is_reported_and_leaves_nothing(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin whose setup raises is reported; none of its registrations remain."""
    make_plugin(tmp_path, "boom", {"boom.py": FAILING_PLUGIN}, key)
    make_plugin(tmp_path, "fine", {"fine.py": STEP_PLUGIN}, key)
    host, _, _ = await _host(trust)
    reports = {r.name: r for r in await host.load(discover([tmp_path], entry_points=False))}
    assert reports["boom"].error == "setup exploded"
    assert "boom.shout" not in host.steps
    assert reports["fine"].loaded
    await host.aclose()


async def test_dev_mode_loads_unsigned_with_a_warning(tmp_path: Path) -> None:
    """Development mode loads an unsigned plugin and warns on every load."""
    make_plugin(tmp_path, "draft", {"draft.py": STEP_PLUGIN}, None)
    for _ in range(2):
        host, _, _ = await _host(TrustStore(), dev_mode=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (report,) = await host.load(discover([tmp_path], entry_points=False))
        assert report.loaded and not report.verified
        assert any(issubclass(w.category, UnsignedPluginWarning) for w in caught)
        await host.aclose()


async def test_without_dev_mode_unsigned_is_refused(tmp_path: Path) -> None:
    """Outside development mode an unsigned plugin never loads."""
    make_plugin(tmp_path, "draft", {"draft.py": STEP_PLUGIN}, None)
    host, _, _ = await _host(TrustStore())
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded


EXECUTOR_PLUGIN = """
from taskloom.adapters.scripted import ScriptedExecutor

class P:
    async def setup(self, context):
        context.register_executor("shouter", ScriptedExecutor())

    async def teardown(self):
        return None

plugin = P()
"""


async def test_pl1_declared_executor_is_registered(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """An executor the manifest declares goes to the registry under its id."""
    make_plugin(
        tmp_path,
        "execs",
        {"execs.py": EXECUTOR_PLUGIN},
        key,
        caps=Capabilities(executors=("shouter",)),
    )
    host, sink, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert list(sink.executors) == ["shouter"]
    await host.aclose()


async def test_entry_point_plugins_are_discovered_without_importing_them(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pip-installed plugin is found by its taskloom.plugins entry point; its package's
    own __init__ never runs, and its code loads from the verified bytes."""
    site = tmp_path / "site"
    package = site / "epplug_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise SystemExit('the package was imported')\n")
    make_plugin(
        package.parent, "epplug_pkg", {"epplug.py": STEP_PLUGIN}, key, entry_point="epplug:plugin"
    )
    dist = site / "epplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[taskloom.plugins]\nepplug = epplug_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    sources = [s for s in discover([], entry_points=True) if s.origin == "entry point epplug"]
    assert [s.root for s in sources] == [package]
    host, _, _ = await _host(trust)
    (report,) = await host.load(sources)
    assert report.loaded, report.error
    assert "epplug_pkg" not in sys.modules
    assert await host.steps["epplug_pkg.shout"]({"text": "x"}) == "X!"
    await host.aclose()


def _plugin_modules(name: str) -> list[str]:
    base = f"taskloom_plugins.{name}"
    return [m for m in sys.modules if m == base or m.startswith(base + ".")]


async def test_entry_point_plugin_with_pip_compiled_caches_loads(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip compiles __pycache__ into an installed plugin's src/: it still loads, from the .py."""
    import py_compile

    site = tmp_path / "site"
    package = site / "pycplug_pkg"
    package.mkdir(parents=True)
    make_plugin(site, "pycplug_pkg", {"pycplug.py": STEP_PLUGIN}, key, entry_point="pycplug:plugin")
    code = package / CODE_DIR
    evil = tmp_path / "evil.py"
    evil.write_text("raise SystemExit('a compiled cache ran')\n")
    (code / "__pycache__").mkdir()
    py_compile.compile(str(evil), cfile=str(code / "__pycache__" / "pycplug.cpython-311.pyc"))
    dist = site / "pycplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pycplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[taskloom.plugins]\npycplug = pycplug_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    sources = [s for s in discover([], entry_points=True) if s.origin == "entry point pycplug"]
    host, _, _ = await _host(trust)
    (report,) = await host.load(sources)
    assert report.loaded, report.error
    assert await host.steps["pycplug_pkg.shout"]({"text": "x"}) == "X!"
    await host.aclose()
    # the same tree as a directory plugin stays strict: the cache is an unlisted file
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([site], entry_points=False))
    assert report.error_type == "FileSetMismatch"


async def test_failing_import_leaves_no_modules(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin whose module raises at import is reported; none of its modules stay loaded."""
    files = {
        "crash.py": "from . import helper\nraise RuntimeError('import exploded')\n",
        "helper.py": "X = 1\n",
    }
    make_plugin(tmp_path, "crash", files, key, entry_point="crash:plugin")
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.error == "import exploded" and report.verified
    assert _plugin_modules("crash") == []
    with pytest.raises(ModuleNotFoundError):
        __import__("taskloom_plugins.crash.helper")
    await host.aclose()


async def test_system_exit_in_a_plugin_is_isolated(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """sys.exit() in a plugin's module or setup fails that plugin only; the host goes on."""
    make_plugin(tmp_path, "quitter", {"quitter.py": "raise SystemExit(3)\n"}, key)
    setup_exit = STEP_PLUGIN.replace("context.register_step", "raise SystemExit(4)\n        _ = ")
    make_plugin(tmp_path, "quitter2", {"quitter2.py": setup_exit}, key)
    make_plugin(tmp_path, "stayer", {"stayer.py": STEP_PLUGIN}, key)
    host, _, _ = await _host(trust)
    reports = {r.name: r for r in await host.load(discover([tmp_path], entry_points=False))}
    assert reports["quitter"].error_type == "SystemExit"
    assert reports["quitter2"].error_type == "SystemExit"
    assert reports["stayer"].loaded
    assert _plugin_modules("quitter") == [] and _plugin_modules("quitter2") == []
    await host.aclose()


async def test_names_that_share_a_package_cannot_both_load(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """foo-bar and foo_bar map to one private package: the second is refused, the first intact."""
    make_plugin(tmp_path, "foo-bar", {"mod.py": STEP_PLUGIN}, key, entry_point="mod:plugin")
    make_plugin(
        tmp_path,
        "foo_bar",
        {"mod.py": STEP_PLUGIN.replace("upper()", "lower()")},
        key,
        entry_point="mod:plugin",
    )
    host, _, _ = await _host(trust)
    reports = {r.name: r for r in await host.load(discover([tmp_path], entry_points=False))}
    assert reports["foo-bar"].loaded
    assert not reports["foo_bar"].loaded and "clashes" in (reports["foo_bar"].error or "")
    assert await host.steps["foo-bar.shout"]({"text": "x"}) == "X!"
    assert "upper" in str(sys.modules["taskloom_plugins.foo_bar.mod"].P.shout.__code__.co_names)
    await host.aclose()


async def test_a_second_host_cannot_swap_a_loaded_plugins_modules(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Two hosts in one process: the second is refused the first one's plugin package."""
    make_plugin(tmp_path, "shared", {"shared.py": STEP_PLUGIN}, key)
    first, _, _ = await _host(trust)
    second, _, _ = await _host(trust)
    assert (await first.load(discover([tmp_path], entry_points=False)))[0].loaded
    module = sys.modules["taskloom_plugins.shared.shared"]
    (report,) = await second.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and "another plugin host" in (report.error or "")
    await second.aclose()
    assert sys.modules["taskloom_plugins.shared.shared"] is module
    await first.aclose()
    assert _plugin_modules("shared") == []
    third, _, _ = await _host(trust)
    assert (await third.load(discover([tmp_path], entry_points=False)))[0].loaded
    await third.aclose()


TWO_EXECUTORS = """
from taskloom.adapters.scripted import ScriptedExecutor

class P:
    async def setup(self, context):
        context.register_executor("fresh", ScriptedExecutor())
        context.register_executor("taken", ScriptedExecutor())

    async def teardown(self):
        TORN.append(True)

TORN = []
plugin = P()
"""


async def test_a_taken_executor_id_refuses_the_whole_plugin(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """If one executor id is taken, none of the plugin's executors is registered; it is torn
    down and unloaded."""
    from taskloom.adapters.scripted import ScriptedExecutor

    make_plugin(
        tmp_path,
        "greedy_exec",
        {"greedy_exec.py": TWO_EXECUTORS},
        key,
        caps=Capabilities(executors=("fresh", "taken")),
    )
    host, sink, _ = await _host(trust)
    sink.register("taken", ScriptedExecutor())
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and "taken" in (report.error or "")
    assert list(sink.executors) == ["taken"]
    assert _plugin_modules("greedy_exec") == []
    await host.aclose()


KEEPER_PLUGIN = """
class P:
    async def setup(self, context):
        KEPT.append(context)
        context.register_step("shout", self.shout)
        if FAIL:
            raise RuntimeError("setup failed after keeping its context")

    async def teardown(self):
        return None

    async def shout(self, args):
        return "x"

KEPT = []
FAIL = FAIL_FLAG
plugin = P()
"""


async def test_a_kept_context_is_closed_after_setup_and_revoked_at_teardown(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """After setup, registering is refused; after teardown, secrets and storage too."""
    secrets = MemorySecretStore()
    await secrets.set("token", "s3cr3t")
    source = KEEPER_PLUGIN.replace("FAIL_FLAG", "False")
    caps = Capabilities(steps=("shout",), secrets=("token",), storage_namespaces=("notes",))
    make_plugin(tmp_path, "keeper2", {"keeper2.py": source}, key, caps=caps)
    host, _, _ = await _host(trust, secrets=secrets)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    kept = sys.modules["taskloom_plugins.keeper2.keeper2"].KEPT[0]
    with pytest.raises(CapabilityDenied, match="after its setup returned"):
        kept.register_step("shout", kept)
    assert (await kept.secret("token")).reveal() == "s3cr3t"
    await kept.storage.put("notes", "k", b"v")
    await host.aclose()
    with pytest.raises(CapabilityDenied):
        await kept.secret("token")
    with pytest.raises(CapabilityDenied):
        await kept.storage.get("notes", "k")
    with pytest.raises(CapabilityDenied):
        kept.register_step("shout", kept)


async def test_a_failed_plugins_context_is_revoked(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context kept by a plugin whose setup failed grants nothing any more."""
    from taskloom.sdk._plugins import host as _plugin_host
    from taskloom.sdk._plugins.context import HostedPluginContext

    captured: list[HostedPluginContext] = []

    class Capturing(HostedPluginContext):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            captured.append(self)

    monkeypatch.setattr(_plugin_host, "HostedPluginContext", Capturing)
    secrets = MemorySecretStore()
    await secrets.set("token", "s3cr3t")
    caps = Capabilities(steps=("shout",), secrets=("token",), storage_namespaces=("notes",))
    source = KEEPER_PLUGIN.replace("FAIL_FLAG", "True")
    make_plugin(tmp_path, "keeper3", {"keeper3.py": source}, key, caps=caps)
    host, _, _ = await _host(trust, secrets=secrets)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded
    (kept,) = captured
    with pytest.raises(CapabilityDenied):
        await kept.secret("token")
    with pytest.raises(CapabilityDenied):
        await kept.storage.put("notes", "k", b"v")
    await host.aclose()


async def test_unknown_plugin_submodules_never_reach_other_finders(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A name under taskloom_plugins that is not a verified file is refused, even if another
    finder on sys.meta_path (an editable-install hook, say) would serve it."""
    import importlib.abc
    import importlib.util

    asked: list[str] = []

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname.startswith("taskloom_plugins."):
                asked.append(fullname)
                return importlib.util.spec_from_loader(fullname, loader=None)
            return None

    probe = STEP_PLUGIN + (
        "\ntry:\n    from . import planted\n    FOUND = True\n"
        "except ImportError:\n    FOUND = False\n"
    )
    make_plugin(tmp_path, "probe", {"probe.py": probe}, key)
    hook = Hook()
    sys.meta_path.append(hook)
    try:
        host, _, _ = await _host(trust)
        (report,) = await host.load(discover([tmp_path], entry_points=False))
    finally:
        sys.meta_path.remove(hook)
    assert report.loaded, report.error
    assert sys.modules["taskloom_plugins.probe.probe"].FOUND is False
    assert asked == []
    await host.aclose()


async def test_a_root_package_from_disk_blocks_loading(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If some installed 'taskloom_plugins' was imported, no plugin loads under it."""
    import types

    make_plugin(tmp_path, "under", {"under.py": STEP_PLUGIN}, key)
    impostor = types.ModuleType("taskloom_plugins")
    impostor.__path__ = [str(tmp_path)]
    monkeypatch.setitem(sys.modules, "taskloom_plugins", impostor)
    host, _, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and "already imported" in (report.error or "")
    await host.aclose()


async def test_broken_entry_points_are_reported_not_raised(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed distribution whose entry point names nothing loadable is reported as a
    failed plugin; discovery and the other plugins go on."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "plainmod.py").write_text("X = 1\n")
    dist = site / "broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[taskloom.plugins]\nempty = :x\nmissing = no_such_pkg_zz\nplain = plainmod\n"
    )
    monkeypatch.syspath_prepend(str(site))
    make_plugin(tmp_path / "dirs", "fine", {"fine.py": STEP_PLUGIN}, key)
    sources = discover([tmp_path / "dirs"], entry_points=True)
    broken = [
        s
        for s in sources
        if s.origin in {f"entry point {n}" for n in ("empty", "missing", "plain")}
    ]
    assert len(broken) == 3
    host, _, _ = await _host(trust)
    reports = {r.source: r for r in await host.load([*broken, sources[0]])}
    assert reports[str(tmp_path / "dirs" / "fine")].loaded
    failed = [r for r in reports.values() if not r.loaded]
    assert len(failed) == 3
    assert all("names no installed plugin package" in (r.error or "") for r in failed)
    await host.aclose()


HTTP_EXECUTOR_PLUGIN = """
from taskloom.adapters.openai import OpenAIExecutor

class P:
    async def setup(self, context):
        context.register_executor("remote", OpenAIExecutor(base_url="URL", model="m"))

    async def teardown(self):
        return None

plugin = P()
"""


@pytest.mark.parametrize(
    ("url", "loads"),
    [
        ("https://api.example.com/v1", True),
        ("https://evil.example.net/v1", False),
        ("http://api.example.com.evil.net/v1", False),
    ],
)
async def test_pl4_http_executors_only_reach_declared_hosts(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, url: str, loads: bool
) -> None:
    """An HTTP executor a plugin registers must point at a host its manifest declared."""
    caps = Capabilities(executors=("remote",), network_hosts=("api.example.com",))
    source = HTTP_EXECUTOR_PLUGIN.replace("URL", url)
    make_plugin(tmp_path, "remote", {"remote.py": source}, key, caps=caps)
    host, sink, _ = await _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded is loads, report.error
    assert ("remote" in sink.executors) is loads
    if not loads:
        assert report.error_type == "CapabilityDenied" and "network host" in (report.error or "")
    await host.aclose()


async def test_dev_mode_logs_every_unverified_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each unverified load is logged, even where the warnings filter shows a warning once."""
    make_plugin(tmp_path, "draft2", {"draft2.py": STEP_PLUGIN}, None)
    caplog.set_level(logging.WARNING, logger="taskloom.plugins")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("once")
        for _ in range(2):
            host, _, _ = await _host(TrustStore(), dev_mode=True)
            (report,) = await host.load(discover([tmp_path], entry_points=False))
            assert report.loaded and not report.verified
            await host.aclose()
    unverified = [r for r in caplog.records if "WITHOUT verification" in r.getMessage()]
    assert len(unverified) == 2


async def test_dev_mode_never_loads_a_plugin_signed_by_a_revoked_key(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Revocation is explicit distrust: development mode does not override it."""
    make_plugin(tmp_path, "revoked", {"revoked.py": STEP_PLUGIN}, key)
    trust.revoke(key.key_id)
    host, _, _ = await _host(trust, dev_mode=True)
    with warnings.catch_warnings(record=True):
        (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.error_type == "KeyRevoked"
    assert _plugin_modules("revoked") == []
    await host.aclose()
