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

A manifest's ``min_sdk_version`` (``MAJOR.MINOR.PATCH``) is compared with the
running taskloom before any of the plugin's code is imported; a plugin that
needs a newer release is refused with ``PluginIncompatible`` (in development
mode too: skipping a signature check never makes old code run new plugins).
The envelope file is read with its size cap applied while reading, so a huge
file is refused after at most cap + 1 bytes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from taskloom.contracts import (
    CapabilityDenied,
    LLMExecutor,
    Plugin,
    PluginError,
    PluginIncompatible,
    PluginManifest,
    SecretStore,
    SecurityError,
    StepFunction,
    StorageAdapter,
    TaskloomError,
    serde,
)
from taskloom.sdk._plugins.context import HostedPluginContext
from taskloom.sdk._plugins.loader import import_entry_point, package_name, unload

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


@runtime_checkable
class RemovableExecutorSink(ExecutorSink, Protocol):
    """A sink that can also forget an executor (the ExecutorRegistry is one).

    With such a sink the host unregisters a plugin's executors when it tears
    the plugin down; a plain ``ExecutorSink`` keeps them.
    """

    def peek(self, executor_id: str, /) -> LLMExecutor | None: ...

    async def unregister(self, executor_id: str, /) -> None: ...


def _dev_mode_may_skip(exc: BaseException) -> bool:
    """Whether development mode may load a plugin that failed verification with ``exc``.

    Only a *missing* trust decision is skipped: no envelope or no trust store
    (``PluginError``), or signatures by keys the trust store does not list for it
    (``ThresholdNotMet``, ``KeyNotInScope``). Everything that says a signed plugin is
    wrong -- a revoked key, a bad signature, changed or extra files, a rollback, a
    reused version, an expired or malformed manifest, a taskloom too old -- is
    refused in development mode too.
    """
    from taskloom.security import KeyNotInScope, ThresholdNotMet

    if isinstance(exc, PluginIncompatible | CapabilityDenied):
        return False
    return isinstance(exc, PluginError | ThresholdNotMet | KeyNotInScope)


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


# --- the taskloom release a plugin needs -------------------------------------------

SdkRelease = tuple[int, int, int]

_MIN_SDK_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
"""A manifest's ``min_sdk_version``: the rule ``taskloom.security`` enforces when it parses
a signed manifest (its ``SDK_VERSION``; a test pins the two together). Kept here as well
because a development-mode plugin is never parsed by the verifier."""

_INSTALLED_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})(?:\.([0-9]{1,9}))?(.*)", re.DOTALL)
_FINAL_SUFFIX = re.compile(
    r"(?:[.-]?post[0-9]*(?:[.-]?dev[0-9]*)?)?(?:\+[a-z0-9.]+)?", re.IGNORECASE
)
_PRE_SUFFIX = re.compile(
    r"[.-]?(?:a|b|c|rc|alpha|beta|pre|preview|dev)[0-9]*(?:[.+-].*)?", re.IGNORECASE | re.DOTALL
)


def parse_min_sdk_version(text: str) -> SdkRelease | None:
    """``MAJOR.MINOR.PATCH`` as three integers, or None if ``text`` is not exactly that.

    Strict on purpose: no leading zeros, ASCII digits only, no suffix. A plugin
    names the *release* it needs; "1.2.0rc1" would leave open whether the
    release candidate is enough, so the signer refuses to write it.
    """
    match = _MIN_SDK_VERSION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3])


def parse_installed_version(text: str) -> tuple[SdkRelease, bool] | None:
    """The release of an installed taskloom version, and whether it comes before that release.

    PEP 440 in the small, enough for our own version numbers: ``0.2.0``, ``0.2``
    (patch 0), ``0.2.0.post1`` and ``0.2.0+local`` are the release 0.2.0 itself;
    ``0.2.0rc1``, ``0.2.0b2`` and ``0.2.0.dev3`` come before it, so they satisfy
    only plugins that need an older release. Anything else is None.
    """
    match = _INSTALLED_VERSION.fullmatch(text)
    if match is None:
        return None
    release = (int(match[1]), int(match[2]), int(match[3] or 0))
    suffix = match[4]
    if _FINAL_SUFFIX.fullmatch(suffix):
        return release, False
    if _PRE_SUFFIX.fullmatch(suffix):
        return release, True
    return None


def sdk_satisfies(required: SdkRelease, running: SdkRelease, *, prerelease: bool = False) -> bool:
    """Whether taskloom ``running`` (a pre-release of it, if ``prerelease``) is new enough."""
    return running > required or (running == required and not prerelease)


@functools.cache
def running_sdk_version() -> str:
    """The installed ``taskloom`` distribution's version (if not installed, the package's own)."""
    try:
        return importlib.metadata.version("taskloom")
    except importlib.metadata.PackageNotFoundError:
        from taskloom.sdk import __version__

        return __version__


def check_sdk_version(manifest: PluginManifest, running: str) -> None:
    """Refuse ``manifest`` if it needs a newer taskloom than ``running``.

    ``PluginIncompatible`` when it does; ``PluginError`` when either version
    cannot be read (an unparsable ``min_sdk_version`` is refused, never guessed).
    """
    name, text = manifest.name, manifest.min_sdk_version
    required = parse_min_sdk_version(text)
    if required is None:
        raise PluginError(
            f"plugin {name!r} declares min_sdk_version {text[:40]!r}, which is not "
            "MAJOR.MINOR.PATCH (such as '0.1.0'): ask the publisher to fix it and sign again"
        )
    installed = parse_installed_version(running)
    if installed is None:
        raise PluginError(
            f"cannot tell whether plugin {name!r} (needs taskloom {text}) runs on this "
            f"taskloom: its version {running[:40]!r} is not a release number; reinstall "
            "taskloom from a release"
        )
    release, prerelease = installed
    if not sdk_satisfies(required, release, prerelease=prerelease):
        raise PluginIncompatible(
            f"plugin {name!r} needs taskloom {text} or newer, but taskloom {running} is "
            "running: upgrade taskloom (pip install --upgrade taskloom), or install a "
            "release of the plugin made for this one",
            plugin=name,
            required=text,
            running=running,
        )


def read_envelope(path: Path, *, limit: int) -> bytes:
    """The bytes of an envelope file, reading at most ``limit + 1`` of them.

    A bigger file is refused with the ``InputTooLarge`` that the verifier's
    in-memory cap raises, without reading (or holding) the rest of it: a
    multi-gigabyte file in a plugin directory costs one small read.
    """
    from taskloom.security import InputTooLarge

    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
            size = len(data)
            if size > limit:
                size = max(size, os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        raise PluginError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size > limit:
        raise InputTooLarge(
            f"signed envelope {path} is {size} bytes; the limit is {limit}: it is not a "
            f"plugin envelope, replace it with the {ENVELOPE_NAME} that 'taskloom sign' writes",
            size=size,
            limit=limit,
        )
    return data


class PluginHost:
    """Loads verified plugins and hands each a context scoped to its manifest.

    ``trust`` is a ``taskloom.security.TrustStore``; ``rollback`` a
    ``taskloom.security.RollbackGuard``. With ``dev_mode=True`` unsigned or
    untrusted plugins load anyway, each time with an ``UnsignedPluginWarning`` (never
    one signed by a revoked key, never one needing a newer taskloom).
    ``sdk_version`` is the taskloom version plugins' ``min_sdk_version`` is compared
    with: the installed distribution's by default (a test can pass another).
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
        sdk_version: str | None = None,
    ) -> None:
        self._storage = storage
        self._executors = executors
        self._trust = trust
        self._rollback = rollback
        self._secrets = secrets
        self._dev_mode = dev_mode
        self._clock = clock
        self._sdk_version = sdk_version
        self._loaded: list[_Loaded] = []
        self.steps: dict[str, StepFunction] = {}
        self.reports: list[PluginReport] = []

    @property
    def sdk_version(self) -> str:
        """The taskloom version that plugins' ``min_sdk_version`` is compared with."""
        return self._sdk_version or running_sdk_version()

    def check_sdk_version(self, manifest: PluginManifest) -> None:
        """Refuse a plugin needing a newer taskloom (``PluginIncompatible``), before its code."""
        check_sdk_version(manifest, self.sdk_version)

    @property
    def loaded(self) -> Sequence[str]:
        """Names of the plugins set up, in load order."""
        return [entry.name for entry in self._loaded]

    async def verify(
        self, source: PluginSource
    ) -> tuple[PluginManifest, Mapping[str, bytes], frozenset[str]]:
        """Verify one plugin; return its manifest, verified file bytes and signer key ids.

        Besides the signature checks, a plugin needing a newer taskloom is refused
        here (``PluginIncompatible``), before its rollback state moves or its files
        are read.
        """
        from taskloom.security import MAX_ENVELOPE_BYTES, RollbackGuard, verify_plugin

        if source.problem is not None:
            raise PluginError(source.problem)
        envelope = read_envelope(source.envelope_path, limit=MAX_ENVELOPE_BYTES)
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
            max_envelope_bytes=MAX_ENVELOPE_BYTES,
            check_manifest=self.check_sdk_version,
        )
        return verified.manifest, verified.files, frozenset(verified.signers)

    def _read_unverified(self, source: PluginSource) -> tuple[PluginManifest, Mapping[str, bytes]]:
        import base64
        import json

        from taskloom.security import MAX_ENVELOPE_BYTES

        try:
            envelope = json.loads(read_envelope(source.envelope_path, limit=MAX_ENVELOPE_BYTES))
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
                if not self._dev_mode or not _dev_mode_may_skip(exc):
                    raise
                manifest, files = self._read_unverified(source)
                self.check_sdk_version(manifest)
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
            # an ExecutorRegistry tells the engine of every secret read, so the engine
            # masks a plugin's secrets in outputs, records and errors too
            on_secret=getattr(self._executors, "saw_secret", None),
        )
        set_up = False
        plugin: Any = None
        registered: dict[str, LLMExecutor] = {}
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
                registered[executor_id] = executor
        except BaseException:
            context.revoke()
            await self._unregister(name, registered)
            if set_up:
                await self._teardown(name, plugin)
            unload(name, owner=self)
            raise
        self.steps.update(context.steps)
        self._loaded.append(_Loaded(name=name, plugin=plugin, context=context))
        return context

    async def _unregister(self, name: str, executors: Mapping[str, LLMExecutor]) -> None:
        """Take a plugin's executors out of the sink, if it can forget them.

        Only an id that still names the very executor the plugin registered is
        removed: one unregistered meanwhile, or since given to someone else, is
        left alone. The registry does not close these executors (they were
        registered as instances, so they belong to the plugin): the plugin's
        ``teardown`` does, if it wants to.
        """
        sink = self._executors
        if not executors or not isinstance(sink, RemovableExecutorSink):
            return
        for executor_id, executor in executors.items():
            if sink.peek(executor_id) is not executor:
                continue
            try:
                await sink.unregister(executor_id)
            except Exception as exc:  # every executor and every plugin still gets its turn
                log.error(
                    "plugin %s: executor %s not unregistered: %s: %s",
                    name,
                    executor_id,
                    type(exc).__name__,
                    exc,
                )

    @staticmethod
    async def _teardown(name: str, plugin: Any) -> None:
        try:
            await plugin.teardown()
        except (Exception, SystemExit) as exc:
            log.error("plugin %s teardown failed: %s: %s", name, type(exc).__name__, exc)

    async def aclose(self) -> None:
        """Tear plugins down in reverse order of setup; errors are logged, all get their turn.

        Each plugin's executors are unregistered first (when the sink can forget
        them, as the ExecutorRegistry can), so no new step reaches an executor
        whose plugin is being torn down; a plain ``ExecutorSink`` keeps them.
        """
        while self._loaded:
            entry = self._loaded.pop()
            try:
                await self._unregister(entry.name, entry.context.executors)
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
