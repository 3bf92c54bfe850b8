"""A secret a plugin reads through a host wired to the engine's registry is masked by the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plugin_host import make_plugin

from taskloom.adapters.memory import MemorySecretStore, MemoryStorage
from taskloom.contracts import Capabilities, StepFailed
from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk._plugins.host import PluginHost, discover
from taskloom.security import RollbackGuard, TrustStore, generate_key

LEAKY_PLUGIN = """
class P:
    async def setup(self, context):
        self.value = (await context.secret("api_token")).reveal()
        context.register_step("shout", self.shout)

    async def teardown(self):
        self.value = None

    async def shout(self, args):
        raise RuntimeError("upstream refused token " + self.value)

plugin = P()
"""
_VALUE = "plugin-token-7a1c9e3f5b"  # a module constant: a traceback's locals never show it


async def test_a_plugins_secret_is_masked_in_the_engines_errors_and_events(
    tmp_path: Path,
) -> None:
    """An embedded engine (no redactor) masks a secret its plugin read, in error and record."""
    key = generate_key()
    trust = TrustStore()
    trust.add_key(key.public_key, plugins=["*"])
    make_plugin(
        tmp_path,
        "leaky",
        {"leaky.py": LEAKY_PLUGIN},
        key,
        caps=Capabilities(steps=("shout",), secrets=("api_token",)),
    )
    secrets = MemorySecretStore()
    await secrets.set("api_token", _VALUE)
    registry = ExecutorRegistry()
    storage = MemoryStorage()
    host = PluginHost(
        storage=storage,
        executors=registry,
        trust=trust,
        rollback=RollbackGuard(storage),
        secrets=secrets,
    )
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    pipeline = {
        "taskloom": "pipeline/v1",
        "name": "t",
        "steps": [{"id": "a", "uses": "leaky.shout", "retry": {"max_attempts": 1}}],
    }
    async with Engine(registry=registry, plugin_steps=host.steps) as engine:
        handle = engine.start(pipeline)
        with pytest.raises(StepFailed) as caught:
            await handle.result()
        stored = await engine.runstore.events(handle.run_id)
        record = await engine.runstore.load_run(handle.run_id)
    await host.aclose()
    assert "upstream refused token" in str(caught.value)
    for text in (str(caught.value), repr(stored), repr(record)):
        assert _VALUE not in text
