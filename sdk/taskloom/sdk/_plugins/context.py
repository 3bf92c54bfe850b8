"""The context a plugin's ``setup`` gets: the manifest's capabilities and nothing more.

Python cannot sandbox code in-process; these checks hold at taskloom's own APIs.
A plugin that imports ``os`` can still do what ``os`` can. The docs say so.

What taskloom does promise: the objects a plugin is handed (its context, its storage
view) hold no reference to anything beyond its grants. The real storage adapter, the
secret store and the capabilities live in a table of this module keyed by the
context, not in attributes of it; the objects have no ``__dict__`` and refuse
attribute assignment, so ``context._secrets`` or ``context._storage._inner`` do not
exist and the capabilities cannot be rebound. (A plugin that imports this module or
walks the garbage collector still finds them: that is the honest limit above.)
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Sequence

from taskloom.contracts import (
    NETWORK_GUARD,
    Capabilities,
    CapabilityDenied,
    CommitResult,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    LLMExecutor,
    Op,
    PluginError,
    Put,
    Record,
    Secret,
    SecretStore,
    StepFunction,
    StorageAdapter,
    StreamEntry,
)
from taskloom.contracts import (
    Append as AppendOp,
)
from taskloom.contracts import (
    Check as CheckOp,
)
from taskloom.contracts import (
    Delete as DeleteOp,
)
from taskloom.security._capabilities import HostRule, parse_host_rule, request_target


class _Sealed:
    """No ``__dict__``, no attribute assignment: what a plugin holds cannot be re-pointed."""

    __slots__ = ("__weakref__",)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")


class _View:
    """What a ``ScopedStorage`` stands for, kept out of the plugin's reach."""

    __slots__ = ("allowed", "inner", "plugin", "revoked")

    def __init__(self, inner: StorageAdapter, plugin: str, allowed: frozenset[str]) -> None:
        self.inner = inner
        self.plugin = plugin
        self.allowed = allowed
        self.revoked = False


_VIEWS: weakref.WeakKeyDictionary[ScopedStorage, _View] = weakref.WeakKeyDictionary()


class ScopedStorage(_Sealed):
    """A StorageAdapter view that admits only a plugin's declared namespaces.

    Namespace ``ns`` of plugin ``p`` is stored as ``plugin.p.ns`` (streams alike),
    so two plugins declaring the same name never share data.
    """

    __slots__ = ()

    def __init__(self, inner: StorageAdapter, plugin_name: str, namespaces: Sequence[str]) -> None:
        if self in _VIEWS:
            raise AttributeError("a storage view cannot be re-initialized")
        _VIEWS[self] = _View(inner, plugin_name, frozenset(namespaces))

    @property
    def revoked(self) -> bool:
        """True once the plugin is unloaded: every call is refused."""
        return _VIEWS[self].revoked

    def revoke(self) -> None:
        """Close the view for good (the host calls it when the plugin goes)."""
        _VIEWS[self].revoked = True

    @property
    def _inner(self) -> StorageAdapter:
        raise AttributeError("a plugin's storage view does not hand out the real storage")

    @property
    def _plugin(self) -> str:
        return _VIEWS[self].plugin

    def _ns(self, namespace: str) -> str:
        view = _VIEWS[self]
        if view.revoked:
            raise CapabilityDenied(
                f"plugin {view.plugin!r} was unloaded (torn down or failed to set up): its "
                "storage view is closed"
            )
        if namespace not in view.allowed:
            declared = ", ".join(sorted(view.allowed)) or "none"
            raise CapabilityDenied(
                f"plugin {view.plugin!r} may not use storage namespace {namespace!r} "
                f"(declared: {declared}); add it to the manifest's storage_namespaces and re-sign"
            )
        return f"plugin.{view.plugin}.{namespace}"

    def _outer(self, record: Record) -> Record:
        prefix = f"plugin.{self._plugin}."
        return Record(
            namespace=record.namespace[len(prefix) :],
            key=record.key,
            value=record.value,
            version=record.version,
            updated_at=record.updated_at,
            expires_at=record.expires_at,
        )

    def _outer_entry(self, entry: StreamEntry) -> StreamEntry:
        prefix = f"plugin.{self._plugin}."
        return StreamEntry(
            stream=entry.stream[len(prefix) :],
            seq=entry.seq,
            payload=entry.payload,
            appended_at=entry.appended_at,
        )

    async def get(self, namespace: str, key: str) -> Record | None:
        record = await _VIEWS[self].inner.get(self._ns(namespace), key)
        return None if record is None else self._outer(record)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Record:
        record = await _VIEWS[self].inner.put(
            self._ns(namespace), key, value, if_version=if_version, ttl=ttl
        )
        return self._outer(record)

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        return await _VIEWS[self].inner.delete(self._ns(namespace), key, if_version=if_version)

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        records = await _VIEWS[self].inner.scan(
            self._ns(namespace), prefix=prefix, start_after=start_after, limit=limit
        )
        return [self._outer(r) for r in records]

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        return self._outer_entry(await _VIEWS[self].inner.append(self._ns(stream), payload))

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        entries = await _VIEWS[self].inner.read(self._ns(stream), after=after, limit=limit)
        return [self._outer_entry(e) for e in entries]

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        scoped: list[Op] = []
        for op in ops:
            if isinstance(op, Put):
                scoped.append(
                    Put(
                        namespace=self._ns(op.namespace),
                        key=op.key,
                        value=op.value,
                        if_version=op.if_version,
                        ttl=op.ttl,
                    )
                )
            elif isinstance(op, DeleteOp):
                scoped.append(
                    DeleteOp(namespace=self._ns(op.namespace), key=op.key, if_version=op.if_version)
                )
            elif isinstance(op, AppendOp):
                scoped.append(AppendOp(stream=self._ns(op.stream), payload=op.payload))
            else:
                assert isinstance(op, CheckOp)
                scoped.append(
                    CheckOp(namespace=self._ns(op.namespace), key=op.key, version=op.version)
                )
        result = await _VIEWS[self].inner.commit(scoped)
        return CommitResult(
            records=tuple(self._outer(r) for r in result.records),
            entries=tuple(self._outer_entry(e) for e in result.entries),
            deleted=result.deleted,
        )

    async def aclose(self) -> None:
        """The host owns the real storage; a plugin closing its view changes nothing."""


class GuardedExecutor:
    """A plugin's executor as the engine sees it: while it runs, every HTTP request
    taskloom's transports send is checked against the plugin's network grant
    (``taskloom.contracts.check_network``), not only the URL it had when registered."""

    __slots__ = ("_check", "_inner")

    def __init__(self, inner: LLMExecutor, check: Callable[[str], None]) -> None:
        self._inner = inner
        self._check = check

    def __repr__(self) -> str:
        return f"GuardedExecutor({self._inner!r})"

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        token = NETWORK_GUARD.set(self._check)
        try:
            return await self._inner.complete(request)
        finally:
            NETWORK_GUARD.reset(token)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        # the guard is set around each step only, so it never leaks into the consumer
        chunks = self._inner.stream(request).__aiter__()
        try:
            while True:
                token = NETWORK_GUARD.set(self._check)
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    NETWORK_GUARD.reset(token)
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Grants:
    """What one plugin's context stands for, kept out of the plugin's reach."""

    __slots__ = (
        "capabilities",
        "executors",
        "name",
        "on_secret",
        "registering",
        "revoked",
        "rules",
        "secrets",
        "steps",
        "storage",
    )

    def __init__(
        self,
        name: str,
        capabilities: Capabilities,
        storage: ScopedStorage,
        secrets: SecretStore | None,
        on_secret: Callable[[Secret], object] | None = None,
    ) -> None:
        self.name = name
        self.on_secret = on_secret
        self.capabilities = capabilities
        self.storage = storage
        self.secrets = secrets
        self.registering = True
        self.revoked = False
        self.executors: dict[str, LLMExecutor] = {}
        self.steps: dict[str, StepFunction] = {}
        self.rules: tuple[HostRule, ...] = tuple(_rules(capabilities.network_hosts))


def _rules(entries: Sequence[str]) -> list[HostRule]:
    """The parsed host grants; an entry outside the documented form grants nothing
    (a verified manifest never holds one; an unverified one in development mode may)."""
    rules = []
    for entry in entries:
        try:
            rules.append(parse_host_rule(entry))
        except ValueError:
            continue
    return rules


_GRANTS: weakref.WeakKeyDictionary[HostedPluginContext, _Grants] = weakref.WeakKeyDictionary()


class HostedPluginContext(_Sealed):
    """The PluginContext the host hands to one plugin's ``setup``.

    Registrations are collected here and applied by the host only after
    ``setup`` returned, so a plugin that fails half-way leaves nothing behind.
    A plugin may keep its context: once ``setup`` returned, registering is
    refused (the host has already applied the registrations); once the plugin
    is torn down or failed, the host revokes the context and secrets and
    storage are refused too.
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        plugin_name: str,
        capabilities: Capabilities,
        storage: StorageAdapter,
        secrets: SecretStore | None,
        on_secret: Callable[[Secret], object] | None = None,
    ) -> None:
        if self in _GRANTS:
            raise AttributeError("a plugin context cannot be re-initialized")
        scoped = ScopedStorage(storage, plugin_name, capabilities.storage_namespaces)
        _GRANTS[self] = _Grants(plugin_name, capabilities, scoped, secrets, on_secret)

    @property
    def executors(self) -> dict[str, LLMExecutor]:
        """The executors registered in ``setup`` (a copy: the host applies them)."""
        return dict(_GRANTS[self].executors)

    @property
    def steps(self) -> dict[str, StepFunction]:
        """The steps registered in ``setup``, by qualified name ``plugin.step`` (a copy)."""
        return dict(_GRANTS[self].steps)

    def close_registration(self) -> None:
        """``setup`` returned: later registrations would never reach the engine, so refuse them."""
        _GRANTS[self].registering = False

    def revoke(self) -> None:
        """The plugin is gone (torn down, or its setup failed): refuse everything from now on."""
        grants = _GRANTS[self]
        grants.registering = False
        grants.revoked = True
        grants.storage.revoke()

    def _check_registering(self, what: str, value: str) -> None:
        grants = _GRANTS[self]
        if grants.revoked:
            raise CapabilityDenied(
                f"plugin {grants.name!r} registered {what} {value!r} after it was unloaded"
            )
        if not grants.registering:
            raise CapabilityDenied(
                f"plugin {grants.name!r} registered {what} {value!r} after its setup returned: "
                "register everything inside setup(context)"
            )

    @property
    def plugin_name(self) -> str:
        return _GRANTS[self].name

    @property
    def capabilities(self) -> Capabilities:
        """What the manifest granted (frozen; the context holds no way to change it)."""
        return _GRANTS[self].capabilities

    @property
    def storage(self) -> StorageAdapter:
        return _GRANTS[self].storage

    def _deny(self, what: str, value: str, declared: Sequence[str], field: str) -> CapabilityDenied:
        listed = ", ".join(declared) or "none"
        return CapabilityDenied(
            f"plugin {self.plugin_name!r} asked for {what} {value!r} that its manifest does not "
            f"declare (declared: {listed}); add it to capabilities.{field} and re-sign"
        )

    def register_executor(self, executor_id: str, executor: LLMExecutor, /) -> None:
        self._check_registering("executor", executor_id)
        caps = self.capabilities
        if executor_id not in caps.executors:
            raise self._deny("executor", executor_id, caps.executors, "executors")
        if not isinstance(executor, LLMExecutor):
            raise PluginError(
                f"plugin {self.plugin_name!r} registered {type(executor).__name__} as executor "
                f"{executor_id!r}; register an LLMExecutor (complete, stream, aclose)"
            )
        # An HTTP executor names its server: it may only be one of the declared hosts.
        # (taskloom's HTTP executors keep it in _base_url; others may expose base_url.)
        target = getattr(executor, "base_url", None) or getattr(executor, "_base_url", None)
        if isinstance(target, str) and target:
            self.check_url(target)
        _GRANTS[self].executors[executor_id] = GuardedExecutor(executor, self.check_url)

    def register_step(self, step_id: str, function: StepFunction, /) -> None:
        self._check_registering("step", step_id)
        caps = self.capabilities
        if step_id not in caps.steps:
            raise self._deny("step", step_id, caps.steps, "steps")
        _GRANTS[self].steps[f"{self.plugin_name}.{step_id}"] = function

    async def secret(self, name: str, /) -> Secret:
        grants = _GRANTS[self]
        if grants.revoked:
            raise CapabilityDenied(
                f"plugin {grants.name!r} asked for secret {name!r} after it was unloaded"
            )
        if name not in grants.capabilities.secrets:
            raise self._deny("secret", name, grants.capabilities.secrets, "secrets")
        if grants.secrets is None:
            raise CapabilityDenied(
                f"plugin {grants.name!r} needs secret {name!r} but no secret store is configured"
            )
        secret = await grants.secrets.get(name)
        if grants.on_secret is not None:
            grants.on_secret(secret)  # masked wherever the engine stores or shows data
        return secret

    def check_url(self, url: str, /) -> None:
        """Refuse ``url`` unless its scheme, host and port are within a declared
        ``network_hosts`` entry (see ``taskloom.security._capabilities``)."""
        grants = _GRANTS[self]
        declared = grants.capabilities.network_hosts
        try:
            scheme, host, port = request_target(url)
        except ValueError:
            raise self._deny("network host", url[:200], declared, "network_hosts") from None
        if not any(rule.admits(scheme, host, port) for rule in grants.rules):
            raise self._deny("network host", f"{scheme}://{host}:{port}", declared, "network_hosts")
