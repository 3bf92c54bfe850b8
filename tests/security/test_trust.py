"""The trust store: weak keys refused, files round-trip, root signatures, rollback state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from _sec_support import DictStorage, keys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import Capabilities, StorageCorrupted, UsageError
from taskloom.security import (
    CapabilitiesNotApproved,
    KeyRevoked,
    MalformedTrustStore,
    PublicKey,
    RollbackDetected,
    RollbackGuard,
    SignatureInvalid,
    TrustStore,
    VersionReused,
    WeakKey,
    WrongPayloadType,
    check_public_key,
    generate_key,
    sign_envelope,
)
from taskloom.security._ed25519 import SMALL_ORDER_YS, P
from taskloom.security._trust import ROLLBACK_NAMESPACE

# The eight small-order points as published (e.g. in the Ed25519 test vectors of
# "Taming the many EdDSAs"), independent of the computed list in _ed25519.
KNOWN_SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]


def _encode(y: int, sign: int) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


def test_the_computed_small_order_set_matches_the_published_one() -> None:
    """The y values derived in code are exactly those of the eight published points."""
    published = {
        int.from_bytes(bytes.fromhex(h), "little") & ((1 << 255) - 1) for h in KNOWN_SMALL_ORDER
    }
    assert published == set(SMALL_ORDER_YS)


@pytest.mark.parametrize("hex_key", KNOWN_SMALL_ORDER)
def test_small_order_keys_are_refused_on_add(hex_key: str) -> None:
    """Each of the eight small-order public keys is refused with WeakKey."""
    with pytest.raises(WeakKey):
        TrustStore().add_key(PublicKey(bytes.fromhex(hex_key)), plugins=["*"])


def test_a_small_order_key_accepts_a_forged_signature_but_is_refused_at_add() -> None:
    """The identity key verifies (R=identity, S=0) for any message in OpenSSL; we refuse it."""
    identity = bytes.fromhex(KNOWN_SMALL_ORDER[0])
    forged = identity + bytes(32)
    raw = Ed25519PublicKey.from_public_bytes(identity)
    try:
        raw.verify(forged, b"any message at all")
        accepted_by_openssl = True
    except InvalidSignature:
        accepted_by_openssl = False
    store = TrustStore()
    with pytest.raises(WeakKey) as info:
        store.add_key(PublicKey(identity), plugins=["*"])
    assert "small order" in str(info.value) or "canonical" in str(info.value)
    assert store.keys == {}
    # Recorded so a reader sees why this matters on this OpenSSL (True on 3.x).
    assert accepted_by_openssl in (True, False)


@pytest.mark.parametrize("offset", range(19))
@pytest.mark.parametrize("sign", [0, 1])
def test_non_canonical_encodings_are_refused(offset: int, sign: int) -> None:
    """Every encoding with y >= p (19 values, either sign bit) is refused."""
    with pytest.raises(WeakKey):
        check_public_key(PublicKey(_encode(P + offset, sign)))


def test_x_zero_with_the_sign_bit_is_refused() -> None:
    """Identity and the order-2 point written with the sign bit set are non-canonical."""
    for y in (1, P - 1):
        with pytest.raises(WeakKey):
            check_public_key(PublicKey(_encode(y, 1)))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_random_encodings_are_judged_without_crashing(raw: bytes) -> None:
    """Any 32 bytes are refused with WeakKey or are a canonical point of large order."""
    try:
        check_public_key(PublicKey(raw))
    except WeakKey:
        return
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    assert y < P
    assert y not in SMALL_ORDER_YS


def test_real_keys_are_accepted() -> None:
    """Freshly generated keys pass the weak-key check."""
    for _ in range(20):
        check_public_key(generate_key().public_key)


# --- the store and its file -----------------------------------------------------------


def _store() -> TrustStore:
    store = TrustStore(threshold=2)
    store.add_key(keys(3)[0].public_key, plugins=["demo", "demo-*"], label="alice")
    store.add_key(keys(3)[1].public_key, plugins=["*"], label="bob")
    store.set_threshold(3, pattern="critical-*")
    store.revoke(keys(3)[2].key_id)
    return store


def _same(a: TrustStore, b: TrustStore) -> bool:
    return (
        a.threshold == b.threshold
        and a.thresholds == b.thresholds
        and a.keys == b.keys
        and a.revoked == b.revoked
    )


def test_an_unsigned_store_round_trips(tmp_path: Path) -> None:
    """save then load gives the same keys, scopes, thresholds and revocations."""
    store = _store()
    store.save(tmp_path / "trust.json")
    assert _same(TrustStore.load(tmp_path / "trust.json"), store)


def test_a_signed_store_round_trips_with_its_root_key(tmp_path: Path) -> None:
    """A store signed with a root key loads with that root's public key."""
    root = generate_key()
    _store().save(tmp_path / "trust.json", sign_with=root)
    loaded = TrustStore.load(tmp_path / "trust.json", root_key=root.public_key)
    assert _same(loaded, _store())


def test_a_signed_store_is_refused_with_another_root_key(tmp_path: Path) -> None:
    """A store signed by root A does not load when root B is expected."""
    _store().save(tmp_path / "trust.json", sign_with=generate_key())
    with pytest.raises(SignatureInvalid):
        TrustStore.load(tmp_path / "trust.json", root_key=generate_key().public_key)


def test_an_edited_signed_store_is_refused(tmp_path: Path) -> None:
    """Changing the signed payload (adding a key) breaks the root signature."""
    root = generate_key()
    _store().save(tmp_path / "trust.json", sign_with=root)
    envelope = json.loads((tmp_path / "trust.json").read_bytes())
    evil = _store()
    evil.add_key(generate_key().public_key, plugins=["*"])
    forged = sign_envelope("application/vnd.taskloom.trust-store+json", evil.to_bytes(), [root])
    forged_env = json.loads(forged)
    forged_env["signatures"] = envelope["signatures"]
    (tmp_path / "trust.json").write_text(json.dumps(forged_env))
    with pytest.raises(SignatureInvalid):
        TrustStore.load(tmp_path / "trust.json", root_key=root.public_key)


def test_an_unsigned_store_is_refused_when_a_root_key_is_given(tmp_path: Path) -> None:
    """With root_key, a plain (unsigned) store is not accepted."""
    _store().save(tmp_path / "trust.json")
    with pytest.raises(MalformedTrustStore):
        TrustStore.load(tmp_path / "trust.json", root_key=generate_key().public_key)


def test_a_signed_store_needs_its_root_key(tmp_path: Path) -> None:
    """A signed store loaded without root_key is refused rather than trusted unchecked."""
    _store().save(tmp_path / "trust.json", sign_with=generate_key())
    with pytest.raises(MalformedTrustStore):
        TrustStore.load(tmp_path / "trust.json")


def test_a_manifest_envelope_is_not_a_trust_store(tmp_path: Path) -> None:
    """Root-signed envelopes of another payload type are refused."""
    root = generate_key()
    data = sign_envelope("application/vnd.taskloom.plugin-manifest+json", b"{}", [root])
    (tmp_path / "trust.json").write_bytes(data)
    with pytest.raises(WrongPayloadType):
        TrustStore.load(tmp_path / "trust.json", root_key=root.public_key)


def test_a_weak_key_written_into_the_file_is_refused_at_load(tmp_path: Path) -> None:
    """Editing a small-order key into the file does not get it past the check."""
    _store().save(tmp_path / "trust.json")
    raw = json.loads((tmp_path / "trust.json").read_bytes())
    weak = PublicKey(bytes.fromhex(KNOWN_SMALL_ORDER[0]))
    raw["keys"].append({"key_id": weak.key_id, "public_key": weak.to_base64(), "plugins": ["*"]})
    (tmp_path / "trust.json").write_text(json.dumps(raw))
    with pytest.raises(WeakKey):
        TrustStore.load(tmp_path / "trust.json")


def test_a_key_id_that_does_not_match_its_key_is_refused(tmp_path: Path) -> None:
    """A key id is derived from the key; a file that says otherwise is malformed."""
    _store().save(tmp_path / "trust.json")
    raw = json.loads((tmp_path / "trust.json").read_bytes())
    raw["keys"][0]["key_id"] = "0" * 64
    (tmp_path / "trust.json").write_text(json.dumps(raw))
    with pytest.raises(MalformedTrustStore):
        TrustStore.load(tmp_path / "trust.json")


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw.update(extra=1),
        lambda raw: raw.update(threshold=0),
        lambda raw: raw.update(threshold=1.5),
        lambda raw: raw.update(format="other/v9"),
        lambda raw: raw.update(revoked=["not-a-key-id"]),
    ],
)
def test_malformed_store_files_are_refused(tmp_path: Path, edit: object) -> None:
    """Unknown fields, bad thresholds, floats, wrong format, bad key ids: refused."""
    _store().save(tmp_path / "trust.json")
    raw = json.loads((tmp_path / "trust.json").read_bytes())
    edit(raw)  # type: ignore[operator]
    (tmp_path / "trust.json").write_text(json.dumps(raw))
    with pytest.raises(MalformedTrustStore):
        TrustStore.load(tmp_path / "trust.json")


def test_a_revoked_key_cannot_be_added_again() -> None:
    """Revocation is permanent for this store: add_key refuses the key."""
    store = TrustStore()
    key = generate_key().public_key
    store.add_key(key, plugins=["*"])
    store.revoke(key.key_id)
    store.remove_key(key.key_id)
    with pytest.raises(KeyRevoked):
        store.add_key(key, plugins=["*"])


def test_thresholds_only_go_up() -> None:
    """A matching pattern threshold raises the requirement; a lower one cannot lower it."""
    store = TrustStore(threshold=2)
    store.set_threshold(3, pattern="crit-*")
    store.set_threshold(1, pattern="*")
    assert store.threshold_for("crit-db") == 3
    assert store.threshold_for("other") == 2
    with pytest.raises(UsageError):
        store.set_threshold(0)


def test_remove_key_reports_whether_it_was_listed() -> None:
    """remove_key returns True once and False afterwards."""
    store = TrustStore()
    key = generate_key().public_key
    store.add_key(key, plugins=["*"])
    assert store.remove_key(key.key_id)
    assert not store.remove_key(key.key_id)


# --- rollback guard ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b"])), max_size=12))
def test_rollback_guard_keeps_the_highest_version(attempts: list[tuple[int, str]]) -> None:
    """Against a model: lower versions and reused versions with new digests are refused."""
    guard = RollbackGuard(DictStorage())
    model: tuple[int, str] | None = None

    async def scenario() -> None:
        nonlocal model
        for version, digest in attempts:
            expected: type[Exception] | None = None
            if model is not None and version < model[0]:
                expected = RollbackDetected
            elif model is not None and version == model[0] and digest != model[1]:
                expected = VersionReused
            if expected is None:
                await guard.check("p", version, digest)
                await guard.record("p", version, digest)
                model = (version, digest)
            else:
                with pytest.raises(expected):
                    await guard.check("p", version, digest)
                with pytest.raises(expected):
                    await guard.record("p", version, digest)
            assert await guard.highest("p") == model

    asyncio.run(scenario())


def test_a_record_damaged_after_a_good_read_is_still_refused() -> None:
    """The guard reuses a parsed record only for the same bytes: damage written later raises."""
    storage = DictStorage()
    guard = RollbackGuard(storage)

    async def scenario() -> None:
        await guard.record("p", 2, "a")
        await guard.check("p", 2, "a")  # parsed once; the parse is kept for these bytes
        storage._put(ROLLBACK_NAMESPACE, "p", b'{"version": "2", "sha256": "a"}')
        with pytest.raises(StorageCorrupted):
            await guard.check("p", 2, "a")

    asyncio.run(scenario())


def test_a_record_rewritten_lower_after_a_good_read_is_judged_by_its_new_bytes() -> None:
    """A record replaced behind the guard's back is read again, not answered from the last parse."""
    storage = DictStorage()
    guard = RollbackGuard(storage)

    async def scenario() -> None:
        await guard.record("p", 2, "a")
        await guard.check("p", 2, "a")
        storage._put(ROLLBACK_NAMESPACE, "p", b'{"sha256":"b","version":5}')
        with pytest.raises(RollbackDetected):
            await guard.check("p", 3, "c")
        assert await guard.highest("p") == (5, "b")

    asyncio.run(scenario())


def test_record_judges_again_when_its_arguments_differ_from_the_check() -> None:
    """``record`` skips judging only for exactly what ``check`` accepted against that state."""
    guard = RollbackGuard(DictStorage())
    narrow = Capabilities(network_hosts=("a.example.com",))
    wide = Capabilities(network_hosts=("a.example.com", "b.example.com"))

    async def scenario() -> None:
        await guard.record("p", 3, "a", signers=("k",), capabilities=narrow)
        observed = await guard.check("p", 3, "a", capabilities=narrow)
        with pytest.raises(RollbackDetected):
            await guard.record("p", 2, "a", observed=observed)
        with pytest.raises(VersionReused):
            await guard.record("p", 3, "b", observed=observed)
        with pytest.raises(CapabilitiesNotApproved):
            await guard.record("p", 4, "c", observed=observed, capabilities=wide)
        await guard.record("p", 3, "a", observed=observed, capabilities=narrow)
        assert await guard.highest("p") == (3, "a")

    asyncio.run(scenario())
