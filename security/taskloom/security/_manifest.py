"""Plugin manifests: build one from a directory, turn it into signed bytes, parse it back.

``manifest_bytes`` is the only place a manifest is serialized: RFC 8785
canonical JSON of the converter's output, so the same manifest always gives
the same bytes. Verification never calls it -- it checks signatures over the
bytes it received and then parses those bytes with ``parse_manifest``.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
import unicodedata
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from typing import Any, NoReturn

import attrs
import rfc8785

from taskloom.contracts import (
    Capabilities,
    FileEntry,
    PluginManifest,
    UsageError,
)
from taskloom.contracts.serde import unstructure
from taskloom.security._capabilities import capability_problems, unprintable
from taskloom.security._envelope import sign_envelope
from taskloom.security._errors import MalformedInput, MalformedManifest, UnsafeFile
from taskloom.security._files import (
    MAX_PATH_BYTES,
    SAFE_PATH,
    PluginTree,
    check_relative_path,
)
from taskloom.security._keys import PrivateKey
from taskloom.security._strictjson import MAX_SAFE_INTEGER, loads_strict

MANIFEST_PAYLOAD_TYPE = "application/vnd.taskloom.plugin-manifest+json"
"""The envelope ``payloadType`` of a plugin manifest."""

MAX_MANIFEST_FILES = 10_000
"""Most files a manifest may list."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest single file a manifest may list."""

SHA256_HEX = re.compile(r"[0-9a-f]{64}")

SDK_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
"""What ``min_sdk_version`` must look like: ``MAJOR.MINOR.PATCH``, ASCII digits, no
leading zeros, no pre-release or other suffix (a plugin names the *release* it needs;
the plugin host compares it with the running taskloom). Nine digits per part at most,
so the host's ``int()`` of each part is always cheap."""


def check_sdk_version_format(text: object) -> str | None:
    """Why ``text`` is not a valid ``min_sdk_version``, or None if it is."""
    if not isinstance(text, str):
        return f"must be text, got {type(text).__name__}"
    if SDK_VERSION.fullmatch(text) is None:
        return (
            f"{text[:40]!r} is not MAJOR.MINOR.PATCH (such as '0.1.0': digits only, no "
            "leading zeros, no pre-release suffix such as 'rc1')"
        )
    return None


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
    _check_min_sdk_version(min_sdk_version)
    entries = []
    with PluginTree(plugin_dir) as tree:
        if tree.empty_dirs:
            raise UnsafeFile(
                f"empty directory {tree.empty_dirs[0]!r} in {plugin_dir}: remove it "
                "(verification refuses directories that hold no listed file)"
            )
        if len(tree.files) > MAX_MANIFEST_FILES:
            raise UsageError(f"a plugin may hold at most {MAX_MANIFEST_FILES} files")
        for path in sorted(tree.files):
            check_relative_path(path)
            data = tree.read_exact(path, None, max_size=MAX_FILE_BYTES)
            if data is None:
                raise UsageError(f"{path!r} changed while the manifest was being built")
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


def _paths_look_safe(paths: Sequence[str], sizes: Sequence[int]) -> bool:
    """The common case, decided column-wise in C: every path safe, none colliding."""
    return (
        all(map(SAFE_PATH.fullmatch, paths))
        and all(map(str.isascii, paths))
        and max(map(len, paths)) <= MAX_PATH_BYTES
        and len(set(map(str.casefold, paths))) == len(paths)
        and max(sizes) <= MAX_FILE_BYTES
    )


def check_file_list(files: Sequence[FileEntry]) -> None:
    """Refuse unsafe, duplicate or case-colliding paths in a manifest's file list.

    The common case -- every path fine -- is decided column-wise in C; only a
    refusal walks the list one entry at a time to name the culprit.
    """
    if len(files) > MAX_MANIFEST_FILES:
        raise MalformedManifest(f"the manifest lists more than {MAX_MANIFEST_FILES} files")
    if not files:
        return
    if _paths_look_safe([e.path for e in files], [e.size for e in files]):
        return
    seen: dict[str, str] = {}
    for entry in files:
        check_relative_path(entry.path)
        # NFC first: macOS stores names decomposed (NFD), so 'é' typed two ways is one file
        folded = unicodedata.normalize("NFC", entry.path).casefold()
        other = seen.get(folded)
        if other is not None:
            what = (
                "twice"
                if other == entry.path
                else f"and {other!r}, differing only in case or Unicode normalization"
            )
            raise UnsafeFile(
                f"the manifest lists {entry.path!r} {what}; on a case-insensitive or "
                "normalizing disk they are one file: rename one of them and sign again"
            )
        seen[folded] = entry.path
        if entry.size > MAX_FILE_BYTES:
            raise MalformedManifest(
                f"{entry.path!r} is listed as {entry.size} bytes; the limit is {MAX_FILE_BYTES}"
            )


def _check_min_sdk_version(text: object) -> None:
    """Refuse to build or sign a manifest that every verifier would refuse."""
    problem = check_sdk_version_format(text)
    if problem is not None:
        raise UsageError(f"min_sdk_version {problem}: give the oldest taskloom release it runs on")


def manifest_bytes(manifest: PluginManifest) -> bytes:
    """The canonical bytes (RFC 8785) that are signed for ``manifest``.

    ``MalformedManifest`` if a value has no canonical form (an integer beyond
    +-(2**53 - 1), which no verifier would read back exactly).
    """
    try:
        return bytes(rfc8785.dumps(unstructure(manifest, PluginManifest)))
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise MalformedManifest(
            f"the manifest cannot be signed: {exc}; integers must be within +-(2**53 - 1)"
        ) from exc


def content_problems(manifest: PluginManifest) -> list[str]:
    """What signing refuses and verification refuses again, beyond the field types:
    version 0, unprintable publisher text, capability strings outside the rules."""
    problems: list[str] = []
    if manifest.version < 1:
        problems.append(f"version must be at least 1, got {manifest.version}")
    for field in ("publisher", "description"):
        char = unprintable(getattr(manifest, field))
        if char is not None:
            problems.append(
                f"{field} holds the control or format character {char!r}, which a terminal "
                "would act on instead of printing"
            )
    problems.extend(f"capabilities.{p}" for p in capability_problems(manifest.capabilities))
    return problems


def sign_manifest(manifest: PluginManifest, keys: Sequence[PrivateKey]) -> bytes:
    """The signed envelope of ``manifest``, one signature per key of ``keys``.

    Raises ``MalformedManifest`` (or ``UnsafeFile``) for what every verifier would
    refuse, never another library's error.
    """
    if not isinstance(manifest, PluginManifest):
        raise UsageError(f"sign_manifest takes a PluginManifest, got {type(manifest).__name__}")
    check_file_list(manifest.files)
    _check_min_sdk_version(manifest.min_sdk_version)
    problems = content_problems(manifest)
    if problems:
        raise MalformedManifest(
            f"the manifest of {manifest.name!r} cannot be signed: {'; '.join(problems)}"
        )
    return sign_envelope(MANIFEST_PAYLOAD_TYPE, manifest_bytes(manifest), keys)


_REQUIRED = frozenset(
    {"name", "version", "entry_point", "publisher", "files", "issued_at", "expires_at"}
)
_OPTIONAL = frozenset({"format", "capabilities", "min_sdk_version", "description"})
_INT_FIELDS = ("version", "issued_at", "expires_at")
_STR_FIELDS = ("name", "entry_point", "publisher", "min_sdk_version", "description", "format")
_CAPABILITY_FIELDS = frozenset(attrs.fields_dict(Capabilities))
_FILE_FIELDS = frozenset({"path", "size", "sha256"})


# FileEntry objects are built without running their attrs validators: the
# column checks in _file_entries have just checked exactly what those validators check
# (text path, int size >= 0, lowercase hex SHA-256), and running them again
# costs about a microsecond per file on every plugin load. The differential
# property test in tests/security pins the two to the same behaviour.
# The slot setters are applied column by column with map(), so no Python frame
# runs per file.
_new = object.__new__
_set = object.__setattr__
_SET_PATH = FileEntry.__dict__["path"].__set__
_SET_SIZE = FileEntry.__dict__["size"].__set__
_SET_SHA256 = FileEntry.__dict__["sha256"].__set__


_FILE_COLUMNS = operator.itemgetter("path", "size", "sha256")


def _all_lower_hex(text: str) -> bool:
    """True if ``text`` is only 0-9 and a-f (bytes.fromhex runs in C; a regex is 3x slower).

    fromhex also skips whitespace and accepts A-F: the length and case checks
    close both gaps.
    """
    try:
        decoded = bytes.fromhex(text)
    except ValueError:
        return False
    return len(decoded) * 2 == len(text) and text == text.lower()


def _file_entries(files: list[Any]) -> list[FileEntry]:
    """Check every file entry, then build them; the checks run column-wise, in C."""
    if not files:
        return []
    if set(map(type, files)) != {dict} or set(map(len, files)) != {3}:
        _refuse_entry(files, "must be an object with exactly path, size and sha256")
    try:
        rows = list(map(_FILE_COLUMNS, files))
    except KeyError:
        _refuse_entry(files, "must be an object with exactly path, size and sha256")
    paths, sizes, digests = zip(*rows, strict=True)
    if set(map(type, paths)) != {str} or set(map(type, digests)) != {str}:
        _refuse_entry(files, "has a path or sha256 that is not text")
    if set(map(type, sizes)) != {int} or min(sizes) < 0:
        _refuse_entry(files, "needs an integer size >= 0")
    if set(map(len, digests)) != {64} or not _all_lower_hex("".join(digests)):
        _refuse_entry(files, "needs a sha256 of 64 lowercase hex digits")
    if not _paths_look_safe(paths, sizes):
        check_file_list([FileEntry(path=p, size=n, sha256=h) for p, n, h in rows])
    entries = list(map(_new, repeat(FileEntry, len(rows))))
    deque(map(_SET_PATH, entries, paths), maxlen=0)
    deque(map(_SET_SIZE, entries, sizes), maxlen=0)
    deque(map(_SET_SHA256, entries, digests), maxlen=0)
    return entries


def _refuse_entry(files: list[Any], problem: str) -> NoReturn:
    """Name the first bad entry (the slow path, only on refusal)."""
    for index, item in enumerate(files):
        ok = (
            type(item) is dict
            and item.keys() == _FILE_FIELDS
            and type(item["path"]) is str
            and type(item["size"]) is int
            and item["size"] >= 0
            and type(item["sha256"]) is str
            and SHA256_HEX.fullmatch(item["sha256"]) is not None
        )
        if not ok:
            _refuse(f"$.files[{index}] {problem}")
    _refuse(f"$.files {problem}")


def _refuse(message: str) -> NoReturn:
    raise MalformedManifest(
        f"the signed manifest is not valid: {message}; ask the publisher to sign it again "
        "with this version of taskloom"
    )


def structure_manifest(raw: object) -> PluginManifest:
    """Build a PluginManifest from parsed JSON, refusing unknown fields and wrong types.

    The same rules as the contracts' converter (unknown fields refused, no
    coercion, defaults for optional fields), written out by hand because this
    runs on every plugin load and the generic converter costs several times
    more on a manifest listing many files. A property test checks that both
    accept and build the same manifests.
    """
    if type(raw) is not dict:
        _refuse(f"$ must be an object, got {type(raw).__name__}")
    unknown = raw.keys() - _REQUIRED - _OPTIONAL
    if unknown:
        _refuse(f"unknown field(s) {sorted(unknown)} at $")
    missing = _REQUIRED - raw.keys()
    if missing:
        _refuse(f"missing field(s) {sorted(missing)} at $")
    for field in _INT_FIELDS:
        value = raw[field]
        if type(value) is not int or not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            _refuse(f"$.{field} must be an integer within +-(2**53 - 1)")
    for field in _STR_FIELDS:
        if field in raw and type(raw[field]) is not str:
            _refuse(f"$.{field} must be text")
    if "min_sdk_version" in raw:
        problem = check_sdk_version_format(raw["min_sdk_version"])
        if problem is not None:
            _refuse(f"$.min_sdk_version {problem}")
    files = raw["files"]
    if type(files) is not list:
        _refuse("$.files must be a list")
    if len(files) > MAX_MANIFEST_FILES:
        _refuse(f"$.files lists more than {MAX_MANIFEST_FILES} files")
    entries = _file_entries(files)
    if "capabilities" not in raw:
        capabilities = Capabilities()
    else:
        caps = raw["capabilities"]
        if type(caps) is not dict:
            _refuse("$.capabilities must be an object")
        unknown = caps.keys() - _CAPABILITY_FIELDS
        if unknown:
            _refuse(f"unknown field(s) {sorted(unknown)} at $.capabilities")
        for field, values in caps.items():
            if type(values) is not list or any(type(v) is not str for v in values):
                _refuse(f"$.capabilities.{field} must be a list of text")
        capabilities = Capabilities(**caps)
    fields = {k: v for k, v in raw.items() if k not in ("files", "capabilities")}
    try:
        manifest = PluginManifest(files=(), capabilities=capabilities, **fields)
    except (TypeError, ValueError) as exc:
        _refuse(str(exc).split("\n")[0][:200])
    # Same shortcut as for the entries: every element is a FileEntry built above,
    # which is all the ``files`` validator would check, one call per file.
    _set(manifest, "files", tuple(entries))
    problems = content_problems(manifest)
    if problems:
        _refuse("; ".join(problems))
    return manifest


def parse_manifest(payload: bytes, *, max_bytes: int) -> PluginManifest:
    """Parse the signed payload strictly into a ``PluginManifest``.

    Unknown fields, wrong types, floats, duplicate keys are ``MalformedManifest``;
    unsafe or colliding paths are ``UnsafeFile`` (checked while structuring).
    """
    try:
        # structure_manifest checks a fixed schema: depth <= 3 and every integer
        # range-checked, so the generic walk would only repeat that work.
        raw = loads_strict(
            payload, max_bytes=max_bytes, what="plugin manifest", schema_bounded=True
        )
    except MalformedInput as exc:
        raise MalformedManifest(f"{exc}; ask the publisher for a valid manifest") from exc
    return structure_manifest(raw)
