"""The executor registry: executor ids to executors, created lazily, with their settings.

An application registers an executor *instance* or a *factory* (a sync or async
callable with no arguments that builds the executor on first use, so that an
unused backend never opens a connection). Each id carries ``ExecutorSettings``:
the default model and the limits the engine enforces for it (concurrency,
requests and tokens per minute).

Executors by type name (config files)
-------------------------------------
``taskloom.toml`` names executors by *type* (``type = "scripted"``). A type is
resolved, in this order, from:

1. types registered on this registry with ``registry.register_type(name, factory)``;
2. process-wide types registered with :func:`register_executor_type`;
3. the module ``taskloom.adapters.<name>``, imported lazily, which must expose
   ``from_config(settings: dict[str, Any], secrets: SecretStore | None)``
   returning an ``LLMExecutor`` (or an awaitable of one) -- as
   ``taskloom.adapters.scripted.from_config`` does for ``type = "scripted"``.

So an adapter package adds a type without editing this module: either define
``from_config`` in ``taskloom.adapters.<type>`` or call
``register_executor_type("mytype", factory)`` at import time. ``settings`` is the
executor's config table without ``type`` and without the engine's own keys
(``default_model``, ``concurrency``, ``requests_per_minute``,
``tokens_per_minute``); secrets are referenced as ``{"secret": "name"}`` and
resolved by the factory through ``secrets``, never stored in the table.

Secrets it resolved
-------------------
Every ``Secret`` a config-built executor reads through ``secrets`` is remembered
(``resolved_secrets``) and handed to each ``watch_secrets`` callback, so that the
engine masks those values in every error text and event, whoever embeds it.

Removing an executor
--------------------
``await registry.unregister(executor_id)`` forgets the id: its instance, its
factory and its settings (the limits come from those). An executor the registry
built from a factory is the registry's own and is closed; one registered as an
instance belongs to whoever registered it and is left open. The plugin host
unregisters a plugin's executors when it tears the plugin down.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import attrs

from taskloom.contracts import LLMExecutor, Secret, SecretStore, UnknownExecutor, UsageError

_v = attrs.validators

ExecutorFactory: TypeAlias = Callable[[], LLMExecutor | Awaitable[LLMExecutor]]
"""Builds an executor on first use; may be sync or async."""

TypeFactory: TypeAlias = Callable[
    [Mapping[str, Any], SecretStore | None], LLMExecutor | Awaitable[LLMExecutor]
]
"""Builds an executor of one type from its config table and the secret store."""

SETTINGS_KEYS = ("default_model", "concurrency", "requests_per_minute", "tokens_per_minute")
"""Config keys that belong to the engine, not to the executor type's factory."""

_EXECUTOR_TYPES: dict[str, TypeFactory] = {}


def register_executor_type(name: str, factory: TypeFactory) -> None:
    """Make ``type = "<name>"`` in config files build executors with ``factory``."""
    if not isinstance(name, str) or not name:
        raise UsageError("an executor type name must be non-empty text")
    _EXECUTOR_TYPES[name] = factory


def _pos_or_none(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@attrs.frozen(kw_only=True)
class ExecutorSettings:
    """Per-executor defaults and limits; ``None`` means no limit."""

    default_model: str | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(str))
    )
    concurrency: int | None = attrs.field(
        default=None, validator=_v.optional([_v.instance_of(int), _v.ge(1)])
    )
    requests_per_minute: float | None = attrs.field(
        default=None,
        converter=_pos_or_none,
        validator=_v.optional([_v.instance_of(float), _v.gt(0.0)]),
    )
    tokens_per_minute: float | None = attrs.field(
        default=None,
        converter=_pos_or_none,
        validator=_v.optional([_v.instance_of(float), _v.gt(0.0)]),
    )


@attrs.define
class _Entry:
    executor: LLMExecutor | None
    factory: Callable[[], Awaitable[LLMExecutor]] | None
    settings: ExecutorSettings
    owned: bool
    lock: asyncio.Lock | None = None


def _is_executor(obj: object) -> bool:
    return callable(getattr(obj, "complete", None)) and callable(getattr(obj, "stream", None))


async def _call(factory: Callable[..., Any], *args: Any) -> LLMExecutor:
    made = factory(*args)
    if inspect.isawaitable(made):
        made = await made
    if not _is_executor(made):
        raise UsageError(
            f"executor factory {factory!r} returned {type(made).__name__}, not an LLMExecutor"
        )
    return made  # type: ignore[no-any-return]


class _Recording:
    """A SecretStore seen through by the registry: each secret read is reported."""

    __slots__ = ("_registry", "_store")

    def __init__(self, store: SecretStore, registry: ExecutorRegistry) -> None:
        self._store = store
        self._registry = registry

    async def get(self, name: str, /) -> Secret:
        secret = await self._store.get(name)
        self._registry.saw_secret(secret)
        return secret

    async def set(self, name: str, value: str | Secret, /) -> None:
        await self._store.set(name, value)

    async def delete(self, name: str, /) -> bool:
        return await self._store.delete(name)

    async def names(self) -> list[str]:
        return await self._store.names()

    async def aclose(self) -> None:
        """The store belongs to whoever passed it in: closing this view leaves it open."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class ExecutorRegistry:
    """Executor ids to executors (instances or lazy factories) and their settings."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._types: dict[str, TypeFactory] = {}
        self._default: str | None = None
        self._secrets: list[Secret] = []
        self._watchers: list[Callable[[Secret], object]] = []

    @property
    def resolved_secrets(self) -> tuple[Secret, ...]:
        """The secrets config-built executors read so far (for redaction, never shown)."""
        return tuple(self._secrets)

    def saw_secret(self, secret: Secret) -> None:
        """Remember a secret an executor resolved and tell every watcher."""
        if not isinstance(secret, Secret):
            return
        self._secrets.append(secret)
        for watch in self._watchers:
            watch(secret)

    def watch_secrets(self, callback: Callable[[Secret], object]) -> None:
        """Call ``callback`` with each secret resolved, those already resolved first."""
        self._watchers.append(callback)
        for secret in self._secrets:
            callback(secret)

    def register(
        self,
        executor_id: str,
        executor: LLMExecutor | ExecutorFactory,
        *,
        settings: ExecutorSettings | None = None,
        default: bool = False,
    ) -> None:
        """Add an executor or a factory under ``executor_id``.

        The first executor registered is the default for steps that name none
        (``default=True`` makes this one the default instead). An executor the
        registry built from a factory is closed by :meth:`aclose`; one passed
        in as an instance belongs to the caller.
        """
        if not isinstance(executor_id, str) or not executor_id:
            raise UsageError("an executor id must be non-empty text")
        if executor_id in self._entries:
            raise UsageError(f"executor {executor_id!r} is already registered")
        settings = settings or ExecutorSettings()
        if _is_executor(executor):
            entry = _Entry(executor=executor, factory=None, settings=settings, owned=False)  # type: ignore[arg-type]
        elif callable(executor):
            factory = executor

            async def build() -> LLMExecutor:
                return await _call(factory)

            entry = _Entry(executor=None, factory=build, settings=settings, owned=True)
        else:
            raise UsageError(
                f"register {executor_id!r} with an LLMExecutor or a callable that builds one, "
                f"not {type(executor).__name__}"
            )
        self._entries[executor_id] = entry
        if default or self._default is None:
            self._default = executor_id

    def register_type(self, type_name: str, factory: TypeFactory) -> None:
        """Make ``type_name`` buildable by :meth:`register_config` on this registry only."""
        if not isinstance(type_name, str) or not type_name:
            raise UsageError("an executor type name must be non-empty text")
        self._types[type_name] = factory

    def resolve_type(self, type_name: str) -> TypeFactory:
        """The factory for ``type_name`` (see the module docstring for the lookup order)."""
        factory = self._types.get(type_name) or _EXECUTOR_TYPES.get(type_name)
        if factory is not None:
            return factory
        if not type_name.isidentifier():
            raise UsageError(f"executor type {type_name!r} is not a valid module name")
        module_name = f"taskloom.adapters.{type_name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            known = sorted({*self._types, *_EXECUTOR_TYPES})
            raise UsageError(
                f"unknown executor type {type_name!r}: no module {module_name} "
                f"(registered types: {', '.join(known) or 'none'}); install the adapter or "
                "register the type with register_executor_type()"
            ) from exc
        from_config = getattr(module, "from_config", None)
        if not callable(from_config):
            raise UsageError(
                f"{module_name} has no from_config(settings, secrets) function, so it cannot "
                "be used as an executor type in a config file"
            )
        return from_config  # type: ignore[no-any-return]

    def register_config(
        self,
        executor_id: str,
        table: Mapping[str, Any],
        *,
        secrets: SecretStore | None = None,
    ) -> None:
        """Register an executor described by a config table (``type`` plus settings)."""
        type_name = table.get("type")
        if not isinstance(type_name, str):
            raise UsageError(f"executor {executor_id!r} needs a 'type' (for example 'scripted')")
        factory = self.resolve_type(type_name)
        try:
            settings = ExecutorSettings(**{k: table[k] for k in SETTINGS_KEYS if k in table})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"executor {executor_id!r}: invalid settings: {exc}") from exc
        options = {k: v for k, v in table.items() if k != "type" and k not in SETTINGS_KEYS}
        seen = _Recording(secrets, self) if secrets is not None else None
        self.register(executor_id, lambda: _call(factory, options, seen), settings=settings)

    def ids(self) -> list[str]:
        """The registered executor ids, sorted."""
        return sorted(self._entries)

    def __contains__(self, executor_id: object) -> bool:
        return executor_id in self._entries

    @property
    def default_id(self) -> str | None:
        """The executor used by steps that name none."""
        return self._default

    def settings(self, executor_id: str) -> ExecutorSettings:
        """The settings of ``executor_id``; UnknownExecutor if it is not registered."""
        entry = self._entries.get(executor_id)
        if entry is None:
            raise UnknownExecutor(executor_id, self.ids())
        return entry.settings

    def peek(self, executor_id: str) -> LLMExecutor | None:
        """The executor for ``executor_id`` if it is already built (a sync fast path)."""
        entry = self._entries.get(executor_id)
        return entry.executor if entry is not None else None

    async def get(self, executor_id: str) -> LLMExecutor:
        """The executor for ``executor_id``, built on first use (once, even if raced).

        If the id is unregistered while its factory runs, the executor just built
        is closed (nothing else would ever close it) and the id looked up afresh:
        ``UnknownExecutor``, or whatever was registered under it since.
        """
        entry = self._entries.get(executor_id)
        if entry is None:
            raise UnknownExecutor(executor_id, self.ids())
        if entry.executor is not None:
            return entry.executor
        if entry.lock is None:
            entry.lock = asyncio.Lock()
        async with entry.lock:
            if entry.executor is None and self._entries.get(executor_id) is entry:
                assert entry.factory is not None
                built = await entry.factory()
                if self._entries.get(executor_id) is entry:
                    entry.executor = built
                else:
                    await built.aclose()
        if entry.executor is None or self._entries.get(executor_id) is not entry:
            return await self.get(executor_id)
        return entry.executor

    async def unregister(self, executor_id: str) -> None:
        """Forget ``executor_id``: its instance or factory and its settings.

        Afterwards ``get``, ``peek`` and ``settings`` know nothing of the id and it
        can be registered again. An executor the registry built from a factory
        is closed here (the registry owns it, as :meth:`aclose` does); one
        registered as an instance is left open for its owner. A call already
        running on a closed executor may fail, so unregister between runs. If
        the id was the default, there is no default until the next executor is
        registered (that one becomes it, as the first one did): steps naming no
        executor are refused rather than sent to a backend nobody chose.
        ``UnknownExecutor`` (listing the known ids) if the id is not registered.
        """
        entry = self._entries.pop(executor_id, None)
        if entry is None:
            raise UnknownExecutor(executor_id, self.ids())
        if self._default == executor_id:
            self._default = None
        if entry.owned and entry.executor is not None:
            executor, entry.executor = entry.executor, None
            await executor.aclose()

    async def aclose(self) -> None:
        """Close the executors this registry built from factories (idempotent)."""
        for entry in self._entries.values():
            if entry.owned and entry.executor is not None:
                executor, entry.executor = entry.executor, None
                await executor.aclose()
