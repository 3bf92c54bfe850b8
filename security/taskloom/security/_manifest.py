"""Plugin manifests: build one from a directory, turn it into signed bytes, parse it back.

``manifest_bytes`` is the only place a manifest is serialized: RFC 8785
canonical JSON of the converter's output, so the same manifest always gives
the same bytes. Verification never calls it -- it checks signatures over the
bytes it received and then parses those bytes with ``parse_manifest``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import rfc8785

from taskloom.contracts import (
    Capabilities,
    DecodeError,
    FileEntry,
    PluginManifest,
    UsageError,
)
from taskloom.contracts.serde import structure, unstructure
from taskloom.security._envelope import sign_envelope
from taskloom.security._errors import MalformedInput, MalformedManifest, UnsafeFile
from taskloom.security._files import PluginTree, check_relative_path
from taskloom.security._keys import PrivateKey
from taskloom.security._strictjson import loads_strict

MANIFEST_PAYLOAD_TYPE = "application/vnd.taskloom.plugin-manifest+json"
"""The envelope ``payloadType`` of a plugin manifest."""

MAX_MANIFEST_FILES = 10_000
"""Most files a manifest may list."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest single file a manifest may list."""


def build_manifest(
    plugin_dir: str | os.PathLike[str],
    *,
    name: str,
    version: int,
    entry_point: str,
    publisher: str,
    capabilities: Capabilities,
    issued_at: int,
    expires_at: int,
    min_sdk_version: str,
    description: str = "",
) -> PluginManifest:
    """List every file under ``plugin_dir`` with its length and SHA-256.

    Symlinks, special files and empty directories are refused rather than
    skipped: the verifier refuses them too, so a manifest built here always
    matches the directory it was built from.
    """
    if expires_at <= issued_at:
        raise UsageError("expires_at must be later than issued_at")
    entries = []
    with PluginTree(plugin_dir) as tree:
        if tree.empty_dirs:
            raise UnsafeFile(
                f"empty directory {tree.empty_dirs[0]!r} in {plugin_dir}: remove it "
                "(verification refuses directories that hold no listed file)"
            )
        if len(tree.files) > MAX_MANIFEST_FILES:
            raise UsageError(f"a plugin may hold at most {MAX_MANIFEST_FILES} files")
        for path in tree.files:
            check_relative_path(path)
            data = tree.read(path, limit=MAX_FILE_BYTES)
            if len(data) > MAX_FILE_BYTES:
                raise UsageError(f"{path!r} is larger than {MAX_FILE_BYTES} bytes")
            entries.append(
                FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            )
    check_file_list(entries)
    return PluginManifest(
        name=name,
        version=version,
        entry_point=entry_point,
        publisher=publisher,
        files=tuple(entries),
        capabilities=capabilities,
        issued_at=issued_at,
        expires_at=expires_at,
        min_sdk_version=min_sdk_version,
        description=description,
    )


def check_file_list(files: Sequence[FileEntry]) -> None:
    """Refuse unsafe, duplicate or case-colliding paths in a manifest's file list."""
    if len(files) > MAX_MANIFEST_FILES:
        raise MalformedManifest(f"the manifest lists more than {MAX_MANIFEST_FILES} files")
    seen: dict[str, str] = {}
    for entry in files:
        check_relative_path(entry.path)
        folded = entry.path.casefold()
        other = seen.get(folded)
        if other is not None:
            what = "twice" if other == entry.path else f"and {other!r}, differing only in case"
            raise UnsafeFile(
                f"the manifest lists {entry.path!r} {what}; on a case-insensitive disk they are "
                "one file: rename one of them and sign again"
            )
        seen[folded] = entry.path
        if entry.size > MAX_FILE_BYTES:
            raise MalformedManifest(
                f"{entry.path!r} is listed as {entry.size} bytes; the limit is {MAX_FILE_BYTES}"
            )


def manifest_bytes(manifest: PluginManifest) -> bytes:
    """The canonical bytes (RFC 8785) that are signed for ``manifest``."""
    return bytes(rfc8785.dumps(unstructure(manifest, PluginManifest)))


def sign_manifest(manifest: PluginManifest, keys: Sequence[PrivateKey]) -> bytes:
    """The signed envelope of ``manifest``, one signature per key of ``keys``."""
    check_file_list(manifest.files)
    return sign_envelope(MANIFEST_PAYLOAD_TYPE, manifest_bytes(manifest), keys)


def parse_manifest(payload: bytes, *, max_bytes: int) -> PluginManifest:
    """Parse the signed payload strictly into a ``PluginManifest``.

    Unknown fields, wrong types, floats, duplicate keys, unsafe or colliding
    paths are all ``MalformedManifest`` (or ``UnsafeFile`` for paths).
    """
    try:
        raw = loads_strict(payload, max_bytes=max_bytes, what="plugin manifest")
    except MalformedInput as exc:
        raise MalformedManifest(f"{exc}; ask the publisher for a valid manifest") from exc
    try:
        manifest = structure(raw, PluginManifest)
    except DecodeError as exc:
        raise MalformedManifest(
            f"the signed manifest is not valid ({exc}); ask the publisher to sign it again "
            "with this version of taskloom"
        ) from exc
    check_file_list(manifest.files)
    return manifest
