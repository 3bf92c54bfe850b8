"""``[storage] kind = "postgres"``: the DSN from a secret reference or the environment,
never as a plain-text password in the file; options checked; the CLI alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskloom.adapters.postgres import PostgresStorage
from taskloom.adapters.secrets import EnvSecretStore
from taskloom.contracts import UsageError
from taskloom.sdk import Engine
from taskloom.sdk._config.build import make_storage
from taskloom.sdk._config.toml import load_config

PASSWORD = "s3cret-config-pw"


def test_secret_reference_is_looked_up_when_the_store_opens(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """dsn = { secret = "pg_dsn" } reads the secret store only when the store opens."""
    monkeypatch.setenv("TASKLOOM_SECRET_PG_DSN", postgres_dsn)
    storage = make_storage(
        {"kind": "postgres", "dsn": {"secret": "pg_dsn"}, "schema": "tl_cfg_secret"},
        tmp_path,
        EnvSecretStore(),
    )
    assert isinstance(storage, PostgresStorage)
    assert storage.where == ""  # not fetched yet

    async def main() -> None:
        async with storage:
            await storage.put("ns", "k", b"v")
            assert (await storage.get("ns", "k")) is not None
            assert storage.where.endswith("/postgres")

    asyncio.run(main())


def test_engine_from_config_uses_the_secrets_section(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Engine.from_config builds PostgresStorage with the DSN from [secrets] kind = "env"."""
    monkeypatch.setenv("TASKLOOM_SECRET_PG_DSN", postgres_dsn)
    config = tmp_path / "taskloom.toml"
    config.write_text(
        '[storage]\nkind = "postgres"\ndsn = { secret = "pg_dsn" }\nschema = "tl_cfg_engine"\n'
        '[secrets]\nkind = "env"\n'
    )
    engine = Engine.from_config(config)

    async def main() -> None:
        async with engine:
            assert isinstance(engine.storage, PostgresStorage)
            await engine.storage.put("ns", "k", b"v")
            assert engine.storage.where.endswith("/postgres")

    asyncio.run(main())


def test_no_dsn_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a dsn key the adapter reads TASKLOOM_POSTGRES_DSN, and says so when unset."""
    monkeypatch.setenv("TASKLOOM_POSTGRES_DSN", "postgresql://app@db.example:6543/app")
    storage = make_storage({"kind": "postgres"}, tmp_path)
    assert storage.where == "app@db.example:6543/app"
    monkeypatch.delenv("TASKLOOM_POSTGRES_DSN")
    with pytest.raises(UsageError, match="TASKLOOM_POSTGRES_DSN"):
        make_storage({"kind": "postgres"}, tmp_path)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{PASSWORD}@db.example/app",
        f"host=db.example user=app password={PASSWORD}",
    ],
)
def test_a_plain_text_password_in_the_file_is_refused(dsn: str, tmp_path: Path) -> None:
    """A DSN with a password written into the config is refused, without echoing it."""
    with pytest.raises(UsageError, match="secret") as caught:
        make_storage({"kind": "postgres", "dsn": dsn}, tmp_path)
    assert PASSWORD not in str(caught.value)


def test_a_secret_reference_needs_a_secret_store(tmp_path: Path) -> None:
    """dsn = { secret = ... } without any secret store is a UsageError saying what to add."""
    with pytest.raises(UsageError, match=r"\[secrets\]"):
        make_storage({"kind": "postgres", "dsn": {"secret": "pg_dsn"}}, tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "postgres", "dsn": {"secret": "x", "extra": 1}}, "must be text or"),
        ({"kind": "postgres", "dsn": 5}, "must be text or"),
        ({"kind": "postgres", "dsn": "host=h", "path": "x.db"}, "do not apply"),
        ({"kind": "postgres", "dsn": "host=h", "max_size": 0}, "max_size"),
        ({"kind": "postgres", "dsn": "host=h", "schema": "Bad-Name"}, "schema"),
    ],
)
def test_bad_postgres_options_are_usage_errors(
    table: dict[str, object], message: str, tmp_path: Path
) -> None:
    """Every wrong option of kind "postgres" is a UsageError naming it."""
    with pytest.raises(UsageError, match=message):
        make_storage(table, tmp_path)


def test_cli_config_accepts_postgres_and_refuses_a_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI's config knows kind "postgres": its options pass, a path is refused."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "taskloom.toml"
    config.write_text('[storage]\nkind = "postgres"\ndsn = { secret = "pg_dsn" }\nmax_size = 4\n')
    loaded = load_config(str(config))
    assert loaded.storage_kind == "postgres"
    assert loaded.storage_options == {"dsn": {"secret": "pg_dsn"}, "max_size": 4}
    config.write_text('[storage]\nkind = "postgres"\npath = "x.db"\n')
    with pytest.raises(UsageError, match="takes no path"):
        load_config(str(config))
