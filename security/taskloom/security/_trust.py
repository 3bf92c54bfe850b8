"""The trust store (which publisher keys may sign which plugins) and rollback state.

The trust store is a JSON file the application owns. It lists publisher keys,
the plugin names or ``fnmatch`` patterns each key may sign for, how many
distinct keys must sign (globally and, optionally, per plugin pattern -- a
pattern can only raise the global threshold), and revoked key ids. It may be
signed by a root key, in the same envelope format as manifests with its own
payload type, so a manifest envelope can never pass for a trust store.

Keys are judged when they are added *and* when a file is loaded: a key of
small order or in non-canonical encoding verifies forged signatures in
OpenSSL's Ed25519 and is refused with ``WeakKey``.

Rollback state -- the highest version of each plugin accepted so far and the
digest of its payload -- lives in a ``StorageAdapter`` so that it survives
restarts and can be shared by the processes that share the store.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs
import rfc8785

from taskloom.contracts import (
    Capabilities,
    ConflictError,
    DecodeError,
    StorageAdapter,
    StorageCorrupted,
    UsageError,
)
from taskloom.contracts.serde import structure
from taskloom.security._ed25519 import weakness
from taskloom.security._envelope import parse_envelope, sign_envelope, valid_signers
from taskloom.security._errors import (
    KeyRevoked,
    MalformedEnvelope,
    MalformedInput,
    MalformedTrustStore,
    SignatureInvalid,
    WeakKey,
    WrongPayloadType,
)
from taskloom.security._keys import PrivateKey, PublicKey, _write_atomic
from taskloom.security._marks import Mark, judge, new_capabilities, next_mark
from taskloom.security._strictjson import loads_strict

TRUST_STORE_FORMAT = "taskloom.trust-store/v1"
TRUST_STORE_PAYLOAD_TYPE = "application/vnd.taskloom.trust-store+json"
"""The envelope ``payloadType`` of a signed trust store."""

MAX_TRUST_STORE_BYTES = 1 << 20
ROLLBACK_NAMESPACE = "trust.rollback"

_KEY_ID = re.compile(r"[0-9a-f]{64}")
_v = attrs.validators


def check_public_key(key: PublicKey) -> None:
    """Raise ``WeakKey`` if ``key`` would let forged signatures verify."""
    problem = weakness(key.raw)
    if problem is not None:
        raise WeakKey(
            f"public key {key.key_id[:16]}... is refused: {problem}. Such a key accepts "
            "signatures nobody made; ask the publisher for their real public key"
        )


def _to_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class TrustedKey:
    """A publisher key and the plugin names or patterns it may sign for."""

    public_key: PublicKey = attrs.field(validator=_v.instance_of(PublicKey))
    plugins: tuple[str, ...] = attrs.field(
        converter=_to_tuple, validator=_v.deep_iterable(_v.instance_of(str))
    )
    label: str = attrs.field(default="", validator=_v.instance_of(str))

    @property
    def key_id(self) -> str:
        """The key id (hex SHA-256 of the raw public key)."""
        return self.public_key.key_id

    def may_sign(self, plugin_name: str) -> bool:
        """True if this key may sign for ``plugin_name`` (case-sensitive ``fnmatch``)."""
        return any(fnmatch.fnmatchcase(plugin_name, pattern) for pattern in self.plugins)


# --- file format ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _KeyRecord:
    key_id: str
    public_key: str
    plugins: list[str]
    label: str = ""


@attrs.frozen(kw_only=True)
class _PatternThreshold:
    pattern: str
    threshold: int


@attrs.frozen(kw_only=True)
class _TrustFile:
    format: str
    threshold: int
    keys: list[_KeyRecord]
    revoked: list[str]
    thresholds: list[_PatternThreshold] = attrs.Factory(list)
    version: int = 0


class TrustStore:
    """Which keys the application trusts, for which plugins, and how many must sign."""

    def __init__(self, *, threshold: int = 1, version: int = 0) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise UsageError("a trust store version is an integer >= 0")
        self.version = version
        """Grows by one with every ``save``; a copy older than one already trusted is
        refused (``RollbackMarks.check_trust_version``)."""
        self._keys: dict[str, TrustedKey] = {}
        self._revoked: set[str] = set()
        self._thresholds: dict[str, int] = {}
        self.threshold = 1
        self.set_threshold(threshold)

    # -- reading -------------------------------------------------------------

    @property
    def keys(self) -> Mapping[str, TrustedKey]:
        """The trusted keys by key id (revoked ones included; see ``revoked``)."""
        return dict(self._keys)

    @property
    def revoked(self) -> frozenset[str]:
        """Revoked key ids; their signatures never count."""
        return frozenset(self._revoked)

    @property
    def thresholds(self) -> Mapping[str, int]:
        """Per-pattern thresholds (each only ever raises the global one)."""
        return dict(self._thresholds)

    def public_keys(self) -> dict[str, PublicKey]:
        """Every listed public key by id, for checking signatures."""
        return {kid: k.public_key for kid, k in self._keys.items()}

    def threshold_for(self, plugin_name: str) -> int:
        """Distinct signatures required for ``plugin_name``: the highest that applies."""
        matching = (n for p, n in self._thresholds.items() if fnmatch.fnmatchcase(plugin_name, p))
        return max([self.threshold, *matching])

    # -- changing ------------------------------------------------------------

    def add_key(
        self, public_key: PublicKey, *, plugins: Sequence[str], label: str = ""
    ) -> TrustedKey:
        """Trust ``public_key`` for the plugin names or patterns ``plugins``.

        Refused: weak keys (``WeakKey``), revoked keys (``KeyRevoked``), an
        empty ``plugins`` list. Adding a key already present replaces its scope.
        """
        check_public_key(public_key)
        if public_key.key_id in self._revoked:
            raise KeyRevoked(
                f"key {public_key.key_id[:16]}... is revoked in this trust store; "
                "a revoked key cannot be trusted again: ask the publisher for a new key"
            )
        if (
            isinstance(plugins, str)
            or not plugins
            or not all(isinstance(p, str) and p for p in plugins)
        ):
            raise UsageError("plugins must be a non-empty list of plugin names or patterns")
        trusted = TrustedKey(public_key=public_key, plugins=tuple(plugins), label=label)
        self._keys[public_key.key_id] = trusted
        return trusted

    def remove_key(self, key_id: str) -> bool:
        """Stop trusting ``key_id``; True if it was listed."""
        return self._keys.pop(key_id, None) is not None

    def revoke(self, key_id: str) -> None:
        """Revoke ``key_id``: its signatures never count again, even if it is re-added."""
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise UsageError("a key id is 64 lowercase hex digits")
        self._revoked.add(key_id)

    def set_threshold(self, threshold: int, *, pattern: str | None = None) -> None:
        """Set the global threshold, or one for plugins matching ``pattern``."""
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise UsageError("a threshold is an integer >= 1")
        if pattern is None:
            self.threshold = threshold
        else:
            self._thresholds[pattern] = threshold

    # -- files ---------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The trust store's canonical JSON (the payload that a root key signs)."""
        return bytes(
            rfc8785.dumps(
                {
                    "format": TRUST_STORE_FORMAT,
                    "version": self.version,
                    "threshold": self.threshold,
                    "thresholds": [
                        {"pattern": p, "threshold": n} for p, n in sorted(self._thresholds.items())
                    ],
                    "keys": [
                        {
                            "key_id": k.key_id,
                            "public_key": k.public_key.to_base64(),
                            "plugins": list(k.plugins),
                            "label": k.label,
                        }
                        for _, k in sorted(self._keys.items())
                    ],
                    "revoked": sorted(self._revoked),
                }
            )
        )

    def save(self, path: str | os.PathLike[str], *, sign_with: PrivateKey | None = None) -> None:
        """Write the store atomically as the next version; signed by ``sign_with`` (a
        root key) if given. Each save is newer than the copy it came from."""
        if sign_with is not None:
            check_public_key(sign_with.public_key)
        self.version += 1
        payload = self.to_bytes()
        data = (
            payload
            if sign_with is None
            else sign_envelope(TRUST_STORE_PAYLOAD_TYPE, payload, [sign_with])
        )
        _write_atomic(Path(path), data, mode=0o644, overwrite=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, root_key: PublicKey | None = None) -> TrustStore:
        """Read a trust store; with ``root_key`` it must be an envelope signed by that key."""
        file = Path(path)
        try:
            with file.open("rb") as handle:
                data = handle.read(MAX_TRUST_STORE_BYTES + 1)
        except OSError as exc:
            raise MalformedTrustStore(
                f"cannot read trust store {file}: {exc.strerror or exc}; check the path"
            ) from exc
        return cls.from_bytes(data, root_key=root_key, source=str(file))

    @classmethod
    def from_bytes(
        cls, data: bytes, *, root_key: PublicKey | None = None, source: str = "trust store"
    ) -> TrustStore:
        """Parse trust store bytes (see ``load``)."""
        if root_key is not None:
            if not isinstance(root_key, PublicKey):
                raise UsageError(f"root_key must be a PublicKey, got {type(root_key).__name__}")
            check_public_key(root_key)  # a weak root key would accept a forged trust store
            try:
                envelope = parse_envelope(data, max_bytes=MAX_TRUST_STORE_BYTES)
            except MalformedEnvelope as exc:
                raise MalformedTrustStore(
                    f"{source} is not a signed trust store ({exc}); a root key was given, so "
                    "the store must be signed: `TrustStore.save(path, sign_with=root_key)`"
                ) from exc
            if envelope.payload_type != TRUST_STORE_PAYLOAD_TYPE:
                raise WrongPayloadType(
                    f"{source} is a signed {envelope.payload_type!r}, not a trust store"
                )
            if root_key.key_id not in valid_signers(envelope, {root_key.key_id: root_key}):
                raise SignatureInvalid(
                    f"{source} is not signed by the root key {root_key.key_id[:16]}...: "
                    "sign it with `TrustStore.save(path, sign_with=root_key)`"
                )
            data = envelope.payload
        try:
            raw = loads_strict(data, max_bytes=MAX_TRUST_STORE_BYTES, what=source)
        except MalformedInput as exc:
            raise MalformedTrustStore(str(exc)) from exc
        if root_key is None and isinstance(raw, dict) and "payloadType" in raw:
            raise MalformedTrustStore(
                f"{source} is signed; pass root_key= to check its signature before trusting it"
            )
        try:
            parsed = structure(raw, _TrustFile)
        except DecodeError as exc:
            raise MalformedTrustStore(f"{source} is not a valid trust store: {exc}") from exc
        return cls._from_file(parsed, source)

    @classmethod
    def _from_file(cls, parsed: _TrustFile, source: str) -> TrustStore:
        if parsed.format != TRUST_STORE_FORMAT:
            raise MalformedTrustStore(
                f"{source} has format {parsed.format!r}; this taskloom reads {TRUST_STORE_FORMAT!r}"
            )
        try:
            store = cls(threshold=parsed.threshold, version=parsed.version)
            for item in parsed.thresholds:
                store.set_threshold(item.threshold, pattern=item.pattern)
            for kid in parsed.revoked:
                store.revoke(kid)
            for record in parsed.keys:
                key = PublicKey.from_base64(record.public_key)
                if key.key_id != record.key_id:
                    raise MalformedTrustStore(
                        f"{source}: key id {record.key_id[:16]}... does not match its public key"
                    )
                check_public_key(key)
                store._keys[key.key_id] = TrustedKey(
                    public_key=key, plugins=tuple(record.plugins), label=record.label
                )
        except UsageError as exc:
            raise MalformedTrustStore(f"{source} is not a valid trust store: {exc}") from exc
        return store


# --- rollback ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RollbackState:
    """What the guard saw for a plugin: the highest version accepted, its payload digest,
    and the storage record version it was read at (0: nothing accepted yet)."""

    version: int | None
    sha256: str | None
    record_version: int
    mark: Mark | None = None
    judged: tuple[object, ...] | None = attrs.field(default=None, eq=False, repr=False)
    """What ``check`` accepted against ``mark`` (plugin, version, digest, revoked,
    capabilities): ``record`` with the same arguments need not judge it again."""


class RollbackGuard:
    """The highest version accepted of each plugin and the digest of that version's payload.

    ``check`` refuses a lower version (``RollbackDetected``), the same version with
    another payload (``VersionReused``) and an update asking for capabilities not
    granted or approved (``CapabilitiesNotApproved``), unless every key that signed
    the accepted version was revoked since (the floor resets: see
    ``taskloom.security._marks``); ``record`` stores a new high-water mark with a
    version check, so two processes never lower it.

    The marks live in the ``StorageAdapter`` given, so they go when it goes (a
    deleted database, ``storage.kind = "memory"``). ``RollbackMarks`` keeps them
    beside the trust store instead and fails closed when they are missing; the CLI
    uses that.
    """

    def __init__(self, storage: StorageAdapter, *, namespace: str = ROLLBACK_NAMESPACE) -> None:
        self._storage = storage
        self._namespace = namespace
        # The last record read per plugin and its parse: the same bytes parse the same,
        # so a record that did not change since is not parsed again.
        self._parsed: dict[str, tuple[bytes, Mark]] = {}

    async def highest(self, plugin_name: str) -> tuple[int, str] | None:
        """(version, payload sha256) of the highest version accepted, or None."""
        state = await self._load(plugin_name)
        if state.version is None or state.sha256 is None:
            return None
        return state.version, state.sha256

    async def _load(
        self, plugin_name: str, judged: tuple[object, ...] | None = None
    ) -> RollbackState:
        record = await self._storage.get(self._namespace, plugin_name)
        if record is None:
            return RollbackState(version=None, sha256=None, record_version=0, judged=judged)
        value = record.value
        parsed = self._parsed.get(plugin_name)
        if parsed is not None and parsed[0] == value:
            mark = parsed[1]
        else:
            try:
                raw = loads_strict(value, max_bytes=1 << 20, what="rollback record")
                mark = Mark.from_data(raw, "a rollback record")
            except (MalformedInput, ValueError) as exc:
                raise StorageCorrupted(
                    f"rollback record of plugin {plugin_name!r} is damaged: {exc}; "
                    "restore the store from a backup"
                ) from exc
            self._parsed[plugin_name] = (bytes(value), mark)
        return RollbackState(
            version=mark.version,
            sha256=mark.sha256,
            record_version=record.version,
            mark=mark,
            judged=judged,
        )

    async def mark(self, plugin_name: str) -> Mark | None:
        """Everything recorded for ``plugin_name`` (None: nothing accepted yet)."""
        mark = (await self._load(plugin_name)).mark
        if mark is None:
            return None
        # a copy: the guard keeps its parse for the next read, the caller may edit this one
        capabilities = None if mark.capabilities is None else dict(mark.capabilities)
        return attrs.evolve(mark, capabilities=capabilities, approved=dict(mark.approved))

    async def check(
        self,
        plugin_name: str,
        version: int,
        digest: str,
        *,
        revoked: frozenset[str] = frozenset(),
        capabilities: Capabilities | None = None,
    ) -> RollbackState:
        """Refuse ``version`` if it would roll ``plugin_name`` back, reuse a version or add
        capabilities nobody approved. Returns the state it judged, for ``record``."""
        state = await self._load(plugin_name, (plugin_name, version, digest, revoked, capabilities))
        judge(plugin_name, state.mark, version, digest, revoked=revoked, capabilities=capabilities)
        return state

    async def record(
        self,
        plugin_name: str,
        version: int,
        digest: str,
        *,
        observed: object = None,
        signers: frozenset[str] | tuple[str, ...] = (),
        revoked: frozenset[str] = frozenset(),
        capabilities: Capabilities | None = None,
    ) -> None:
        """Remember ``version`` (with ``digest``, its signers and capabilities) as accepted,
        under a version check.

        ``observed`` is what ``check`` returned; if the storage changed since, the
        version check fails and the record is read and judged again.
        """
        state = observed if isinstance(observed, RollbackState) else None
        for _ in range(16):
            if state is None:
                state = await self._load(plugin_name)
            if state.judged != (plugin_name, version, digest, revoked, capabilities):
                judge(
                    plugin_name,
                    state.mark,
                    version,
                    digest,
                    revoked=revoked,
                    capabilities=capabilities,
                )
            new = next_mark(
                state.mark,
                version,
                digest,
                signers=signers,
                capabilities=capabilities,
                revoked=revoked,
            )
            if new == state.mark:
                return
            value = bytes(rfc8785.dumps(new.to_data()))
            try:
                await self._storage.put(
                    self._namespace, plugin_name, value, if_version=state.record_version
                )
            except ConflictError:
                state = None
                continue
            return
        raise ConflictError(
            f"could not record plugin {plugin_name!r} version {version}: the rollback record "
            "kept changing; try again",
            namespace=self._namespace,
            key=plugin_name,
        )

    async def approve(self, plugin_name: str, capabilities: Capabilities) -> dict[str, list[str]]:
        """Allow later versions of ``plugin_name`` to ask for ``capabilities`` (see
        ``RollbackMarks.approve``); returns what was newly approved."""
        for _ in range(16):
            state = await self._load(plugin_name)
            if state.mark is None:
                raise UsageError(
                    f"plugin {plugin_name!r} was never loaded here: nothing to approve"
                )
            added = new_capabilities(state.mark, capabilities)
            if not added:
                return {}
            approved = {k: set(v) for k, v in state.mark.approved.items()}
            for field, values in added.items():
                approved.setdefault(field, set()).update(values)
            mark = attrs.evolve(
                state.mark, approved={k: tuple(sorted(v)) for k, v in approved.items()}
            )
            try:
                await self._storage.put(
                    self._namespace,
                    plugin_name,
                    bytes(rfc8785.dumps(mark.to_data())),
                    if_version=state.record_version,
                )
            except ConflictError:
                continue
            return added
        raise ConflictError(
            f"could not approve capabilities of plugin {plugin_name!r}: try again",
            namespace=self._namespace,
            key=plugin_name,
        )


def payload_digest(payload: bytes) -> str:
    """Hex SHA-256 of signed payload bytes (what the rollback guard remembers)."""
    return hashlib.sha256(payload).hexdigest()
