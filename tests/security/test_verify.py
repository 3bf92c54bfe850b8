"""Plugin verification: every attack in the issue is refused by the right check."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc8785
from _sec_support import NOW, DictStorage, keys, make_signed, trust_for, write_plugin
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import SecurityError
from taskloom.security import (
    MANIFEST_PAYLOAD_TYPE,
    TRUST_STORE_PAYLOAD_TYPE,
    FileDigestMismatch,
    FileSetMismatch,
    InputTooLarge,
    KeyNotInScope,
    KeyRevoked,
    MalformedEnvelope,
    MalformedManifest,
    ManifestExpired,
    ManifestNotYetValid,
    NameMismatch,
    RollbackDetected,
    RollbackGuard,
    SignatureInvalid,
    ThresholdNotMet,
    TrustStore,
    UnsafeFile,
    VerifiedPlugin,
    VersionReused,
    WrongPayloadType,
    add_signature,
    generate_key,
    parse_envelope,
    sign_envelope,
    verify_manifest,
    verify_plugin,
)
from taskloom.security._files import PluginTree


def run_verify(
    plugin_dir: Path,
    envelope: bytes,
    trust: TrustStore,
    *,
    storage: DictStorage | None = None,
    now: float = NOW,
    expected_name: str | None = None,
) -> VerifiedPlugin:
    """Run verify_plugin to completion in a fresh event loop."""
    guard = RollbackGuard(storage if storage is not None else DictStorage())
    return asyncio.run(
        verify_plugin(
            plugin_dir, envelope, trust, rollback=guard, now=now, expected_name=expected_name
        )
    )


@pytest.fixture(scope="module")
def signed_plugin() -> Iterator[tuple[Path, bytes]]:
    """One plugin directory and its envelope, signed by key 0, shared by a module."""
    root = Path(tempfile.mkdtemp(prefix="tl-sec-"))
    envelope = make_signed(root / "demo", keys(1))
    yield root / "demo", envelope
    shutil.rmtree(root)


def _payload_of(envelope: bytes) -> dict[str, object]:
    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))


def _resign(payload: bytes, *signers_: int) -> bytes:
    return sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, [keys(4)[i] for i in signers_])


# --- the good path ------------------------------------------------------------


def test_valid_plugin_verifies_and_returns_the_exact_bytes(tmp_path: Path) -> None:
    """A correctly signed plugin verifies; files holds each listed file's bytes, read-only."""
    envelope = make_signed(tmp_path / "p", keys(1))
    verified = run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))
    assert verified.manifest.name == "demo"
    assert verified.signers == {keys(1)[0].key_id}
    assert set(verified.files) == {e.path for e in verified.manifest.files}
    for path, data in verified.files.items():
        assert (tmp_path / "p" / path).read_bytes() == data
    with pytest.raises(TypeError):
        verified.files["plugin.py"] = b"evil"  # type: ignore[index]


def test_files_swapped_after_verification_do_not_change_the_verified_bytes(
    tmp_path: Path,
) -> None:
    """The verified bytes are a snapshot: changing the directory later cannot reach them."""
    envelope = make_signed(tmp_path / "p", keys(1))
    verified = run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))
    original = verified.files["plugin.py"]
    (tmp_path / "p" / "plugin.py").write_bytes(b"import os; os.system('evil')\n")
    assert verified.files["plugin.py"] == original


# --- single-byte changes ------------------------------------------------------------


def test_every_single_byte_flip_of_the_envelope_is_refused(
    signed_plugin: tuple[Path, bytes],
) -> None:
    """Flipping the low bit of any byte of a signed envelope makes verification fail."""
    _, envelope = signed_plugin
    trust = trust_for(*keys(1))
    verify_manifest(envelope, trust, now=NOW)
    for position in range(len(envelope)):
        changed = bytearray(envelope)
        changed[position] ^= 0x01
        with pytest.raises(SecurityError):
            verify_manifest(bytes(changed), trust, now=NOW)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_to_the_envelope_is_refused(
    signed_plugin: tuple[Path, bytes], data: st.DataObject
) -> None:
    """Replacing any byte of the envelope with any other value is refused by the full check."""
    root, envelope = signed_plugin
    position = data.draw(st.integers(0, len(envelope) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != envelope[position]), label="value")
    changed = bytearray(envelope)
    changed[position] = value
    with pytest.raises(SecurityError):
        run_verify(root, bytes(changed), trust_for(*keys(1)))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_to_a_listed_file_is_refused(
    signed_plugin: tuple[Path, bytes], data: st.DataObject
) -> None:
    """Changing, appending or removing one byte of any listed file is a digest mismatch."""
    root, envelope = signed_plugin
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    rel = data.draw(st.sampled_from(files), label="file")
    path = root / rel
    original = path.read_bytes()
    action = data.draw(st.sampled_from(["replace", "append", "truncate"]), label="action")
    if action == "replace" and original:
        position = data.draw(st.integers(0, len(original) - 1), label="position")
        value = data.draw(st.integers(0, 255).filter(lambda v: v != original[position]))
        changed = original[:position] + bytes([value]) + original[position + 1 :]
    elif action == "truncate" and original:
        changed = original[:-1]
    else:
        changed = original + bytes([data.draw(st.integers(0, 255), label="appended")])
    path.write_bytes(changed)
    try:
        with pytest.raises(FileDigestMismatch):
            run_verify(root, envelope, trust_for(*keys(1)))
    finally:
        path.write_bytes(original)


# --- signatures, threshold, scope, revocation --------------------------------------


def test_too_few_distinct_signers_is_refused(tmp_path: Path) -> None:
    """With a threshold of 2, one trusted signature is not enough."""
    envelope = make_signed(tmp_path / "p", keys(1))
    with pytest.raises(ThresholdNotMet):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(2), threshold=2))


def test_two_distinct_signers_meet_a_threshold_of_two(tmp_path: Path) -> None:
    """Two different trusted keys satisfy a threshold of 2 (also via add_signature)."""
    envelope = make_signed(tmp_path / "p", keys(1))
    envelope = add_signature(envelope, keys(2)[1])
    verified = run_verify(tmp_path / "p", envelope, trust_for(*keys(2), threshold=2))
    assert verified.signers == {k.key_id for k in keys(2)}


def test_the_same_signer_twice_counts_once(tmp_path: Path) -> None:
    """A key that signs twice (two signature entries) still counts as one signer."""
    envelope = make_signed(tmp_path / "p", keys(1))
    raw = json.loads(envelope)
    raw["signatures"] = raw["signatures"] * 2
    doubled = rfc8785.dumps(raw)
    assert len(parse_envelope(doubled, max_bytes=1 << 20).signatures) == 2
    with pytest.raises(ThresholdNotMet):
        run_verify(tmp_path / "p", doubled, trust_for(*keys(2), threshold=2))


def test_add_signature_by_the_same_key_adds_nothing(tmp_path: Path) -> None:
    """add_signature with a key that already signed leaves one signature by that key."""
    envelope = make_signed(tmp_path / "p", keys(1))
    again = add_signature(envelope, keys(1)[0])
    assert len(parse_envelope(again, max_bytes=1 << 20).signatures) == 1


def test_unknown_keys_are_ignored_not_trusted(tmp_path: Path) -> None:
    """Signatures by keys outside the trust store neither count nor fail the check."""
    stranger = generate_key()
    envelope = make_signed(tmp_path / "p", [stranger])
    with pytest.raises(ThresholdNotMet):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))
    both = add_signature(envelope, keys(1)[0])
    assert run_verify(tmp_path / "p", both, trust_for(*keys(1))).signers == {keys(1)[0].key_id}


def test_a_forged_signature_claiming_a_trusted_key_is_refused(tmp_path: Path) -> None:
    """A signature that names a trusted key but does not verify refuses the envelope."""
    envelope = make_signed(tmp_path / "p", keys(1))
    raw = json.loads(envelope)
    raw["signatures"].append(
        {"keyid": keys(2)[1].key_id, "sig": base64.b64encode(b"\x00" * 64).decode()}
    )
    with pytest.raises(SignatureInvalid):
        run_verify(tmp_path / "p", rfc8785.dumps(raw), trust_for(*keys(2)))


def test_a_key_outside_its_scope_is_refused(tmp_path: Path) -> None:
    """A key trusted only for other plugins cannot sign this one."""
    envelope = make_signed(tmp_path / "p", keys(1), name="demo")
    with pytest.raises(KeyNotInScope):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1), plugins=("other-*",)))


def test_fnmatch_patterns_grant_scope(tmp_path: Path) -> None:
    """A key trusted for 'de*' may sign plugin 'demo'."""
    envelope = make_signed(tmp_path / "p", keys(1), name="demo")
    assert run_verify(tmp_path / "p", envelope, trust_for(*keys(1), plugins=("de*",)))


def test_a_revoked_key_is_refused(tmp_path: Path) -> None:
    """A signature by a revoked key does not count, and the error says it was revoked."""
    envelope = make_signed(tmp_path / "p", keys(1))
    trust = trust_for(*keys(1))
    trust.revoke(keys(1)[0].key_id)
    with pytest.raises(KeyRevoked):
        run_verify(tmp_path / "p", envelope, trust)


def test_a_per_plugin_threshold_raises_the_global_one(tmp_path: Path) -> None:
    """A pattern threshold of 2 refuses a single signature even though the global one is 1."""
    envelope = make_signed(tmp_path / "p", keys(1), name="demo")
    trust = trust_for(*keys(2))
    trust.set_threshold(2, pattern="dem*")
    with pytest.raises(ThresholdNotMet):
        run_verify(tmp_path / "p", envelope, trust)
    assert run_verify(tmp_path / "p", add_signature(envelope, keys(2)[1]), trust)


# --- expiry and name --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(-5, 5))
def test_expiry_boundary(signed_plugin: tuple[Path, bytes], offset: int) -> None:
    """A manifest is valid strictly before expires_at; at or after it, it is expired."""
    _, envelope = signed_plugin
    expires_at = NOW + 3600
    now = expires_at + offset
    if now >= expires_at:
        with pytest.raises(ManifestExpired):
            verify_manifest(envelope, trust_for(*keys(1)), now=now)
    else:
        verify_manifest(envelope, trust_for(*keys(1)), now=now)


def test_a_manifest_issued_in_the_future_is_refused(tmp_path: Path) -> None:
    """issued_at after the reference time is refused (a wrong clock, or a pre-signed release)."""
    envelope = make_signed(tmp_path / "p", keys(1), issued_at=NOW + 10, expires_at=NOW + 100)
    with pytest.raises(ManifestNotYetValid):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def test_an_envelope_for_plugin_a_presented_as_b_is_refused(tmp_path: Path) -> None:
    """expected_name protects against swapping one plugin's signed envelope for another."""
    envelope = make_signed(tmp_path / "p", keys(1), name="plugin-a")
    with pytest.raises(NameMismatch):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)), expected_name="plugin-b")
    assert run_verify(tmp_path / "p", envelope, trust_for(*keys(1)), expected_name="plugin-a")


def test_a_trust_store_envelope_is_not_a_manifest(tmp_path: Path) -> None:
    """Envelopes of another payload type are refused even if validly signed."""
    envelope = sign_envelope(TRUST_STORE_PAYLOAD_TYPE, b"{}", keys(1))
    with pytest.raises(WrongPayloadType):
        run_verify(tmp_path, envelope, trust_for(*keys(1)))


# --- rollback -----------------------------------------------------------------------


def test_a_lower_version_than_seen_is_refused(tmp_path: Path) -> None:
    """After version 2 was accepted, version 1 is a rollback."""
    storage = DictStorage()
    v2 = make_signed(tmp_path / "v2", keys(1), version=2)
    v1 = make_signed(tmp_path / "v1", keys(1), version=1)
    run_verify(tmp_path / "v2", v2, trust_for(*keys(1)), storage=storage)
    with pytest.raises(RollbackDetected):
        run_verify(tmp_path / "v1", v1, trust_for(*keys(1)), storage=storage)
    assert run_verify(tmp_path / "v2", v2, trust_for(*keys(1)), storage=storage)


def test_the_same_version_with_different_content_is_refused(tmp_path: Path) -> None:
    """Version 1 accepted, another version 1 (different files) is refused."""
    storage = DictStorage()
    first = make_signed(tmp_path / "a", keys(1), version=1)
    other = make_signed(tmp_path / "b", keys(1), version=1, files={"plugin.py": b"X = 2\n"})
    run_verify(tmp_path / "a", first, trust_for(*keys(1)), storage=storage)
    with pytest.raises(VersionReused):
        run_verify(tmp_path / "b", other, trust_for(*keys(1)), storage=storage)


def test_the_version_is_recorded_only_after_full_success(tmp_path: Path) -> None:
    """A version whose files fail the check does not move the rollback mark."""
    storage = DictStorage()
    v2 = make_signed(tmp_path / "v2", keys(1), version=2)
    (tmp_path / "v2" / "plugin.py").write_bytes(b"tampered")
    with pytest.raises(FileDigestMismatch):
        run_verify(tmp_path / "v2", v2, trust_for(*keys(1)), storage=storage)
    assert asyncio.run(RollbackGuard(storage).highest("demo")) is None
    v1 = make_signed(tmp_path / "v1", keys(1), version=1)
    assert run_verify(tmp_path / "v1", v1, trust_for(*keys(1)), storage=storage)
    assert asyncio.run(RollbackGuard(storage).highest("demo")) == (
        1,
        hashlib.sha256(base64.b64decode(json.loads(v1)["payload"])).hexdigest(),
    )


# --- the file set -----------------------------------------------------------------


def test_an_extra_file_dropped_in_is_refused(tmp_path: Path) -> None:
    """A file that the manifest does not list makes the plugin unloadable."""
    envelope = make_signed(tmp_path / "p", keys(1))
    (tmp_path / "p" / "extra.py").write_bytes(b"print('hi')\n")
    with pytest.raises(FileSetMismatch):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


@pytest.mark.parametrize(
    "planted",
    ["plugin.pyc", "__pycache__/plugin.cpython-311.pyc", "evil.pth", "pkg/_speedups.so"],
)
def test_a_planted_compiled_or_path_file_is_refused(tmp_path: Path, planted: str) -> None:
    """A .pyc beside a verified .py, a .pth or a .so that is not listed is refused."""
    envelope = make_signed(tmp_path / "p", keys(1))
    target = tmp_path / "p" / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x00binary")
    with pytest.raises(FileSetMismatch):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def test_an_empty_pycache_directory_is_refused(tmp_path: Path) -> None:
    """A directory that holds no listed file (an empty __pycache__) is refused."""
    envelope = make_signed(tmp_path / "p", keys(1))
    (tmp_path / "p" / "__pycache__").mkdir()
    with pytest.raises(FileSetMismatch):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    """A listed file that is gone makes the plugin unloadable."""
    envelope = make_signed(tmp_path / "p", keys(1))
    (tmp_path / "p" / "pkg" / "util.py").unlink()
    with pytest.raises(FileSetMismatch):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def test_a_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    """A listed file replaced by a symlink to a file outside the plugin is refused."""
    envelope = make_signed(tmp_path / "p", keys(1))
    outside = tmp_path / "outside.py"
    outside.write_bytes((tmp_path / "p" / "plugin.py").read_bytes())
    (tmp_path / "p" / "plugin.py").unlink()
    (tmp_path / "p" / "plugin.py").symlink_to(outside)
    with pytest.raises(UnsafeFile):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    """A directory replaced by a symlink (even to identical content) is refused."""
    envelope = make_signed(tmp_path / "p", keys(1))
    shutil.move(tmp_path / "p" / "pkg", tmp_path / "pkg-outside")
    (tmp_path / "p" / "pkg").symlink_to(tmp_path / "pkg-outside", target_is_directory=True)
    with pytest.raises(UnsafeFile):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_special_file_is_refused(tmp_path: Path) -> None:
    """A FIFO in the plugin directory is refused (and never opened)."""
    envelope = make_signed(tmp_path / "p", keys(1))
    os.mkfifo(tmp_path / "p" / "pipe")
    with pytest.raises(UnsafeFile):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def _signed_with_files(entries: list[dict[str, object]]) -> bytes:
    manifest = {
        "format": "taskloom.plugin-manifest/v1",
        "name": "demo",
        "version": 1,
        "entry_point": "plugin:setup",
        "publisher": "x",
        "files": entries,
        "capabilities": {},
        "issued_at": NOW - 1,
        "expires_at": NOW + 100,
    }
    return _resign(rfc8785.dumps(manifest), 0)


@pytest.mark.parametrize(
    "path", ["../outside.py", "/etc/passwd", "a/../../b.py", "a//b.py", "./a.py", "a\\b.py", ""]
)
def test_a_listed_path_outside_the_directory_is_refused(tmp_path: Path, path: str) -> None:
    """The manifest may only list relative paths inside the plugin."""
    entry = {"path": path, "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    with pytest.raises(UnsafeFile):
        run_verify(tmp_path, _signed_with_files([entry]), trust_for(*keys(1)))


def test_two_paths_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    """'a.py' and 'A.py' in one manifest are one file on a case-insensitive disk: refused."""
    digest = hashlib.sha256(b"").hexdigest()
    entries = [{"path": p, "size": 0, "sha256": digest} for p in ("a.py", "A.py")]
    with pytest.raises(UnsafeFile):
        run_verify(tmp_path, _signed_with_files(entries), trust_for(*keys(1)))


# --- malformed input ----------------------------------------------------------------


BAD_PAYLOADS = {
    "malformed JSON": b'{"name": "demo",',
    "duplicate keys": b'{"name":"demo","name":"evil"}',
    "a float": b'{"version":1.0}',
    "an exponent": b'{"version":1e0}',
    "NaN": b'{"version":NaN}',
    "Infinity": b'{"version":Infinity}',
    "negative zero": b'{"version":-0}',
    "a BOM": b'\xef\xbb\xbf{"name":"demo"}',
    "UTF-16": '{"name":"demo"}'.encode("utf-16"),
    "trailing data": b'{"name":"demo"} {}',
    "deep nesting": b'{"description":' + b"[" * 200 + b"]" * 200 + b"}",
    "invalid UTF-8": b'{"name":"\xff"}',
    "a lone surrogate": b'{"name":"\\ud800"}',
}


@pytest.mark.parametrize("kind", sorted(BAD_PAYLOADS))
def test_a_signed_but_malformed_manifest_is_refused(tmp_path: Path, kind: str) -> None:
    """Strict parsing refuses each malformation with MalformedManifest, never a ValueError."""
    with pytest.raises(MalformedManifest):
        run_verify(tmp_path, _resign(BAD_PAYLOADS[kind], 0), trust_for(*keys(1)))


def test_unknown_manifest_fields_are_refused(signed_plugin: tuple[Path, bytes]) -> None:
    """A signed manifest with a field this version does not know is refused."""
    root, envelope = signed_plugin
    payload = _payload_of(envelope)
    payload["run_as_root"] = True
    with pytest.raises(MalformedManifest):
        run_verify(root, _resign(rfc8785.dumps(payload), 0), trust_for(*keys(1)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 2**53),
        ("expires_at", -(2**53)),
        (
            "description",
            [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
        ),
        ("capabilities", {"secrets": [["nested"]]}),
    ],
)
def test_out_of_range_or_nested_values_in_a_valid_manifest_are_refused(
    signed_plugin: tuple[Path, bytes], field: str, value: object
) -> None:
    """Integers beyond 2**53 - 1 and nesting where the schema has none are refused."""
    root, envelope = signed_plugin
    payload = _payload_of(envelope)
    payload[field] = value
    with pytest.raises(MalformedManifest):
        run_verify(root, _resign(json.dumps(payload).encode(), 0), trust_for(*keys(1)))


def test_a_wrongly_typed_manifest_field_is_refused(signed_plugin: tuple[Path, bytes]) -> None:
    """A version given as text is refused, not coerced."""
    root, envelope = signed_plugin
    payload = _payload_of(envelope)
    payload["version"] = "2"
    with pytest.raises(MalformedManifest):
        run_verify(root, _resign(rfc8785.dumps(payload), 0), trust_for(*keys(1)))


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"[]",
        b'{"payloadType":"x","payload":"","signatures":[],"extra":1}',
        b'{"payloadType":"x","payloadType":"y","payload":"","signatures":[]}',
        b'{"payloadType":"x","payload":"e30=","signatures":[]}',
        b'{"payloadType":"x","payload":"not base64!","signatures":[{"keyid":"a","sig":""}]}',
        b'{"payloadType":"x","payload":"e31=","signatures":[{"keyid":"a","sig":""}]}',
        b'{"payloadType":1,"payload":"e30=","signatures":[{"keyid":"a","sig":""}]}',
        b'{"payloadType":"x","payload":"e30=","signatures":[{"keyid":"a"}]}',
        b'{"payloadType":"x","payload":"e30=","signatures":[{"keyid":"a","sig":"","n":1.5}]}',
    ],
)
def test_a_malformed_envelope_is_refused(tmp_path: Path, envelope: bytes) -> None:
    """Envelope shape errors (fields, base64, types, duplicates) are MalformedEnvelope."""
    with pytest.raises(MalformedEnvelope):
        run_verify(tmp_path, envelope, trust_for(*keys(1)))


def test_a_huge_envelope_is_refused_before_decoding_without_memory_growth(
    tmp_path: Path,
) -> None:
    """A 64 MiB envelope is refused by the size cap; verification allocates almost nothing."""
    huge = b'{"payload":"' + b"A" * (64 * 1024 * 1024) + b'"}'
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLarge):
            run_verify(tmp_path, huge, trust_for(*keys(1)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_a_huge_manifest_within_the_cap_is_parsed_and_refused_cleanly(tmp_path: Path) -> None:
    """A manifest listing 6,000 files inside a 2 MiB cap is parsed strictly, then refused."""
    digest = hashlib.sha256(b"").hexdigest()
    entries = [{"path": f"f{i}.py", "size": 0, "sha256": digest} for i in range(6000)]
    envelope = _signed_with_files(entries)
    assert len(envelope) > 1 << 19
    guard = RollbackGuard(DictStorage())
    with pytest.raises(FileSetMismatch):
        asyncio.run(
            verify_plugin(
                tmp_path,
                envelope,
                trust_for(*keys(1)),
                rollback=guard,
                now=NOW,
                max_envelope_bytes=2 << 20,
            )
        )
    with pytest.raises(InputTooLarge):
        verify_manifest(envelope, trust_for(*keys(1)), now=NOW, max_envelope_bytes=1 << 19)


# --- order of the checks ------------------------------------------------------------


def test_signatures_are_checked_before_the_payload_is_parsed(tmp_path: Path) -> None:
    """An unsigned malformed payload fails on the signature threshold, not on parsing."""
    envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, b'{"a":1,"a":2}', [generate_key()])
    with pytest.raises(ThresholdNotMet):
        run_verify(tmp_path, envelope, trust_for(*keys(1)))


def test_expiry_is_checked_before_the_name(tmp_path: Path) -> None:
    """An expired envelope for the wrong plugin reports expiry (the earlier check)."""
    envelope = make_signed(tmp_path / "p", keys(1), name="plugin-a")
    with pytest.raises(ManifestExpired):
        run_verify(
            tmp_path / "p",
            envelope,
            trust_for(*keys(1)),
            now=NOW + 10_000,
            expected_name="plugin-b",
        )


def test_rollback_is_checked_before_the_files(tmp_path: Path) -> None:
    """An old version with tampered files reports the rollback, before reading any file."""
    storage = DictStorage()
    run_verify(
        tmp_path / "v2",
        make_signed(tmp_path / "v2", keys(1), version=2),
        trust_for(*keys(1)),
        storage=storage,
    )
    v1 = make_signed(tmp_path / "v1", keys(1), version=1)
    (tmp_path / "v1" / "extra.pyc").write_bytes(b"x")
    with pytest.raises(RollbackDetected):
        run_verify(tmp_path / "v1", v1, trust_for(*keys(1)), storage=storage)


def test_nested_directories_and_non_ascii_names_verify(tmp_path: Path) -> None:
    """Deep paths and non-ASCII file names are listed, verified and handed back."""
    files = {
        "plugin.py": b"x = 1\n",
        "a/b/c/deep.py": b"y = 2\n",
        "données/é.txt": "olá".encode(),
        "empty/__init__.py": b"",
    }
    envelope = make_signed(tmp_path / "p", keys(1), files=files)
    verified = run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))
    assert dict(verified.files) == files


def test_a_file_swapped_for_a_directory_is_refused(tmp_path: Path) -> None:
    """A listed file replaced by a directory of the same name is not a file."""
    envelope = make_signed(tmp_path / "p", keys(1))
    target = tmp_path / "p" / "pkg" / "util.py"
    target.unlink()
    target.mkdir()
    (target / "inner.py").write_bytes(b"")
    with pytest.raises((FileSetMismatch, UnsafeFile)):
        run_verify(tmp_path / "p", envelope, trust_for(*keys(1)))


def test_files_swapped_between_walk_and_read_are_refused(tmp_path: Path) -> None:
    """After the walk, a symlink or a directory put in a file's place is refused at read."""
    root = write_plugin(tmp_path / "p", {"a.py": b"a", "b.py": b"b"})
    outside = tmp_path / "outside.py"
    outside.write_bytes(b"a")
    with PluginTree(root) as tree:
        assert sorted(tree.files) == ["a.py", "b.py"]
        (root / "a.py").unlink()
        (root / "a.py").symlink_to(outside)
        (root / "b.py").unlink()
        (root / "b.py").mkdir()
        with pytest.raises(UnsafeFile):
            tree.read_exact("a.py", 1)
        with pytest.raises(UnsafeFile):
            tree.read_exact("b.py", 1)


def test_reads_go_through_the_walked_directory_not_a_swapped_one(tmp_path: Path) -> None:
    """Renaming a walked directory and putting a symlink in its place cannot redirect reads."""
    root = write_plugin(tmp_path / "p", {"pkg/mod.py": b"good"})
    write_plugin(tmp_path / "evil", {"mod.py": b"evil"})
    with PluginTree(root) as tree:
        (root / "pkg").rename(tmp_path / "moved")
        (root / "pkg").symlink_to(tmp_path / "evil", target_is_directory=True)
        assert tree.read_exact("pkg/mod.py", 4) == b"good"


@pytest.fixture(scope="module")
def doubly_signed() -> Iterator[bytes]:
    """An envelope signed by keys 0 and 1, shared by a module."""
    root = Path(tempfile.mkdtemp(prefix="tl-sec-"))
    yield make_signed(root / "demo", keys(2))
    shutil.rmtree(root)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_to_a_doubly_signed_envelope_is_refused(
    doubly_signed: bytes, data: st.DataObject
) -> None:
    """With two signers and a threshold of 2, no one-byte change gets through either."""
    envelope = doubly_signed
    verify_manifest(envelope, trust_for(*keys(2), threshold=2), now=NOW)
    position = data.draw(st.integers(0, len(envelope) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != envelope[position]), label="value")
    changed = bytearray(envelope)
    changed[position] = value
    with pytest.raises(SecurityError):
        verify_manifest(bytes(changed), trust_for(*keys(2), threshold=2), now=NOW)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_arbitrary_envelope_bytes_only_ever_raise_security_errors(data: bytes) -> None:
    """Whatever bytes arrive as an envelope, the verifier answers with a SecurityError."""
    with pytest.raises(SecurityError):
        verify_manifest(data, trust_for(*keys(1)), now=NOW)
