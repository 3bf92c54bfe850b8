"""Import a plugin's code from verified bytes only.

The plugin host never lets Python's normal import machinery near a plugin
directory: a file swapped after verification, or a ``.pyc`` planted beside a
``.py``, would otherwise run. Instead each plugin's ``.py`` files, as bytes that
passed verification, are served by a meta-path finder under a private package
``taskloom_plugins.<name>``, compiled from those bytes and never cached as
bytecode. A plugin module therefore cannot shadow an installed package or
another plugin; inside a plugin, modules import each other relatively
(``from . import helpers``). A name under ``taskloom_plugins`` that is not
among the verified files is refused outright, so no other finder on
``sys.meta_path`` (the path finder, an editable-install hook) is ever asked
for it, and a failed import leaves none of the plugin's modules behind.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType

from taskloom.contracts import PluginError

ROOT_PACKAGE = "taskloom_plugins"


def package_name(plugin_name: str) -> str:
    """The private package a plugin's modules live under."""
    return f"{ROOT_PACKAGE}.{plugin_name.replace('-', '_')}"


class _Loader(importlib.abc.Loader):
    def __init__(self, source: bytes, origin: str) -> None:
        self._source = source
        self._origin = origin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        code = compile(self._source, self._origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)


class _VerifiedFinder(importlib.abc.MetaPathFinder):
    """Serves modules under ``taskloom_plugins.*`` from in-memory verified sources."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # module name -> (source bytes, is package, origin label)
        self._modules: dict[str, tuple[bytes, bool, str]] = {}

    def add(self, modules: Mapping[str, tuple[bytes, bool, str]]) -> None:
        with self._lock:
            self._modules.update(modules)

    def remove_prefix(self, prefix: str) -> None:
        with self._lock:
            for name in [n for n in self._modules if n == prefix or n.startswith(prefix + ".")]:
                del self._modules[name]

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == ROOT_PACKAGE:
            source, is_package, origin = b"", True, "<taskloom plugins>"
        elif fullname.startswith(ROOT_PACKAGE + "."):
            with self._lock:
                entry = self._modules.get(fullname)
            if entry is None:
                # Never fall through to the path finder or any other finder.
                raise ModuleNotFoundError(
                    f"no module named {fullname!r} among the verified files of a loaded plugin",
                    name=fullname,
                )
            source, is_package, origin = entry
        else:
            return None
        found = importlib.util.spec_from_loader(
            fullname, _Loader(source, origin), origin=origin, is_package=is_package
        )
        if found is not None:
            found.has_location = False
        return found


_FINDER = _VerifiedFinder()
_OWNERS: dict[str, object] = {}
"""Private package name -> the host that loaded it: one plugin package per process."""


def _install_finder() -> None:
    """Put the finder first on ``sys.meta_path`` and make sure the root package is ours."""
    if not sys.meta_path or sys.meta_path[0] is not _FINDER:
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        sys.meta_path.insert(0, _FINDER)
    existing = sys.modules.get(ROOT_PACKAGE)
    if existing is not None:
        spec = getattr(existing, "__spec__", None)
        if not isinstance(getattr(spec, "loader", None), _Loader):
            where = getattr(spec, "origin", None) or getattr(existing, "__file__", None)
            raise PluginError(
                f"a module named {ROOT_PACKAGE!r} was already imported from {where}; it would "
                "stand in for the plugins' private package: uninstall or rename it"
            )


def modules_from_files(
    plugin_name: str, files: Mapping[str, bytes]
) -> dict[str, tuple[bytes, bool, str]]:
    """Map a plugin's verified ``.py`` files to module names under its private package."""
    base = package_name(plugin_name)
    modules: dict[str, tuple[bytes, bool, str]] = {
        base: (b"", True, f"<plugin {plugin_name}>"),
    }
    for path, data in files.items():
        if not path.endswith(".py"):
            continue
        parts = path[: -len(".py")].split("/")
        if not all(part.isidentifier() for part in parts):
            continue  # not importable as a module; stays data
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join([base, *parts]) if parts else base
        modules[name] = (data, is_package, f"<plugin {plugin_name}>/{path}")
        # parent packages without an __init__.py become empty namespace-like packages
        for depth in range(1, len(parts)):
            parent = ".".join([base, *parts[:depth]])
            modules.setdefault(
                parent, (b"", True, f"<plugin {plugin_name}>/{'/'.join(parts[:depth])}")
            )
    return modules


def import_entry_point(
    plugin_name: str, files: Mapping[str, bytes], entry_point: str, *, owner: object
) -> object:
    """Import ``module:attribute`` of a plugin from its verified files and return the attribute.

    ``owner`` (the plugin host) holds the plugin's private package until
    :func:`unload`; another owner asking for the same package is refused, so
    two hosts never swap each other's modules. On any failure nothing stays.
    """
    module_part, _, attribute = entry_point.partition(":")
    modules = modules_from_files(plugin_name, files)
    base = package_name(plugin_name)
    holder = _OWNERS.get(base)
    if holder is not None and holder is not owner:
        raise PluginError(
            f"plugin {plugin_name!r}: its package {base} is already loaded by another plugin "
            "host in this process; close that host first (one copy per process)"
        )
    target = f"{base}.{module_part}"
    if target not in modules:
        raise PluginError(
            f"plugin {plugin_name!r}: entry point module {module_part!r} is not among its "
            "verified .py files; check 'entry_point' in the manifest"
        )
    _install_finder()
    unload(plugin_name)
    _OWNERS[base] = owner
    _FINDER.add(modules)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(target)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise PluginError(
                f"plugin {plugin_name!r}: module {module_part!r} has no attribute {attribute!r}"
            ) from None
    except BaseException:
        unload(plugin_name)
        raise


def unload(plugin_name: str, *, owner: object = None) -> None:
    """Forget a plugin's modules, so a reload imports the newly verified bytes.

    With ``owner``, only if that owner holds the package (another host's copy stays).
    """
    base = package_name(plugin_name)
    holder = _OWNERS.get(base)
    if owner is not None and holder is not None and holder is not owner:
        return
    _OWNERS.pop(base, None)
    _FINDER.remove_prefix(base)
    for name in [n for n in sys.modules if n == base or n.startswith(base + ".")]:
        del sys.modules[name]
