"""``Engine.from_config("taskloom.toml")``: an engine described by a small TOML file.

```toml
[engine]
max_concurrency = 16        # global limit on concurrent executor / plugin calls
lease_ttl_s = 30
durability = "async"        # or "sync": each step waits until its checkpoint is durable

[storage]
kind = "sqlite"             # "memory" (default), "sqlite", "filesystem", "postgres" or "none"
path = "runs.db"            # relative paths are relative to this file
# kind = "postgres" takes no path: dsn = { secret = "pg_dsn" } or TASKLOOM_POSTGRES_DSN
# any other key is passed to the adapter's constructor (synchronous = "FULL", fsync = false)

[secrets]
kind = "env"                # optional: read secrets from TASKLOOM_SECRET_<NAME>

[executors.local]
type = "scripted"           # resolved as documented in taskloom.sdk._registry
default_model = "echo"      # engine-side settings: default_model, concurrency,
concurrency = 4             #   requests_per_minute, tokens_per_minute
# every other key goes to the type's from_config(settings, secrets)
```

Storage adapters are imported lazily by kind, so a config that uses SQLite
never imports the file store and vice versa. The file is read with the
standard library's ``tomllib``; a file that is not valid TOML, an unknown
section or an unknown kind is a ``UsageError`` that names the file.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

from taskloom.contracts import TaskloomError, UsageError
from taskloom.sdk._config.postgres import make_postgres_storage
from taskloom.sdk._registry import ExecutorRegistry

STORAGE_KINDS: dict[str, tuple[str, str] | None] = {
    "memory": ("taskloom.adapters.memory", "MemoryStorage"),
    "sqlite": ("taskloom.adapters.sqlite", "SQLiteStorage"),
    "filesystem": ("taskloom.adapters.filesystem", "FileStorage"),
    "postgres": ("taskloom.adapters.postgres", "PostgresStorage"),
    "none": None,
}
_SECTIONS = ("engine", "storage", "secrets", "executors", "plugins", "keys", "server")
"""``plugins`` and ``keys`` belong to the CLI (``taskloom.sdk._config.toml``) and
``server`` to ``taskloom.sdk.server``; an engine built from the same file ignores them."""
_ENGINE_KEYS = ("max_concurrency", "lease_ttl_s", "durability")


def read_config(path: str | Path) -> dict[str, Any]:
    """Parse ``path`` as TOML and check its sections."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read config {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {file} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise UsageError(
            f"config {file}: unknown section(s) {', '.join(unknown)}; "
            f"known sections: {', '.join(_SECTIONS)}"
        )
    return data


def make_storage(table: dict[str, Any], base: Path, secrets: Any = None) -> Any:
    """The storage adapter a ``[storage]`` table describes (not opened yet).

    ``secrets`` resolves a PostgreSQL DSN given as ``{ secret = "name" }``.
    """
    options = dict(table)
    kind = options.pop("kind", "memory")
    if kind not in STORAGE_KINDS:
        raise UsageError(f"unknown storage kind {kind!r}; known kinds: {', '.join(STORAGE_KINDS)}")
    if kind == "postgres":
        return make_postgres_storage(options, secrets, where=f"config in {base}")
    target = STORAGE_KINDS[kind]
    if target is None:
        if options:
            raise UsageError(f"storage kind 'none' takes no options, got {sorted(options)}")
        return None
    module_name, class_name = target
    cls = getattr(importlib.import_module(module_name), class_name)
    if kind == "memory":
        return cls(**options)
    if "path" not in options:
        raise UsageError(f"storage kind {kind!r} needs a 'path'")
    location = Path(options.pop("path")).expanduser()
    if not location.is_absolute():
        location = base / location
    try:
        return cls(location, **options)
    except TypeError as exc:
        raise UsageError(f"storage {kind!r}: invalid option(s): {exc}") from exc


def make_secrets(table: dict[str, Any], base: Path | None = None) -> Any:
    """The secret store a ``[secrets]`` table describes.

    ``kind = "env"``: ``TASKLOOM_SECRET_<NAME>`` variables. ``kind = "file"`` (or a
    ``path`` with no kind, as the CLI writes it): the encrypted file at ``path``, its
    passphrase from ``TASKLOOM_SECRETS_PASSPHRASE``, opened when first asked.
    """
    kind = table.get("kind", "file" if "path" in table else None)
    if kind == "env":
        from taskloom.adapters.secrets import EnvSecretStore

        return EnvSecretStore()
    if kind in ("file", "default") and "path" in table:
        location = Path(str(table["path"])).expanduser()
        if base is not None and not location.is_absolute():
            location = base / location
        return _LazyFileSecrets(location)
    raise UsageError(
        f'unknown secrets kind {kind!r}: use kind = "env", or path = "..." for the encrypted '
        "file, or pass secrets= to Engine.from_config"
    )


class _LazyFileSecrets:
    """The encrypted secret file, opened on first use: an engine whose pipelines need
    no secret must start without the passphrase."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._store: Any = None

    def _opened(self) -> Any:
        if self._store is None:
            from taskloom.adapters.secrets import EncryptedFileSecretStore

            self._store = EncryptedFileSecretStore.from_env(self._path)
        return self._store

    async def get(self, name: str, /) -> Any:
        return await self._opened().get(name)

    async def set(self, name: str, value: Any, /) -> None:
        await self._opened().set(name, value)

    async def delete(self, name: str, /) -> bool:
        return bool(await self._opened().delete(name))

    async def names(self) -> list[str]:
        return list(await self._opened().names())

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()


def engine_from_config(engine_cls: Any, path: str | Path, **overrides: Any) -> Any:
    """Build ``engine_cls`` from the config at ``path``; keyword overrides win."""
    file = Path(path)
    data = read_config(file)
    engine_table = dict(data.get("engine", {}))
    unknown = sorted(set(engine_table) - set(_ENGINE_KEYS))
    if unknown:
        raise UsageError(f"config {file}: unknown [engine] key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = dict(engine_table)
    owned: list[Any] = []
    if "secrets" not in overrides and "secrets" in data:
        kwargs["secrets"] = make_secrets(dict(data["secrets"]), file.parent)
        owned.append(kwargs["secrets"])
    secrets = overrides.get("secrets", kwargs.get("secrets"))
    if "registry" not in overrides:
        registry = ExecutorRegistry()
        for executor_id, table in dict(data.get("executors", {})).items():
            if not isinstance(table, dict):
                raise UsageError(f"config {file}: [executors.{executor_id}] must be a table")
            try:
                registry.register_config(executor_id, table, secrets=secrets)
            except TaskloomError as exc:
                raise UsageError(f"config {file}: executor {executor_id!r}: {exc}") from exc
        kwargs["registry"] = registry
    storage_given = "storage" in overrides
    if not storage_given:
        kwargs["storage"] = make_storage(dict(data.get("storage", {})), file.parent, secrets)
    kwargs.update(overrides)
    engine = engine_cls(**kwargs)
    if not storage_given and kwargs["storage"] is not None:
        engine._owns_storage = True
    engine.owned_resources.extend(r for r in owned if hasattr(r, "aclose"))
    return engine
