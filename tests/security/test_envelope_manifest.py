"""The DSSE envelope and the manifest builder."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from _sec_support import DEFAULT_FILES, NOW, keys, write_plugin
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import Capabilities, DecodeError, FileEntry, PluginManifest, UsageError
from taskloom.contracts.serde import structure, unstructure
from taskloom.security import (
    MANIFEST_PAYLOAD_TYPE,
    MalformedManifest,
    SignatureInvalid,
    UnsafeFile,
    build_manifest,
    generate_key,
    manifest_bytes,
    pae,
    parse_envelope,
    parse_manifest,
    sign_envelope,
    sign_manifest,
)
from taskloom.security._envelope import valid_signers
from taskloom.security._manifest import MAX_FILE_BYTES, structure_manifest


def test_pae_matches_the_dsse_specification_example() -> None:
    """PAE is 'DSSEv1 <len type> <type> <len body> <body>' (the DSSE spec's own example)."""
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_utf8_bytes_not_characters() -> None:
    """Lengths are byte lengths, so a non-ASCII type cannot shift the boundary."""
    assert pae("t\u00e9", b"\xff") == b"DSSEv1 3 t\xc3\xa9 1 \xff"


def test_envelope_fields_and_signatures() -> None:
    """sign_envelope writes payloadType, the base64 of the exact bytes, and one sig per key."""
    payload = b'{"any":"bytes"}'
    data = sign_envelope("application/x-test", payload, keys(2))
    raw = json.loads(data)
    assert set(raw) == {"payloadType", "payload", "signatures"}
    assert base64.b64decode(raw["payload"]) == payload
    assert [s["keyid"] for s in raw["signatures"]] == [k.key_id for k in keys(2)]
    for sig, key in zip(raw["signatures"], keys(2), strict=True):
        assert key.public_key.verify(
            base64.b64decode(sig["sig"]), pae("application/x-test", payload)
        )


def test_a_signature_for_one_type_does_not_verify_for_another() -> None:
    """Changing only the payload type invalidates the signature (the type is signed too)."""
    envelope = parse_envelope(sign_envelope("type/a", b"x", keys(1)), max_bytes=1000)
    moved = type(envelope)(payload_type="type/b", payload=b"x", signatures=envelope.signatures)
    with pytest.raises(SignatureInvalid):
        valid_signers(moved, {keys(1)[0].key_id: keys(1)[0].public_key})


def test_signing_needs_a_key() -> None:
    """An envelope with no signature is never produced."""
    with pytest.raises(UsageError):
        sign_envelope("t", b"x", [])


def test_manifest_lists_every_file_with_size_and_digest(tmp_path: Path) -> None:
    """build_manifest lists each file once, '/'-separated, with its length and SHA-256."""
    write_plugin(tmp_path, DEFAULT_FILES)
    manifest = build_manifest(
        tmp_path,
        name="demo",
        version=3,
        entry_point="plugin:setup",
        publisher="Example",
        capabilities=Capabilities(secrets=("token",)),
        issued_at=NOW,
        expires_at=NOW + 1,
        min_sdk_version="0.1.0",
    )
    assert {e.path: (e.size, e.sha256) for e in manifest.files} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in DEFAULT_FILES.items()
    }


def test_manifest_bytes_are_canonical_and_parse_back(tmp_path: Path) -> None:
    """manifest_bytes is RFC 8785 of the converter's output, and parse_manifest inverts it."""
    write_plugin(tmp_path, DEFAULT_FILES)
    manifest = build_manifest(
        tmp_path,
        name="demo",
        version=1,
        entry_point="plugin:setup",
        publisher="Example",
        capabilities=Capabilities(),
        issued_at=NOW,
        expires_at=NOW + 1,
        min_sdk_version="0.1.0",
    )
    data = manifest_bytes(manifest)
    assert (
        data
        == json.dumps(
            unstructure(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )
    assert parse_manifest(data, max_bytes=1 << 20) == manifest


names = st.from_regex(r"[a-z][a-z0-9_\-]{0,20}", fullmatch=True)
paths = st.lists(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,10}", fullmatch=True), min_size=1, max_size=3
).map("/".join)


@settings(max_examples=100)
@given(
    name=names,
    version=st.integers(1, 2**31),
    files=st.lists(
        st.builds(
            FileEntry,
            path=paths,
            size=st.integers(0, 2**20),
            sha256=st.binary(min_size=32, max_size=32).map(bytes.hex),
        ),
        max_size=8,
        unique_by=lambda e: e.path.casefold(),
    ),
    hosts=st.lists(
        st.from_regex(r"(\*\.)?[a-z][a-z0-9]{0,8}(\.[a-z]{2,5})?", fullmatch=True), max_size=3
    ),
    description=st.text(
        st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs")), max_size=40
    ),
)
def test_manifests_round_trip_through_their_signed_bytes(
    name: str,
    version: int,
    files: list[FileEntry],
    hosts: list[str],
    description: str,
) -> None:
    """Any valid manifest survives manifest_bytes then the strict parser unchanged."""
    manifest = PluginManifest(
        name=name,
        version=version,
        entry_point="pkg.mod:entry",
        publisher="p",
        files=tuple(files),
        capabilities=Capabilities(network_hosts=tuple(hosts)),
        issued_at=NOW,
        expires_at=NOW + 10,
        description=description,
    )
    assert parse_manifest(manifest_bytes(manifest), max_bytes=1 << 20) == manifest


def _build(root: Path) -> PluginManifest:
    return build_manifest(
        root,
        name="demo",
        version=1,
        entry_point="plugin:setup",
        publisher="x",
        capabilities=Capabilities(),
        issued_at=NOW,
        expires_at=NOW + 1,
        min_sdk_version="0.1.0",
    )


def test_building_refuses_symlinks(tmp_path: Path) -> None:
    """A symlink in the plugin directory is refused at build time, not silently skipped."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    (tmp_path / "p" / "link.py").symlink_to(tmp_path / "p" / "plugin.py")
    with pytest.raises(UnsafeFile):
        _build(tmp_path / "p")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_building_refuses_special_files(tmp_path: Path) -> None:
    """A FIFO is refused at build time."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    os.mkfifo(tmp_path / "p" / "fifo")
    with pytest.raises(UnsafeFile):
        _build(tmp_path / "p")


def test_building_refuses_empty_directories(tmp_path: Path) -> None:
    """An empty directory would fail verification, so building refuses it up front."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    (tmp_path / "p" / "empty").mkdir()
    with pytest.raises(UnsafeFile):
        _build(tmp_path / "p")


def test_building_refuses_a_symlinked_root(tmp_path: Path) -> None:
    """The plugin directory itself must be a real directory."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    (tmp_path / "alias").symlink_to(tmp_path / "p", target_is_directory=True)
    with pytest.raises(UnsafeFile):
        _build(tmp_path / "alias")


def test_signing_refuses_a_manifest_with_colliding_paths() -> None:
    """sign_manifest will not sign a list with two paths that differ only in case."""
    digest = hashlib.sha256(b"").hexdigest()
    manifest = PluginManifest(
        name="demo",
        version=1,
        entry_point="a:b",
        publisher="x",
        files=(
            FileEntry(path="Mod.py", size=0, sha256=digest),
            FileEntry(path="mod.py", size=0, sha256=digest),
        ),
        issued_at=NOW,
        expires_at=NOW + 1,
    )
    with pytest.raises(UnsafeFile):
        sign_manifest(manifest, [generate_key()])


def test_the_signed_payload_type_is_the_manifest_type(tmp_path: Path) -> None:
    """sign_manifest uses the plugin-manifest payload type."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    envelope = parse_envelope(sign_manifest(_build(tmp_path / "p"), keys(1)), max_bytes=1 << 20)
    assert envelope.payload_type == MANIFEST_PAYLOAD_TYPE


def _valid_raw() -> dict[str, object]:
    digest = hashlib.sha256(b"x").hexdigest()
    manifest = PluginManifest(
        name="demo",
        version=2,
        entry_point="pkg.mod:entry",
        publisher="p",
        files=(FileEntry(path="a.py", size=1, sha256=digest),),
        capabilities=Capabilities(secrets=("s",)),
        issued_at=NOW,
        expires_at=NOW + 10,
    )
    return json.loads(manifest_bytes(manifest))


odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.text(max_size=4),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["path", "size", "sha256", "x"]), st.integers(0, 2)),
)


@settings(max_examples=300)
@given(data=st.data())
def test_the_fast_manifest_structurer_is_never_laxer_than_the_converter(
    data: st.DataObject,
) -> None:
    """On mutated manifests, structure_manifest accepts only what serde accepts, equally built."""
    raw = _valid_raw()
    target = data.draw(st.sampled_from(["top", "file", "capabilities"]), label="where")
    node: dict[str, object] = raw
    if target == "file":
        node = raw["files"][0]  # type: ignore[index]
    elif target == "capabilities":
        node = raw["capabilities"]  # type: ignore[assignment]
    action = data.draw(st.sampled_from(["set", "delete", "add"]), label="action")
    if action == "delete" and node:
        del node[data.draw(st.sampled_from(sorted(node)), label="key")]
    elif action == "add":
        node[data.draw(st.text(max_size=6), label="new key")] = data.draw(odd_values)
    else:
        key = data.draw(st.sampled_from(sorted(node) or ["x"]), label="key")
        node[key] = data.draw(odd_values, label="value")
    try:
        expected = structure(raw, PluginManifest)
    except DecodeError:
        expected = None
    try:
        mine = structure_manifest(raw)
    except (MalformedManifest, UnsafeFile):  # UnsafeFile: paths are checked here too
        mine = None
    if mine is not None:
        assert expected == mine
    if expected is None:
        assert mine is None


@pytest.mark.parametrize(
    "digest",
    [
        "A" * 64,
        "0" * 62 + " a",
        "0" * 62 + "\t0",
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "\u0660" * 64,
    ],
)
def test_file_digests_must_be_64_lowercase_hex_digits(digest: str) -> None:
    """Upper case, whitespace, non-hex, wrong length or non-ASCII digits are refused."""
    raw = _valid_raw()
    raw["files"][0]["sha256"] = digest  # type: ignore[index]
    with pytest.raises(MalformedManifest):
        structure_manifest(raw)


def test_digits_only_digests_are_accepted() -> None:
    """A digest with no letters at all is still valid hex."""
    raw = _valid_raw()
    raw["files"][0]["sha256"] = "0123456789" * 6 + "0123"  # type: ignore[index]
    assert structure_manifest(raw).files[0].sha256.startswith("0123")


def test_building_refuses_an_oversized_file_before_reading_it(tmp_path: Path) -> None:
    """A (sparse) file over the per-file limit is refused from its size alone."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    with open(tmp_path / "p" / "huge.bin", "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(UsageError):
        _build(tmp_path / "p")
