"""``taskloom.toml``: the one parser the CLI and ``Engine.from_config`` both read it with.

``read_config(path)`` parses and checks a file (every section, key and kind; a
mistake is a one-line ``UsageError`` naming the file); ``load_config`` finds the
file the CLI uses first. ``Engine.from_config`` builds from the same
``CliConfig`` (see ``taskloom.sdk._config.build``), so a file means the same to both.

Lookup order: ``--config PATH``; ``taskloom.toml`` in the working directory;
``taskloom.toml`` in the user's config directory (platformdirs); built-in
defaults. The defaults put an embedded SQLite store, the key directory and the
encrypted secret file in the user's data directory, so ``taskloom run
examples/hello.json`` works on a fresh machine with no server.

Environment: ``TASKLOOM_HOME`` replaces both user directories (handy for tests
and for keeping several setups apart).

Configuration reference (every key optional)::

    [storage]
    kind = "sqlite"            # "sqlite", "filesystem", "memory", "postgres" or "none"
                               # ("none": no state; Engine.from_config only)
                               # (postgres: dsn = { secret = "pg_dsn" } or TASKLOOM_POSTGRES_DSN)
    path = "runs.db"           # relative paths are relative to the config file
    synchronous = "NORMAL"     # sqlite: "FULL" to fsync every commit; also busy_timeout_s
    # filesystem: fsync = true, lock_timeout = 30

    [engine]
    max_concurrency = 64
    lease_ttl_s = 30           # a crashed run can be resumed elsewhere after this
    durability = "async"       # or "sync": each step waits until its checkpoint is durable

    [executors.default]        # one table per executor id
    type = "scripted"          # "scripted", "openai", "anthropic"
    # ... settings of that type, e.g. base_url, model,
    # api_key = { secret = "openai_api_key" }

    [plugins]
    dirs = ["plugins"]         # each child with a taskloom-plugin.json is a plugin
    trust = "trust.json"       # the trust store (``taskloom trust add`` writes it)
    root_key = "root.pub"      # optional: the trust store must be signed by this key
    dev_mode = false           # load unsigned plugins, with a warning each time

    [secrets]
    kind = "default"           # "default": environment, then keyring, then the file;
                               # "env": TASKLOOM_SECRET_<NAME> only; "file": the file only
    path = "secrets.bin"       # the encrypted file store (passphrase from
                               # TASKLOOM_SECRETS_PASSPHRASE)

    [keys]
    dir = "keys"               # where ``taskloom keys generate`` puts key pairs

    [server]                   # ``taskloom serve`` (see taskloom.sdk.server._settings)
    pipelines = ["pipelines"]  # directories of NAME.json pipelines, submittable by name
    max_body_bytes = 1048576
    cors_origins = []          # browser origins allowed to call the API (none: CORS off)
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from taskloom.contracts import MASK, UsageError, mask_url
from taskloom.sdk._config.postgres import POSTGRES_OPTIONS

CONFIG_NAME = "taskloom.toml"
APP = "taskloom"

DURABILITY_MODES = ("async", "sync")
"""``Engine(durability=...)`` and ``[engine] durability``: "async" tracks checkpoints in
the engine's window; "sync" makes each step wait until its checkpoint is durable."""


def user_dirs() -> tuple[Path, Path]:
    """(config dir, data dir) for this user, or both under ``$TASKLOOM_HOME``."""
    home = os.environ.get("TASKLOOM_HOME")
    if home:
        return Path(home) / "config", Path(home) / "data"
    return Path(platformdirs.user_config_dir(APP)), Path(platformdirs.user_data_dir(APP))


@attrs.frozen(kw_only=True)
class CliConfig:
    """The resolved configuration: every path absolute, every default filled in."""

    source: Path | None
    given: frozenset[str] = attrs.field(factory=frozenset)
    """The ``section.key`` names the file set (``Engine.from_config`` keeps the engine's
    own defaults for the others: memory storage, no global concurrency limit)."""
    storage_kind: str
    storage_path: Path
    storage_options: dict[str, Any]
    secrets_kind: str
    max_concurrency: int
    lease_ttl_s: float
    durability: str
    executors: dict[str, dict[str, Any]]
    plugin_dirs: tuple[Path, ...]
    trust_path: Path
    dev_mode: bool
    secrets_path: Path
    keys_dir: Path
    data_dir: Path
    history_path: Path
    trust_root_key: Path | None = None
    """``[plugins] root_key``: the public key that must have signed the trust store."""
    server: dict[str, Any] = attrs.field(factory=dict)
    """The ``[server]`` table as written (``taskloom serve`` checks and resolves it)."""
    telemetry: dict[str, bool] = attrs.field(factory=dict)
    """``[telemetry]``: ``enabled`` (spans and metrics through the application's global
    OpenTelemetry providers; needs the ``otel`` extra) and ``capture_content``."""
    base_dir: Path = attrs.field(factory=Path.cwd)
    """Where relative paths of the file are resolved from (its directory)."""

    def as_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data (``taskloom config show``)."""
        return {
            "source": str(self.source) if self.source else None,
            "storage": {"kind": self.storage_kind, "path": str(self.storage_path)},
            "engine": {
                "max_concurrency": self.max_concurrency,
                "lease_ttl_s": self.lease_ttl_s,
                "durability": self.durability,
            },
            "executors": {name: _masked(table) for name, table in self.executors.items()},
            "plugins": {
                "dirs": [str(p) for p in self.plugin_dirs],
                "trust": str(self.trust_path),
                "root_key": str(self.trust_root_key) if self.trust_root_key else None,
                "dev_mode": self.dev_mode,
            },
            "secrets": {"kind": self.secrets_kind, "path": str(self.secrets_path)},
            "keys": {"dir": str(self.keys_dir)},
            "server": dict(self.server),
            "telemetry": dict(self.telemetry),
        }


def find_config(explicit: str | None = None) -> Path | None:
    """The config file to use, or None for built-in defaults."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        return path
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local
    user = user_dirs()[0] / CONFIG_NAME
    if user.is_file():
        return user
    return None


_KNOWN_KEYS: dict[str, frozenset[str] | None] = {
    "storage": frozenset(
        {"kind", "path", "synchronous", "busy_timeout_s", "readers", "fsync", "lock_timeout"}
        | POSTGRES_OPTIONS
    ),
    "engine": frozenset({"max_concurrency", "lease_ttl_s", "durability"}),
    "executors": None,  # one table per executor id; its settings belong to the adapter
    "plugins": frozenset({"dirs", "trust", "root_key", "dev_mode"}),
    "secrets": frozenset({"kind", "path"}),
    "keys": frozenset({"dir"}),
    "server": None,  # checked by taskloom.sdk.server's settings when a server starts
    "telemetry": frozenset({"enabled", "capture_content"}),
}
_KNOWN = set(_KNOWN_KEYS)


_STORAGE_OPTIONS = {
    "sqlite": {"synchronous", "busy_timeout_s", "readers"},
    "filesystem": {"fsync", "lock_timeout"},
    "memory": set(),
    "postgres": set(POSTGRES_OPTIONS),
    "none": set(),
}
SECRETS_KINDS = ("default", "env", "file")


def _storage_options(kind: str, table: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """The adapter options of ``[storage]`` (the keys other than kind and path)."""
    options = {k: v for k, v in table.items() if k not in ("kind", "path")}
    wrong = sorted(set(options) - _STORAGE_OPTIONS.get(kind, set()))
    if wrong:
        raise UsageError(
            f"{source}: [storage] option(s) {', '.join(wrong)} do not apply to kind {kind!r}"
        )
    return options


def _secrets_kind(table: dict[str, Any], source: Path | None) -> str:
    kind = table.get("kind", "default")
    if kind not in SECRETS_KINDS:
        raise UsageError(
            f"{source}: unknown secrets kind {kind!r} in [secrets]: use one of "
            f'{", ".join(SECRETS_KINDS)} ("default": environment, then keyring, then the file)'
        )
    return str(kind)


def _table(data: dict[str, Any], key: str, source: Path | None) -> dict[str, Any]:
    """Section ``key``; a key it does not know is an error (a typo must not pass silently)."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{source}: [{key}] must be a table")
    known = _KNOWN_KEYS[key]
    unknown = sorted(set(value) - known) if known is not None else []
    if unknown:
        raise UsageError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [{key}]; known: "
            f"{', '.join(sorted(known or ()))}"
        )
    return value


STORAGE_KINDS = ("sqlite", "filesystem", "memory", "postgres", "none")


_SECRET_SETTING = re.compile(r"(?:^|_)(?:api_?key|key|token|secret|password|passwd)$")


_PLAIN_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "user-agent",
        "anthropic-version",
        "anthropic-beta",
        "openai-beta",
    }
)
"""Header names whose values are shown by ``config show``; every other value is masked
(a custom header is where a gateway's key goes)."""


def _masked(settings: dict[str, Any]) -> dict[str, Any]:
    """Executor settings for display: a literal credential never reaches the screen, nor
    one in the base URL's userinfo or query, nor one in a custom header."""
    shown: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, str) and _SECRET_SETTING.search(name.lower()):
            shown[name] = MASK
        elif isinstance(value, str) and name.lower().endswith("url"):
            shown[name] = mask_url(value)
        elif name.lower() == "headers" and isinstance(value, dict):
            shown[name] = {
                k: v if str(k).lower() in _PLAIN_HEADERS else MASK for k, v in value.items()
            }
        else:
            shown[name] = value
    return shown


def load_config(explicit: str | None = None) -> CliConfig:
    """Find the CLI's configuration (see the module) and read it; defaults without one."""
    return read_config(find_config(explicit))


def read_config(source: Path | None) -> CliConfig:
    """Read and resolve ``source`` (None: the built-in defaults); a bad file is a one-line
    UsageError naming it."""
    data: dict[str, Any] = {}
    if source is not None:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read config {source}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"cannot read config {source}: not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - _KNOWN)
        if unknown:
            raise UsageError(f"{source}: unknown section(s) {unknown}; known: {sorted(_KNOWN)}")
    config_dir, data_dir = user_dirs()
    base = source.parent if source is not None else Path.cwd()

    def path_of(value: object, default: Path) -> Path:
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise UsageError(f"{source}: paths must be non-empty strings, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)

    storage = _table(data, "storage", source)
    kind = storage.get("kind", "sqlite")
    if kind not in STORAGE_KINDS:
        raise UsageError(
            f"{source}: unknown storage kind {kind!r}; known kinds: {', '.join(STORAGE_KINDS)}"
        )
    if kind in ("none", "memory") and "path" in storage:
        raise UsageError(f"{source}: storage kind {kind!r} takes no path")
    if kind == "postgres" and "path" in storage:
        raise UsageError(
            f"{source}: storage kind 'postgres' takes no path: give dsn = {{ secret = "
            '"pg_dsn" } or set TASKLOOM_POSTGRES_DSN'
        )
    default_store = data_dir / ("taskloom.db" if kind == "sqlite" else "store")
    engine = _table(data, "engine", source)
    max_concurrency = engine.get("max_concurrency", 64)
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise UsageError(f"{source}: engine.max_concurrency must be a positive integer")
    lease_ttl_s = engine.get("lease_ttl_s", 30.0)
    if (
        isinstance(lease_ttl_s, bool)
        or not isinstance(lease_ttl_s, int | float)
        or lease_ttl_s <= 0
    ):
        raise UsageError(f"{source}: engine.lease_ttl_s must be a positive number of seconds")
    durability = engine.get("durability", "async")
    if durability not in DURABILITY_MODES:
        raise UsageError(
            f'{source}: engine.durability must be "async" (the default) or "sync", '
            f"not {durability!r}"
        )
    executors = _table(data, "executors", source)
    for executor_id, settings in executors.items():
        if not isinstance(settings, dict) or "type" not in settings:
            raise UsageError(
                f"{source}: [executors.{executor_id}] needs a 'type' (scripted, openai or "
                "anthropic) and must be a table"
            )
    plugins = _table(data, "plugins", source)
    dirs = plugins.get("dirs", [])
    if not isinstance(dirs, list):
        raise UsageError(f"{source}: plugins.dirs must be a list of paths")
    dev_mode = plugins.get("dev_mode", False)
    if not isinstance(dev_mode, bool):
        raise UsageError(f"{source}: plugins.dev_mode must be true or false")
    given = frozenset(
        f"{section}.{key}"
        for section, table in data.items()
        if isinstance(table, dict)
        for key in table
    )
    return CliConfig(
        source=source,
        given=given,
        storage_kind=kind,
        storage_path=path_of(storage.get("path"), default_store),
        storage_options=_storage_options(kind, storage, source),
        secrets_kind=_secrets_kind(_table(data, "secrets", source), source),
        max_concurrency=max_concurrency,
        lease_ttl_s=float(lease_ttl_s),
        durability=durability,
        executors={str(k): dict(v) for k, v in executors.items()},
        plugin_dirs=tuple(path_of(d, base) for d in dirs),
        trust_path=path_of(plugins.get("trust"), config_dir / "trust.json"),
        trust_root_key=path_of(plugins["root_key"], base) if "root_key" in plugins else None,
        dev_mode=dev_mode,
        secrets_path=path_of(_table(data, "secrets", source).get("path"), data_dir / "secrets.bin"),
        keys_dir=path_of(_table(data, "keys", source).get("dir"), data_dir / "keys"),
        data_dir=data_dir,
        history_path=data_dir / "shell-history",
        server=dict(_table(data, "server", source)),
        telemetry=_telemetry(_table(data, "telemetry", source), source),
        base_dir=base,
    )


def _telemetry(table: dict[str, Any], source: object) -> dict[str, bool]:
    """The ``[telemetry]`` table checked: both keys booleans, false by default."""
    settings = {
        "enabled": table.get("enabled", False),
        "capture_content": table.get("capture_content", False),
    }
    for key, value in settings.items():
        if not isinstance(value, bool):
            raise UsageError(f"{source}: telemetry.{key} must be true or false, not {value!r}")
    return settings
