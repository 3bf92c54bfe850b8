"""``Engine.from_config("taskloom.toml")``: an engine from the CLI's own file.

The file is read by the one parser the CLI uses (``taskloom.sdk._config.toml``:
every section, key and kind checked, a mistake is a one-line ``UsageError`` that
names the file), so it means the same to both:

```toml
[engine]
max_concurrency = 16        # global limit on concurrent executor / plugin calls
lease_ttl_s = 30
durability = "async"        # or "sync": each step waits until its checkpoint is durable

[storage]
kind = "sqlite"             # "sqlite" (its default path: the user's data directory, as
path = "runs.db"            # the CLI), "filesystem", "memory", "postgres" or "none";
                            # relative paths are relative to this file

[secrets]
kind = "default"            # environment, then keyring, then the file (also without
path = "secrets.bin"        # this table); or "env", "file"

[executors.local]
type = "scripted"           # resolved as documented in taskloom.sdk._registry
default_model = "echo"      # engine-side settings: default_model, concurrency,
concurrency = 4             #   requests_per_minute, tokens_per_minute
```

Two engine defaults differ from the CLI's, where the file is silent: without a
``[storage]`` table the engine keeps its runs in memory (as ``Engine()`` does),
and without ``max_concurrency`` it sets no global limit. ``[plugins]``, ``[keys]``
and ``[server]`` belong to the CLI and ``taskloom serve``. Storage adapters are
imported lazily by kind.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from taskloom.contracts import TaskloomError, UsageError
from taskloom.sdk._config.postgres import make_postgres_storage
from taskloom.sdk._config.secrets import ConfiguredSecrets
from taskloom.sdk._config.toml import CliConfig, read_config
from taskloom.sdk._registry import ExecutorRegistry

STORAGE_KINDS: dict[str, tuple[str, str] | None] = {
    "memory": ("taskloom.adapters.memory", "MemoryStorage"),
    "sqlite": ("taskloom.adapters.sqlite", "SQLiteStorage"),
    "filesystem": ("taskloom.adapters.filesystem", "FileStorage"),
    "postgres": ("taskloom.adapters.postgres", "PostgresStorage"),
    "none": None,
}


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


def make_telemetry(settings: dict[str, bool]) -> Any:
    """What ``Engine(telemetry=...)`` gets for a checked ``[telemetry]`` table: False when
    disabled (opentelemetry is then never imported), else a ``Telemetry``."""
    if not settings.get("enabled"):
        return False
    from taskloom.sdk._telemetry.tracing import Telemetry

    return Telemetry(capture_content=settings.get("capture_content", False))


def engine_from_config(engine_cls: Any, path: str | Path, **overrides: Any) -> Any:
    """Build ``engine_cls`` from the config at ``path``; keyword overrides win."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"cannot read config {file}: no such file")
    config = read_config(file)
    kwargs: dict[str, Any] = {"lease_ttl_s": config.lease_ttl_s, "durability": config.durability}
    if "engine.max_concurrency" in config.given:
        kwargs["max_concurrency"] = config.max_concurrency
    owned: list[Any] = []
    if "secrets" not in overrides:
        kwargs["secrets"] = ConfiguredSecrets(config)
        owned.append(kwargs["secrets"])
    secrets = overrides.get("secrets", kwargs.get("secrets"))
    if "registry" not in overrides:
        registry = ExecutorRegistry()
        for executor_id, table in config.executors.items():
            try:
                registry.register_config(executor_id, table, secrets=secrets)
            except TaskloomError as exc:
                raise UsageError(f"config {file}: executor {executor_id!r}: {exc}") from exc
        kwargs["registry"] = registry
    storage_given = "storage" in overrides
    if not storage_given:
        kwargs["storage"] = _storage_of(config, secrets)
    if "telemetry" not in overrides:
        kwargs["telemetry"] = make_telemetry(config.telemetry)
    kwargs.update(overrides)
    engine = engine_cls(**kwargs)
    if not storage_given and kwargs["storage"] is not None:
        engine._owns_storage = True
    engine.owned_resources.extend(owned)
    return engine


def _storage_of(config: CliConfig, secrets: Any) -> Any:
    """The adapter the parsed ``[storage]`` names (memory when the file has no table)."""
    if not any(name.startswith("storage.") for name in config.given):
        return make_storage({"kind": "memory"}, config.base_dir)
    table: dict[str, Any] = {"kind": config.storage_kind, **config.storage_options}
    if config.storage_kind in ("sqlite", "filesystem"):
        config.storage_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        table["path"] = str(config.storage_path)
    return make_storage(table, config.base_dir, secrets)
