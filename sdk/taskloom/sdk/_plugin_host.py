"""The plugin host: find plugins, verify them, import them from verified bytes, set them up.

A plugin is a directory laid out as::

    textkit/
        taskloom-plugin.json    the signed envelope (``taskloom sign`` writes it)
        src/                    the code; every file is listed in the signed manifest
            textkit.py

Directory plugins come from the ``plugin_dirs`` the application names (each
child holding a ``taskloom-plugin.json`` is one plugin); installed plugins come
from the ``taskloom.plugins`` entry point group, whose value names a package
that ships the same layout inside it. Nothing of a plugin is imported before
its envelope, signatures, trust scope, expiry, rollback state, file set and
every file's digest checked out; then its code runs from those verified bytes.
One plugin's failure is reported and isolated; the others load. Development
mode loads unsigned plugins, with a warning on every load.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from taskloom.contracts import (
    LLMExecutor,
    Plugin,
    PluginError,
    PluginManifest,
    SecretStore,
    SecurityError,
    StepFunction,
    StorageAdapter,
    TaskloomError,
    serde,
)
from taskloom.sdk._plugin_context import HostedPluginContext
from taskloom.sdk._plugin_import import import_entry_point, package_name, unload

log = logging.getLogger("taskloom.plugins")

ENVELOPE_NAME = "taskloom-plugin.json"
CODE_DIR = "src"
ENTRY_POINT_GROUP = "taskloom.plugins"


class ExecutorSink(Protocol):
    """Where plugin executors go (the engine's ExecutorRegistry satisfies it).

    ``in`` is asked for every id before anything is registered, so a plugin
    whose executor id is taken is refused whole, never half-registered.
    """

    def register(self, executor_id: str, executor: LLMExecutor, /) -> None: ...

    def __contains__(self, executor_id: object, /) -> bool: ...


class UnsignedPluginWarning(UserWarning):
    """A plugin was loaded without verification (development mode)."""


@attrs.frozen(kw_only=True)
class PluginSource:
    """Where one plugin was found."""

    root: Path
    origin: str  # "directory" or "entry point <name>"
    problem: str | None = None  # why it cannot load (a broken entry point), reported by load

    @property
    def installed(self) -> bool:
        """Found through an entry point: a pip-installed package (pip compiles ``.pyc`` files)."""
        return self.origin.startswith("entry point ")

    @property
    def envelope_path(self) -> Path:
        return self.root / ENVELOPE_NAME

    @property
    def code_dir(self) -> Path:
        return self.root / CODE_DIR


@attrs.frozen(kw_only=True)
class PluginReport:
    """What happened to one plugin: loaded, or the error that stopped it."""

    name: str
    source: str
    loaded: bool
    verified: bool
    version: int | None = None
    signers: tuple[str, ...] = ()
    error: str | None = None
    error_type: str | None = None
    executors: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()


@attrs.define
class _Loaded:
    name: str
    plugin: Any
    context: HostedPluginContext


def discover(
    plugin_dirs: Iterable[str | Path] = (), *, entry_points: bool = True
) -> list[PluginSource]:
    """Find plugin roots in ``plugin_dirs`` and in the ``taskloom.plugins`` entry points.

    Entry points are resolved to a package directory with ``find_spec`` on the
    top-level package only, which locates it without executing any of its code.
    """
    sources: list[PluginSource] = []
    for base in plugin_dirs:
        base_path = Path(base)
        if (base_path / ENVELOPE_NAME).is_file():
            sources.append(PluginSource(root=base_path, origin="directory"))
            continue
        if not base_path.is_dir():
            continue
        for child in sorted(base_path.iterdir()):
            if child.is_dir() and not child.is_symlink() and (child / ENVELOPE_NAME).is_file():
                sources.append(PluginSource(root=child, origin="directory"))
    if entry_points:
        sources.extend(_entry_point_source(ep) for ep in _plugin_entry_points())
    return sources


def _plugin_entry_points() -> list[importlib.metadata.EntryPoint]:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # broken metadata of some distribution: no entry-point plugins
        log.warning("cannot read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return []


def _entry_point_source(ep: importlib.metadata.EntryPoint) -> PluginSource:
    """The package directory an entry point names; a broken one becomes a reported failure."""
    origin = f"entry point {ep.name}"
    top = ep.value.split(":")[0].split(".")[0].strip()
    try:
        spec = importlib.util.find_spec(top) if top.isidentifier() else None
    except (ImportError, ValueError) as exc:
        spec, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = "no such installed package" if spec is None else "a module, not a package"
    if spec is None or not spec.submodule_search_locations:
        return PluginSource(
            root=Path(ep.value),
            origin=origin,
            problem=f"{origin} = {ep.value!r} names no installed plugin package ({why}); "
            "reinstall or remove the distribution that declares it",
        )
    return PluginSource(root=Path(next(iter(spec.submodule_search_locations))), origin=origin)


class PluginHost:
    """Loads verified plugins and hands each a context scoped to its manifest.

    ``trust`` is a ``taskloom.security.TrustStore``; ``rollback`` a
    ``taskloom.security.RollbackGuard``. With ``dev_mode=True`` unsigned or
    untrusted plugins load anyway, each time with an ``UnsignedPluginWarning`` (never
    one signed by a revoked key).
    """

    def __init__(
        self,
        *,
        storage: StorageAdapter,
        executors: ExecutorSink,
        trust: Any = None,
        rollback: Any = None,
        secrets: SecretStore | None = None,
        dev_mode: bool = False,
        clock: Any = time.time,
    ) -> None:
        self._storage = storage
        self._executors = executors
        self._trust = trust
        self._rollback = rollback
        self._secrets = secrets
        self._dev_mode = dev_mode
        self._clock = clock
        self._loaded: list[_Loaded] = []
        self.steps: dict[str, StepFunction] = {}
        self.reports: list[PluginReport] = []

    @property
    def loaded(self) -> Sequence[str]:
        """Names of the plugins set up, in load order."""
        return [entry.name for entry in self._loaded]

    async def verify(
        self, source: PluginSource
    ) -> tuple[PluginManifest, Mapping[str, bytes], frozenset[str]]:
        """Verify one plugin; return its manifest, verified file bytes and signer key ids."""
        from taskloom.security import RollbackGuard, verify_plugin

        if source.problem is not None:
            raise PluginError(source.problem)
        try:
            envelope = source.envelope_path.read_bytes()
        except OSError as exc:
            raise PluginError(f"cannot read {source.envelope_path}: {exc.strerror}") from exc
        if self._trust is None:
            raise PluginError(
                "no trust store is configured, so no plugin can be verified: add trusted "
                "publisher keys with 'taskloom trust add' (or use development mode)"
            )
        rollback = self._rollback or RollbackGuard(self._storage)
        # pip compiles every .py of an installed package into __pycache__; those .pyc files
        # are never read, let alone run (code comes from the verified .py bytes only).
        verified = await verify_plugin(
            source.code_dir,
            envelope,
            self._trust,
            rollback=rollback,
            now=self._clock(),
            ignore_bytecode_caches=source.installed,
        )
        return verified.manifest, verified.files, frozenset(verified.signers)

    def _read_unverified(self, source: PluginSource) -> tuple[PluginManifest, Mapping[str, bytes]]:
        import base64
        import json

        try:
            envelope = json.loads(source.envelope_path.read_bytes())
            payload = base64.b64decode(envelope["payload"])
            manifest = serde.loads(payload, PluginManifest)
            files = {
                entry.path: (source.code_dir / entry.path).read_bytes() for entry in manifest.files
            }
        except (OSError, ValueError, KeyError, TypeError, TaskloomError) as exc:
            raise PluginError(f"cannot read unsigned plugin at {source.root}: {exc}") from exc
        return manifest, files

    async def load(self, sources: Iterable[PluginSource]) -> list[PluginReport]:
        """Verify, import and set up each plugin; failures are reported, never raised."""
        reports = [await self._load_one(source) for source in sources]
        self.reports.extend(reports)
        return reports

    async def _load_one(self, source: PluginSource) -> PluginReport:
        name = source.root.name
        verified = False
        version: int | None = None
        signers: frozenset[str] = frozenset()
        try:
            if source.problem is not None:
                raise PluginError(source.problem)
            try:
                manifest, files, signers = await self.verify(source)
                verified = True
            except (SecurityError, PluginError) as exc:
                # A revoked key is explicit distrust, not a missing signature: development
                # mode never overrides it.
                from taskloom.security import KeyRevoked

                if not self._dev_mode or isinstance(exc, KeyRevoked):
                    raise
                manifest, files = self._read_unverified(source)
                text = (
                    f"development mode: loading plugin {manifest.name!r} from {source.root} "
                    f"WITHOUT verification ({type(exc).__name__}: {exc})"
                )
                # The warnings module shows a repeated warning once per place; the log line
                # makes sure every unverified load is seen, as development mode promises.
                warnings.warn(text, UnsignedPluginWarning, stacklevel=2)
                log.warning("%s", text)
            name, version = manifest.name, manifest.version
            self._check_free(name, source)
            context = await self._set_up(name, manifest, files)
            log.info("plugin %s v%s loaded from %s", name, manifest.version, source.root)
            return PluginReport(
                name=name,
                source=str(source.root),
                loaded=True,
                verified=verified,
                version=version,
                signers=tuple(sorted(signers)),
                executors=tuple(sorted(context.executors)),
                steps=tuple(sorted(context.steps)),
            )
        # Isolate: one plugin's failure never stops the others. SystemExit too: a plugin
        # calling sys.exit() at import or in setup must not end the application.
        except (Exception, SystemExit) as exc:
            log.error("plugin at %s not loaded: %s: %s", source.root, type(exc).__name__, exc)
            return PluginReport(
                name=name,
                source=str(source.root),
                loaded=False,
                verified=verified,
                version=version,
                signers=tuple(sorted(signers)),
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                error_type=type(exc).__name__,
            )

    def _check_free(self, name: str, source: PluginSource) -> None:
        package = package_name(name)
        for entry in self._loaded:
            if entry.name == name or package_name(entry.name) == package:
                raise PluginError(
                    f"plugin {name!r} at {source.root} clashes with the loaded plugin "
                    f"{entry.name!r} (same name or same package {package}); skipped: "
                    "remove one of them"
                )

    async def _set_up(
        self, name: str, manifest: PluginManifest, files: Mapping[str, bytes]
    ) -> HostedPluginContext:
        """Import, set up, register; on any failure the plugin leaves nothing behind."""
        obj = import_entry_point(name, files, manifest.entry_point, owner=self)
        context = HostedPluginContext(
            plugin_name=name,
            capabilities=manifest.capabilities,
            storage=self._storage,
            secrets=self._secrets,
        )
        set_up = False
        plugin: Any = None
        try:
            plugin = (
                obj()
                if inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "setup"))
                else obj
            )
            if not isinstance(plugin, Plugin):
                raise PluginError(
                    f"plugin {name!r}: entry point {manifest.entry_point!r} gives no object "
                    "with async setup(context) and teardown()"
                )
            await plugin.setup(context)
            set_up = True
            context.close_registration()
            taken = sorted(e for e in context.executors if e in self._executors)
            if taken:
                raise PluginError(
                    f"plugin {name!r}: executor id(s) {', '.join(taken)} already registered "
                    "(by the configuration or another plugin); rename them in the plugin"
                )
            for executor_id, executor in context.executors.items():
                self._executors.register(executor_id, executor)
        except BaseException:
            context.revoke()
            if set_up:
                await self._teardown(name, plugin)
            unload(name, owner=self)
            raise
        self.steps.update(context.steps)
        self._loaded.append(_Loaded(name=name, plugin=plugin, context=context))
        return context

    @staticmethod
    async def _teardown(name: str, plugin: Any) -> None:
        try:
            await plugin.teardown()
        except (Exception, SystemExit) as exc:
            log.error("plugin %s teardown failed: %s: %s", name, type(exc).__name__, exc)

    async def aclose(self) -> None:
        """Tear plugins down in reverse order of setup; errors are logged, all get their turn.

        Executors a plugin registered stay in the registry (it has no removal): close the
        engine, which owns the registry, before the host.
        """
        while self._loaded:
            entry = self._loaded.pop()
            try:
                await self._teardown(entry.name, entry.plugin)
            finally:
                entry.context.revoke()
                for step_id in entry.context.steps:
                    self.steps.pop(step_id, None)
                unload(entry.name, owner=self)

    async def __aenter__(self) -> PluginHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
