"""The context a plugin's ``setup`` gets: the manifest's capabilities and nothing more.

Python cannot sandbox code in-process; these checks hold at taskloom's own APIs.
A plugin that imports ``os`` can still do what ``os`` can. The docs say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from taskloom.contracts import (
    Append as AppendOp,
)
from taskloom.contracts import (
    Capabilities,
    CapabilityDenied,
    CommitResult,
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
    Check as CheckOp,
)
from taskloom.contracts import (
    Delete as DeleteOp,
)


class ScopedStorage:
    """A StorageAdapter view that admits only a plugin's declared namespaces.

    Namespace ``ns`` of plugin ``p`` is stored as ``plugin.p.ns`` (streams alike),
    so two plugins declaring the same name never share data.
    """

    def __init__(self, inner: StorageAdapter, plugin_name: str, namespaces: Sequence[str]) -> None:
        self._inner = inner
        self._plugin = plugin_name
        self._allowed = frozenset(namespaces)
        self.revoked = False

    def _ns(self, namespace: str) -> str:
        if self.revoked:
            raise CapabilityDenied(
                f"plugin {self._plugin!r} was unloaded (torn down or failed to set up): its "
                "storage view is closed"
            )
        if namespace not in self._allowed:
            declared = ", ".join(sorted(self._allowed)) or "none"
            raise CapabilityDenied(
                f"plugin {self._plugin!r} may not use storage namespace {namespace!r} "
                f"(declared: {declared}); add it to the manifest's storage_namespaces and re-sign"
            )
        return f"plugin.{self._plugin}.{namespace}"

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
        record = await self._inner.get(self._ns(namespace), key)
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
        record = await self._inner.put(
            self._ns(namespace), key, value, if_version=if_version, ttl=ttl
        )
        return self._outer(record)

    async def delete(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        return await self._inner.delete(self._ns(namespace), key, if_version=if_version)

    async def scan(
        self,
        namespace: str,
        *,
        prefix: str = "",
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        records = await self._inner.scan(
            self._ns(namespace), prefix=prefix, start_after=start_after, limit=limit
        )
        return [self._outer(r) for r in records]

    async def append(self, stream: str, payload: bytes) -> StreamEntry:
        return self._outer_entry(await self._inner.append(self._ns(stream), payload))

    async def read(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[StreamEntry]:
        entries = await self._inner.read(self._ns(stream), after=after, limit=limit)
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
        result = await self._inner.commit(scoped)
        return CommitResult(
            records=tuple(self._outer(r) for r in result.records),
            entries=tuple(self._outer_entry(e) for e in result.entries),
            deleted=result.deleted,
        )

    async def aclose(self) -> None:
        """The host owns the real storage; a plugin closing its view changes nothing."""


class HostedPluginContext:
    """The PluginContext the host hands to one plugin's ``setup``.

    Registrations are collected here and applied by the host only after
    ``setup`` returned, so a plugin that fails half-way leaves nothing behind.
    A plugin may keep its context: once ``setup`` returned, registering is
    refused (the host has already applied the registrations); once the plugin
    is torn down or failed, the host revokes the context and secrets and
    storage are refused too.
    """

    def __init__(
        self,
        *,
        plugin_name: str,
        capabilities: Capabilities,
        storage: StorageAdapter,
        secrets: SecretStore | None,
    ) -> None:
        self._name = plugin_name
        self._caps = capabilities
        self._storage = ScopedStorage(storage, plugin_name, capabilities.storage_namespaces)
        self._secrets = secrets
        self._registering = True
        self._revoked = False
        self.executors: dict[str, LLMExecutor] = {}
        self.steps: dict[str, StepFunction] = {}

    def close_registration(self) -> None:
        """``setup`` returned: later registrations would never reach the engine, so refuse them."""
        self._registering = False

    def revoke(self) -> None:
        """The plugin is gone (torn down, or its setup failed): refuse everything from now on."""
        self._registering = False
        self._revoked = True
        self._storage.revoked = True

    def _check_registering(self, what: str, value: str) -> None:
        if self._revoked:
            raise CapabilityDenied(
                f"plugin {self._name!r} registered {what} {value!r} after it was unloaded"
            )
        if not self._registering:
            raise CapabilityDenied(
                f"plugin {self._name!r} registered {what} {value!r} after its setup returned: "
                "register everything inside setup(context)"
            )

    @property
    def plugin_name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def storage(self) -> StorageAdapter:
        return self._storage

    def _deny(self, what: str, value: str, declared: Sequence[str], field: str) -> CapabilityDenied:
        listed = ", ".join(declared) or "none"
        return CapabilityDenied(
            f"plugin {self._name!r} asked for {what} {value!r} that its manifest does not "
            f"declare (declared: {listed}); add it to capabilities.{field} and re-sign"
        )

    def register_executor(self, executor_id: str, executor: LLMExecutor, /) -> None:
        self._check_registering("executor", executor_id)
        if executor_id not in self._caps.executors:
            raise self._deny("executor", executor_id, self._caps.executors, "executors")
        if not isinstance(executor, LLMExecutor):
            raise PluginError(
                f"plugin {self._name!r} registered {type(executor).__name__} as executor "
                f"{executor_id!r}; register an LLMExecutor (complete, stream, aclose)"
            )
        # An HTTP executor names its server: it may only be one of the declared hosts.
        # (taskloom's HTTP executors keep it in _base_url; others may expose base_url.)
        target = getattr(executor, "base_url", None) or getattr(executor, "_base_url", None)
        if isinstance(target, str) and target:
            self.check_url(target)
        self.executors[executor_id] = executor

    def register_step(self, step_id: str, function: StepFunction, /) -> None:
        self._check_registering("step", step_id)
        if step_id not in self._caps.steps:
            raise self._deny("step", step_id, self._caps.steps, "steps")
        self.steps[f"{self._name}.{step_id}"] = function

    async def secret(self, name: str, /) -> Secret:
        if self._revoked:
            raise CapabilityDenied(
                f"plugin {self._name!r} asked for secret {name!r} after it was unloaded"
            )
        if name not in self._caps.secrets:
            raise self._deny("secret", name, self._caps.secrets, "secrets")
        if self._secrets is None:
            raise CapabilityDenied(
                f"plugin {self._name!r} needs secret {name!r} but no secret store is configured"
            )
        return await self._secrets.get(name)

    def check_url(self, url: str, /) -> None:
        host = (urlsplit(url).hostname or "").lower()
        allowed = {h.lower() for h in self._caps.network_hosts}
        if not host or host not in allowed:
            raise self._deny("network host", host or url, self._caps.network_hosts, "network_hosts")
