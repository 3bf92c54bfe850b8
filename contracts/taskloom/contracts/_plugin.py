"""Plugins: the signed manifest as data, and the ``Plugin`` / ``PluginContext`` contracts."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

import attrs

from taskloom.contracts._llm import LLMExecutor
from taskloom.contracts._secrets import Secret
from taskloom.contracts._storage import StorageAdapter

_v = attrs.validators

MANIFEST_FORMAT = "taskloom.plugin-manifest/v1"
PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
ENTRY_POINT = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

JSONValue = Any
"""A value that JSON can hold: None, bool, int, float, str, list or dict of str keys."""

StepFunction = Callable[[Mapping[str, JSONValue]], Awaitable[JSONValue]]
"""A plugin step: takes the step's ``with`` arguments (templates resolved), returns JSON."""


def _str_tuple(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


_str_items = _v.deep_iterable(_v.instance_of(str), _v.instance_of(tuple))

NETWORK_GUARD: ContextVar[Callable[[str], None] | None] = ContextVar(
    "taskloom_network_guard", default=None
)
"""Set by the plugin host while a plugin's executor runs: the check of its network grant."""


def check_network(url: str) -> None:
    """Call before every HTTP request an executor sends (taskloom's own do, at their
    transport): while a plugin's executor is running, a URL outside the plugin's
    declared ``network_hosts`` (scheme, host and port) raises ``CapabilityDenied``."""
    guard = NETWORK_GUARD.get()
    if guard is not None:
        guard(url)


@attrs.frozen(kw_only=True)
class FileEntry:
    """One file of a plugin: its path relative to the plugin root (``/``-separated),
    its length in bytes and the hex SHA-256 of its content."""

    path: str = attrs.field(validator=_v.instance_of(str))
    size: int = attrs.field(validator=[_v.instance_of(int), _v.ge(0)])
    sha256: str = attrs.field(validator=[_v.instance_of(str), _v.matches_re(SHA256_HEX)])


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a plugin may touch; its context grants exactly this and nothing more."""

    network_hosts: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_str_items
    )
    secrets: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_str_items)
    storage_namespaces: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_str_items
    )
    executors: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_str_items)
    steps: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_str_items)


@attrs.frozen(kw_only=True)
class PluginManifest:
    """What a publisher signs: which code, from whom, asking for what, valid when.

    Times are integer epoch seconds (the signed format admits no floats).
    """

    format: str = attrs.field(default=MANIFEST_FORMAT, validator=_v.in_((MANIFEST_FORMAT,)))
    name: str = attrs.field(validator=[_v.instance_of(str), _v.matches_re(PLUGIN_NAME)])
    version: int = attrs.field(validator=[_v.instance_of(int), _v.ge(0)])
    entry_point: str = attrs.field(validator=[_v.instance_of(str), _v.matches_re(ENTRY_POINT)])
    publisher: str = attrs.field(validator=_v.instance_of(str))
    files: tuple[FileEntry, ...] = attrs.field(
        converter=_str_tuple, validator=_v.deep_iterable(_v.instance_of(FileEntry))
    )
    capabilities: Capabilities = attrs.field(
        factory=Capabilities, validator=_v.instance_of(Capabilities)
    )
    issued_at: int = attrs.field(validator=_v.instance_of(int))
    expires_at: int = attrs.field(validator=_v.instance_of(int))
    min_sdk_version: str = attrs.field(default="0.1.0", validator=_v.instance_of(str))
    description: str = attrs.field(default="", validator=_v.instance_of(str))


@runtime_checkable
class PluginContext(Protocol):
    """What a plugin's ``setup`` gets: only the capabilities its manifest declared.

    Invariants (checked by the plugin host tests in ``tests/sdk``):

    PL1 ``register_executor`` and ``register_step`` accept only ids the manifest
        declared; anything else raises ``CapabilityDenied``.
    PL2 ``secret`` returns only secrets the manifest declared; anything else
        raises ``CapabilityDenied`` before any store is asked.
    PL3 ``storage`` reads and writes only the namespaces the manifest declared
        (prefixed by the plugin's name); anything else raises ``CapabilityDenied``.
    PL4 ``check_url`` admits only URLs whose host the manifest declared.
    """

    @property
    def plugin_name(self) -> str:
        """The verified name of the plugin this context belongs to."""

    @property
    def capabilities(self) -> Capabilities:
        """What the plugin's manifest was granted (immutable)."""

    @property
    def storage(self) -> StorageAdapter:
        """Storage scoped to the namespaces the manifest declared (PL1)."""

    def register_executor(self, executor_id: str, executor: LLMExecutor, /) -> None:
        """Register an executor under a declared executor id (PL2)."""

    def register_step(self, step_id: str, function: StepFunction, /) -> None:
        """Register a step function, named ``<plugin>.<step_id>`` (PL3)."""

    async def secret(self, name: str, /) -> Secret:
        """One secret the manifest declared; any other name is ``CapabilityDenied``."""

    def check_url(self, url: str, /) -> None:
        """Raise ``CapabilityDenied`` unless ``url``'s host was declared (PL4)."""


@runtime_checkable
class Plugin(Protocol):
    """A plugin's entry point object.

    Invariants (checked by the plugin host tests in ``tests/sdk``):

    PL5 ``setup`` is called once, after the manifest and every file verified,
        with a context scoped to the manifest; ``teardown`` is called once, in
        the reverse order of setup, even when another plugin failed.
    PL6 A plugin whose ``setup`` raises is reported and unloaded; the others load.
    """

    async def setup(self, context: PluginContext, /) -> None:
        """Called once after verification, with the plugin's scoped context (PL5)."""

    async def teardown(self) -> None:
        """Called once at shutdown, in reverse order of setup (PL5)."""
