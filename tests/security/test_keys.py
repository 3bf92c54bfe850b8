"""Key generation, key ids, and key files (encrypted private, PEM public)."""

from __future__ import annotations

import hashlib
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import UsageError
from taskloom.security import (
    KeyFileError,
    PublicKey,
    generate_key,
    key_id_of,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
)


def test_key_id_is_the_sha256_of_the_raw_public_key() -> None:
    """A key id is the hex SHA-256 of the 32 raw public key bytes."""
    key = generate_key()
    assert len(key.public_key.raw) == 32
    assert key.key_id == hashlib.sha256(key.public_key.raw).hexdigest()
    assert key_id_of(key.public_key.raw) == key.key_id


def test_signatures_verify_only_for_the_signed_bytes() -> None:
    """A signature verifies for its message and key, and for nothing else."""
    key, other = generate_key(), generate_key()
    sig = key.sign(b"message")
    assert key.public_key.verify(sig, b"message")
    assert not key.public_key.verify(sig, b"messagE")
    assert not other.public_key.verify(sig, b"message")


def test_private_key_round_trips_encrypted_with_mode_0600(tmp_path: Path) -> None:
    """A saved private key loads back with its passphrase; the file is 0600 and encrypted."""
    key = generate_key()
    path = tmp_path / "k.pem"
    save_private_key(key, path, "correct horse")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert path.read_bytes().startswith(b"taskloom-key-id: " + key.key_id.encode())
    assert load_private_key(path, "correct horse").key_id == key.key_id


def test_saving_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    """An existing key file is kept unless overwrite=True."""
    path = tmp_path / "k.pem"
    save_private_key(generate_key(), path, "pw")
    with pytest.raises(UsageError):
        save_private_key(generate_key(), path, "pw")
    replacement = generate_key()
    save_private_key(replacement, path, "pw", overwrite=True)
    assert load_private_key(path, "pw").key_id == replacement.key_id


def test_a_wrong_passphrase_raises_key_file_error_naming_the_file(tmp_path: Path) -> None:
    """A wrong passphrase is a KeyFileError whose message and path name the file."""
    path = tmp_path / "k.pem"
    save_private_key(generate_key(), path, "right")
    with pytest.raises(KeyFileError) as info:
        load_private_key(path, "wrong")
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert "passphrase" in str(info.value)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_damaged_private_key_file_raises_key_file_error(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """A one-byte change to a key file never yields a different key: KeyFileError instead.

    PKCS#8 encryption (AES-CBC) has no MAC, so without the key id line a damaged
    file can decrypt to another valid key; this is the property that catches it.
    """
    path = tmp_path_factory.mktemp("k") / "k.pem"
    key = generate_key()
    save_private_key(key, path, "pw")
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[position]))
    path.write_bytes(original[:position] + bytes([value]) + original[position + 1 :])
    try:
        loaded = load_private_key(path, "pw")
    except KeyFileError as exc:
        assert exc.path == str(path)
    else:
        # A change that leaves the key material intact (PEM line structure, the
        # header's prefix) may load, but only ever as the very same key.
        assert loaded.key_id == key.key_id


@pytest.mark.parametrize("content", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\n"])
def test_garbage_key_files_raise_key_file_error(tmp_path: Path, content: bytes) -> None:
    """Empty or garbage files are KeyFileError for private and public loads alike."""
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_private_key(path, "pw")
    with pytest.raises(KeyFileError):
        load_public_key(path)


def test_a_missing_key_file_raises_key_file_error(tmp_path: Path) -> None:
    """A path that does not exist is a KeyFileError, not a FileNotFoundError."""
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "nope.pem")
    with pytest.raises(KeyFileError):
        load_private_key(tmp_path / "nope.pem", "pw")


def test_a_non_ed25519_key_file_is_refused(tmp_path: Path) -> None:
    """An EC key in the right file format is still refused: only Ed25519 is accepted."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "ec.pem"
    private.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    public = tmp_path / "ec.pub"
    public.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError):
        load_private_key(private, "pw")
    with pytest.raises(KeyFileError):
        load_public_key(public)


def test_public_keys_round_trip_as_pem(tmp_path: Path) -> None:
    """A public key file is SubjectPublicKeyInfo PEM and loads back to the same key."""
    key = generate_key().public_key
    path = tmp_path / "k.pub"
    save_public_key(key, path)
    assert path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public_key(path) == key


def test_public_key_base64_must_be_canonical() -> None:
    """The trust store's base64 form round-trips and refuses non-canonical text."""
    key = generate_key().public_key
    assert PublicKey.from_base64(key.to_base64()) == key
    text = key.to_base64()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bumped = alphabet[alphabet.index(text[-2]) ^ 1]  # flips one of the 2 unused bits
    with pytest.raises(UsageError):
        PublicKey.from_base64(text[:-2] + bumped + text[-1:])


def test_private_keys_do_not_show_or_pickle_their_material() -> None:
    """repr shows only part of the key id; pickling is refused."""
    key = generate_key()
    raw = key._key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw.hex() not in repr(key)
    assert key.key_id[:16] in repr(key)
    with pytest.raises(UsageError):
        pickle.dumps(key)


def test_an_empty_passphrase_is_refused(tmp_path: Path) -> None:
    """Private keys are never written unencrypted."""
    with pytest.raises(UsageError):
        save_private_key(generate_key(), tmp_path / "k.pem", "")


def test_a_plain_pkcs8_file_from_another_tool_loads(tmp_path: Path) -> None:
    """A standard encrypted PKCS#8 PEM without the key id line still loads."""
    key = generate_key()
    path = tmp_path / "k.pem"
    path.write_bytes(
        key._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert load_private_key(path, "pw").key_id == key.key_id


def test_a_key_id_line_that_names_another_key_is_refused(tmp_path: Path) -> None:
    """If the decrypted key is not the one the file names, loading refuses it."""
    path = tmp_path / "k.pem"
    save_private_key(generate_key(), path, "pw")
    data = path.read_bytes()
    other = generate_key().key_id.encode()
    path.write_bytes(b"taskloom-key-id: " + other + data[data.index(b"\n") :])
    with pytest.raises(KeyFileError) as info:
        load_private_key(path, "pw")
    assert "other than the one saved" in str(info.value)
