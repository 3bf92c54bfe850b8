"""One taskloom.toml serves both the CLI and Engine.from_config."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskloom.contracts import SecretStoreUnavailable, UsageError
from taskloom.sdk import Engine
from taskloom.sdk._cli.context import open_storage
from taskloom.sdk._config.toml import load_config

CONFIG = """
[storage]
kind = "sqlite"
path = "runs.db"
synchronous = "FULL"

[engine]
max_concurrency = 8
lease_ttl_s = 10

[executors.local]
type = "scripted"

[plugins]
dirs = ["plugins"]
trust = "trust.json"

[secrets]
path = "secrets.bin"

[keys]
dir = "keys"
"""

PIPELINE = {
    "taskloom": "pipeline/v1",
    "name": "p",
    "steps": [{"id": "a", "prompt": "hi"}],
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taskloom.toml"
    path.write_text(text)
    return path


async def test_engine_reads_the_cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine.from_config runs on the CLI's file; its secret file opens only when used."""
    monkeypatch.delenv("TASKLOOM_SECRETS_PASSPHRASE", raising=False)
    config = write(tmp_path, CONFIG)
    async with Engine.from_config(config) as engine:
        result = await engine.run(PIPELINE)
        assert result.status == "succeeded"
        with pytest.raises(SecretStoreUnavailable, match="TASKLOOM_SECRETS_PASSPHRASE"):
            await engine.secrets.get("anything")  # type: ignore[union-attr]
    assert (tmp_path / "runs.db").is_file()


async def test_engine_secret_file_works_with_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the passphrase set, the engine's secret file stores and returns values."""
    monkeypatch.setenv("TASKLOOM_SECRETS_PASSPHRASE", "a long enough passphrase")
    config = write(tmp_path, CONFIG)
    async with Engine.from_config(config) as engine:
        secrets = engine.secrets
        assert secrets is not None
        await secrets.set("api_token", "value-123")
        assert (await secrets.get("api_token")).reveal() == "value-123"
    assert (tmp_path / "secrets.bin").is_file()


async def test_cli_reads_the_same_file_and_passes_storage_options(tmp_path: Path) -> None:
    """The CLI resolves the same file, and passes [storage] options to the adapter."""
    config = load_config(str(write(tmp_path, CONFIG)))
    assert config.storage_options == {"synchronous": "FULL"}
    assert config.secrets_kind == "default"
    assert config.lease_ttl_s == 10
    storage = await open_storage(config)
    try:
        assert getattr(storage, "_synchronous", None) == "FULL"
    finally:
        await storage.aclose()


def test_cli_refuses_options_of_another_storage_kind(tmp_path: Path) -> None:
    """A filesystem option under a sqlite store is a usage error naming it."""
    text = CONFIG.replace('synchronous = "FULL"', "fsync = false")
    with pytest.raises(UsageError, match="fsync"):
        load_config(str(write(tmp_path, text)))


def test_cli_secrets_kind_is_checked(tmp_path: Path) -> None:
    """[secrets] kind accepts default, env and file only."""
    for kind in ("env", "file", "default"):
        text = CONFIG.replace('path = "secrets.bin"', f'kind = "{kind}"\npath = "secrets.bin"')
        assert load_config(str(write(tmp_path, text))).secrets_kind == kind
    bad = CONFIG.replace('path = "secrets.bin"', 'kind = "plaintext"')
    with pytest.raises(UsageError, match="plaintext"):
        load_config(str(write(tmp_path, bad)))


def test_durability_reads_the_same_in_the_cli_and_the_engine(tmp_path: Path) -> None:
    """[engine] durability is accepted by both parsers; a bad value is refused by both."""
    config = write(
        tmp_path, CONFIG.replace("lease_ttl_s = 10", 'lease_ttl_s = 10\ndurability = "sync"')
    )
    assert load_config(str(config)).durability == "sync"
    assert load_config(str(config)).as_dict()["engine"]["durability"] == "sync"
    assert Engine.from_config(config).durability == "sync"
    assert load_config(str(write(tmp_path, CONFIG))).durability == "async"
    bad = write(
        tmp_path, CONFIG.replace("lease_ttl_s = 10", 'lease_ttl_s = 10\ndurability = "now"')
    )
    with pytest.raises(UsageError, match="durability"):
        load_config(str(bad))
    with pytest.raises(UsageError, match="durability"):
        Engine.from_config(bad)


async def test_from_config_takes_the_readmes_default_secrets_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kind = "default"`, as the README writes it, works in Engine.from_config (it raised),
    and reads a TASKLOOM_SECRET_* variable with no keyring or passphrase."""
    monkeypatch.delenv("TASKLOOM_SECRETS_PASSPHRASE", raising=False)
    monkeypatch.setenv("TASKLOOM_SECRET_OPENAI_API_KEY", "sk-from-env")
    config = write(tmp_path, '[secrets]\nkind = "default"\npath = "secrets.bin"\n')
    async with Engine.from_config(config) as engine:
        assert engine.secrets is not None
        assert (await engine.secrets.get("openai_api_key")).reveal() == "sk-from-env"


async def test_from_config_without_a_secrets_table_gets_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without [secrets] the engine still has the default store (it had none at all)."""
    monkeypatch.delenv("TASKLOOM_SECRETS_PASSPHRASE", raising=False)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TASKLOOM_SECRET_API_TOKEN", "t-123")
    config = write(tmp_path, '[executors.local]\ntype = "scripted"\n')
    async with Engine.from_config(config) as engine:
        assert engine.secrets is not None
        assert (await engine.secrets.get("api_token")).reveal() == "t-123"
        assert type(engine.storage).__name__ == "MemoryStorage"  # the engine's own default


async def test_env_variables_count_without_keyring_or_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default chain reads TASKLOOM_SECRET_* with no keyring and no passphrase; a secret
    no variable holds fails closed with a hint naming every fix."""
    from taskloom.adapters.secrets import _default as default_chain
    from taskloom.adapters.secrets import open_default_secret_store

    async def no_keyring(*_args: object, **_kwargs: object) -> None:
        raise SecretStoreUnavailable("no keyring backend")

    monkeypatch.setattr(default_chain.KeyringSecretStore, "open", no_keyring)
    environ = {"TASKLOOM_SECRET_OPENAI_API_KEY": "sk-env"}
    store = await open_default_secret_store(path=tmp_path / "s.bin", environ=environ)
    try:
        assert (await store.get("openai_api_key")).reveal() == "sk-env"
        with pytest.raises(SecretStoreUnavailable) as missing:
            await store.get("other_key")
        hint = str(missing.value)
        assert "TASKLOOM_SECRET_OTHER_KEY" in hint
        assert "TASKLOOM_SECRETS_PASSPHRASE" in hint and "keyring" in hint
        assert "\n" not in hint
        with pytest.raises(SecretStoreUnavailable, match="TASKLOOM_SECRETS_PASSPHRASE"):
            await store.set("other_key", "value")
    finally:
        await store.aclose()


def test_one_parser_reads_the_file_for_both(tmp_path: Path) -> None:
    """A mistake the CLI refuses, Engine.from_config refuses with the same message."""
    bad = write(tmp_path, CONFIG.replace("lease_ttl_s = 10", "lease_ttl_s = 10\nturbo = 1"))
    with pytest.raises(UsageError) as by_cli:
        load_config(str(bad))
    with pytest.raises(UsageError) as by_engine:
        Engine.from_config(bad)
    assert str(by_cli.value) == str(by_engine.value)
