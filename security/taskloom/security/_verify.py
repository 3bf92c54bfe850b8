"""Plugin verification: from envelope bytes and a directory to verified file bytes.

The checks run in a fixed order, cheapest and most fundamental first, and each
failure is its own ``SecurityError`` subclass:

1. size cap (before decoding anything)      ``InputTooLarge``
2. envelope shape, payload type             ``MalformedEnvelope``, ``WrongPayloadType``
3. signatures, distinct-key threshold       ``SignatureInvalid``, ``ThresholdNotMet``
4. strict manifest parse                    ``MalformedManifest``
5. key scope and revocation                 ``KeyNotInScope``, ``KeyRevoked``
6. expiry against one reference time        ``ManifestExpired``, ``ManifestNotYetValid``
7. the expected plugin name                 ``NameMismatch``
   the caller's own check, if given         whatever it raises (the plugin host
                                            refuses a plugin needing a newer taskloom)
8. rollback                                 ``RollbackDetected``, ``VersionReused``
9. the exact file set, then each file       ``FileSetMismatch``, ``UnsafeFile``,
                                            ``FileDigestMismatch``

Signatures are checked over the payload bytes received, before those bytes
are parsed; nothing is ever re-serialized. Each file is read once, and the
bytes that were hashed are the bytes handed back in ``VerifiedPlugin.files``:
the plugin host imports code from those, so a file swapped or a ``.pyc``
planted after verification never runs. The rollback high-water mark moves only
after every check passed.
"""

from __future__ import annotations

import hashlib
import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import attrs

from taskloom.contracts import PluginManifest, UsageError
from taskloom.security._envelope import parse_envelope, valid_signers
from taskloom.security._errors import (
    FileDigestMismatch,
    FileSetMismatch,
    InputTooLarge,
    KeyNotInScope,
    KeyRevoked,
    ManifestExpired,
    ManifestNotYetValid,
    NameMismatch,
    ThresholdNotMet,
    WrongPayloadType,
)
from taskloom.security._files import PluginTree
from taskloom.security._manifest import MANIFEST_PAYLOAD_TYPE, parse_manifest
from taskloom.security._marks import RollbackMarks
from taskloom.security._trust import RollbackGuard, TrustStore, payload_digest

MAX_ENVELOPE_BYTES = 1 << 20
"""Largest signed envelope accepted (1 MiB: about 5,000 listed files)."""

MAX_PLUGIN_BYTES = 256 * 1024 * 1024
"""Largest total size of a plugin's files, as declared by its manifest."""

_SIZE = operator.attrgetter("size")


@attrs.frozen(kw_only=True)
class VerifiedManifest:
    """A manifest whose envelope, signatures, scope, expiry and name all checked out."""

    manifest: PluginManifest
    signers: frozenset[str]
    payload_sha256: str


@attrs.frozen(kw_only=True)
class VerifiedPlugin:
    """A plugin that passed every check, with the exact bytes that were verified.

    ``files`` maps each listed relative path to the bytes read and hashed during
    verification; load code from these, never from the directory again.
    """

    manifest: PluginManifest
    signers: frozenset[str]
    files: Mapping[str, bytes]
    payload_sha256: str


def _short(key_ids: Iterable[str]) -> str:
    return ", ".join(sorted(k[:16] + "..." for k in key_ids))


def verify_manifest(
    envelope_bytes: bytes,
    trust: TrustStore,
    *,
    now: float | None = None,
    expected_name: str | None = None,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
) -> VerifiedManifest:
    """Steps 1 to 7: everything that needs no directory and no rollback state."""
    if not isinstance(envelope_bytes, bytes):
        raise UsageError(f"envelope must be bytes, got {type(envelope_bytes).__name__}")
    reference = time.time() if now is None else now
    envelope = parse_envelope(envelope_bytes, max_bytes=max_envelope_bytes)
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
        raise WrongPayloadType(
            f"the envelope holds {envelope.payload_type[:80]!r}, not a plugin manifest "
            f"({MANIFEST_PAYLOAD_TYPE}): pass the plugin's manifest envelope"
        )
    signers = valid_signers(envelope, trust.public_keys())
    if len(signers) < trust.threshold:
        raise ThresholdNotMet(
            f"{len(signers)} distinct trusted key(s) signed this manifest; the trust store "
            f"requires {trust.threshold}: add the publisher's key to the trust store, or ask "
            "for more signatures"
        )
    manifest = parse_manifest(envelope.payload, max_bytes=max_envelope_bytes)
    name = manifest.name
    revoked = signers & trust.revoked
    keys = trust.keys
    out_of_scope = {k for k in signers if not keys[k].may_sign(name)}
    counted = signers - revoked - out_of_scope
    needed = trust.threshold_for(name)
    if len(counted) < needed:
        if revoked:
            raise KeyRevoked(
                f"plugin {name!r} is signed by revoked key(s) {_short(revoked)}; "
                f"{len(counted)} valid signature(s) remain of {needed} required: ask the "
                "publisher to sign with a current key"
            )
        if out_of_scope:
            raise KeyNotInScope(
                f"key(s) {_short(out_of_scope)} may not sign plugin {name!r}; "
                f"{len(counted)} signature(s) in scope of {needed} required: extend the key's "
                "plugins in the trust store only if you trust it for this plugin"
            )
        raise ThresholdNotMet(
            f"plugin {name!r} needs {needed} distinct signatures; it has {len(counted)}: "
            "ask for more signatures"
        )
    if manifest.expires_at <= reference:
        raise ManifestExpired(
            f"the manifest of plugin {name!r} expired at {manifest.expires_at} "
            f"(now {int(reference)}): ask the publisher for a freshly signed manifest"
        )
    if manifest.issued_at > reference:
        raise ManifestNotYetValid(
            f"the manifest of plugin {name!r} is issued at {manifest.issued_at}, after now "
            f"({int(reference)}): check this machine's clock"
        )
    if expected_name is not None and name != expected_name:
        raise NameMismatch(
            f"the manifest is for plugin {name!r}, but plugin {expected_name!r} is being "
            "loaded: the envelope belongs to another plugin; install the right one"
        )
    return VerifiedManifest(
        manifest=manifest, signers=counted, payload_sha256=payload_digest(envelope.payload)
    )


def read_verified_files(
    plugin_dir: str | os.PathLike[str],
    manifest: PluginManifest,
    *,
    max_plugin_bytes: int = MAX_PLUGIN_BYTES,
    ignore_bytecode_caches: bool = False,
) -> dict[str, bytes]:
    """Step 9: the directory holds exactly the listed files, each with its length and digest.

    ``ignore_bytecode_caches=True`` skips each ``__pycache__`` directory that holds
    only unlisted ``*.pyc`` files and no subdirectory (what pip compiles into an
    installed package). Safe only for a caller that, like the plugin host, runs
    code from the returned bytes and never lets Python's import system near the
    directory: the skipped files are neither read nor returned. A ``__pycache__``
    holding anything else is checked like any other directory.
    """
    total = sum(map(_SIZE, manifest.files))
    if total > max_plugin_bytes:
        raise InputTooLarge(
            f"plugin {manifest.name!r} declares {total} bytes of files; the limit is "
            f"{max_plugin_bytes}",
            size=total,
            limit=max_plugin_bytes,
        )
    listed = {entry.path: entry for entry in manifest.files}
    with PluginTree(plugin_dir) as tree:
        skipped = _bytecode_caches(tree, listed) if ignore_bytecode_caches else frozenset()
        if skipped:
            present = {path for path in tree.files if path.rpartition("/")[0] not in skipped}
        else:
            present = set(tree.files)
        extra = sorted(present - listed.keys())
        if extra:
            raise FileSetMismatch(
                f"{len(extra)} file(s) in {plugin_dir} are not in the signed manifest, "
                f"first {extra[0]!r}: remove them (compiled caches such as .pyc are not "
                "needed) or reinstall the plugin"
            )
        needed_dirs = {path.rpartition("/")[0] for path in listed}
        for directory in list(needed_dirs):
            while directory:
                directory = directory.rpartition("/")[0]
                needed_dirs.add(directory)
        needed_dirs.discard("")
        unneeded = [d for d in tree.directories() if d not in needed_dirs and d not in skipped]
        if unneeded:
            raise FileSetMismatch(
                f"directory {unneeded[0]!r} in {plugin_dir} holds no listed file (such as an "
                "empty __pycache__): remove it or reinstall the plugin"
            )
        missing = sorted(listed.keys() - present)
        if missing:
            raise FileSetMismatch(
                f"{len(missing)} file(s) listed in the manifest are missing from {plugin_dir}, "
                f"first {missing[0]!r}: reinstall the plugin"
            )
        files: dict[str, bytes] = {}
        read, sha256 = tree.read_exact, hashlib.sha256
        for path, entry in listed.items():
            data = read(path, entry.size)
            if data is None:
                raise FileDigestMismatch(
                    f"{path!r} in {plugin_dir} is not the size the manifest lists "
                    f"({entry.size} bytes): it was changed; reinstall the plugin"
                )
            if sha256(data).hexdigest() != entry.sha256:
                raise FileDigestMismatch(
                    f"{path!r} in {plugin_dir} does not match its SHA-256 in the manifest: "
                    "it was changed; reinstall the plugin"
                )
            files[path] = data
    return files


def _bytecode_caches(tree: PluginTree, listed: Mapping[str, object]) -> frozenset[str]:
    """The ``__pycache__`` directories holding only unlisted ``*.pyc`` files, no subdirectory."""
    directories = list(tree.directories())
    caches = {d for d in directories if d.rpartition("/")[2] == "__pycache__"}
    if not caches:
        return frozenset()
    for directory in directories:
        caches.discard(directory.rpartition("/")[0])
    for path in tree.files:
        parent, _, name = path.rpartition("/")
        if parent in caches and (not name.endswith(".pyc") or path in listed):
            caches.discard(parent)
    return frozenset(caches)


async def verify_plugin(
    plugin_dir: str | os.PathLike[str],
    envelope_bytes: bytes,
    trust: TrustStore,
    *,
    rollback: RollbackGuard | RollbackMarks,
    now: float | None = None,
    expected_name: str | None = None,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
    max_plugin_bytes: int = MAX_PLUGIN_BYTES,
    ignore_bytecode_caches: bool = False,
    check_manifest: Callable[[PluginManifest], None] | None = None,
) -> VerifiedPlugin:
    """Run every check in order; a ``VerifiedPlugin`` or a ``SecurityError`` subclass.

    ``now`` is the one reference time for every time check (``time.time()`` by
    default). The version is recorded in ``rollback`` only after full success.
    The files are read synchronously, each once (a plugin is verified once, at
    load time); run it in a worker thread if the event loop must never block.
    ``ignore_bytecode_caches`` is passed to :func:`read_verified_files`.

    ``check_manifest`` is the caller's own test of the signed manifest (the plugin
    host refuses one asking for a newer taskloom). It runs after the signatures,
    scope, expiry and name checked out -- so it only ever judges what a trusted
    publisher signed -- and before the rollback state is read or any file is
    read; whatever it raises propagates, and the rollback high-water mark stays
    where it was, so a plugin refused here can still be replaced by an older one.
    """
    checked = verify_manifest(
        envelope_bytes,
        trust,
        now=now,
        expected_name=expected_name,
        max_envelope_bytes=max_envelope_bytes,
    )
    manifest = checked.manifest
    if check_manifest is not None:
        check_manifest(manifest)
    revoked = trust.revoked
    if isinstance(rollback, RollbackMarks):  # marks beside the trust store know its version
        rollback.check_trust_version(trust.version)
    observed = await rollback.check(
        manifest.name,
        manifest.version,
        checked.payload_sha256,
        revoked=revoked,
        capabilities=manifest.capabilities,
    )
    files = read_verified_files(
        plugin_dir,
        manifest,
        max_plugin_bytes=max_plugin_bytes,
        ignore_bytecode_caches=ignore_bytecode_caches,
    )
    await rollback.record(
        manifest.name,
        manifest.version,
        checked.payload_sha256,
        observed=observed,
        signers=checked.signers,
        revoked=revoked,
        capabilities=manifest.capabilities,
    )
    return VerifiedPlugin(
        manifest=manifest,
        signers=checked.signers,
        files=MappingProxyType(files),
        payload_sha256=checked.payload_sha256,
    )
