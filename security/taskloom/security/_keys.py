"""Ed25519 keys: generate, identify, save and load.

A key id is the hex SHA-256 of the raw 32-byte public key, so an id can never
name two keys and a trust store cannot list one key twice under two ids.

Files:

* private keys are PKCS#8 PEM encrypted with a passphrase (``cryptography``'s
  ``BestAvailableEncryption``), written atomically with mode 0600, preceded by
  one line ``taskloom-key-id: <hex key id>`` (PEM readers, OpenSSL included,
  skip text before the ``-----BEGIN`` line). PKCS#8 encryption is AES-CBC
  without a MAC: a damaged ciphertext can decrypt to a *different* valid key,
  so loading derives the key id and refuses a key that does not match the line;
* public keys are SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), the
  format ``openssl pkey -pubout`` writes, so other tools can read them.

Every failure to load a key is a ``KeyFileError`` naming the file; the
exceptions of ``cryptography`` never reach the caller.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from taskloom.contracts import UsageError
from taskloom.security._errors import KeyFileError

MAX_KEY_FILE_BYTES = 16 * 1024
"""Key files are a few hundred bytes; anything larger is not a key file."""

_KEY_ID_LINE = re.compile(rb"taskloom-key-id: ([0-9a-f]{64})\r?\n")


def key_id_of(raw_public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key: its hex SHA-256."""
    return hashlib.sha256(raw_public_key).hexdigest()


class PublicKey:
    """An Ed25519 public key with its key id.

    Construction does not judge the key's strength (see ``TrustStore.add_key``
    for that): a weak key is still a key, it just must never be trusted.
    """

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise UsageError("an Ed25519 public key is exactly 32 raw bytes")
        self.raw = raw
        self.key_id = key_id_of(raw)
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        """Decode the standard base64 of the raw 32 bytes (the trust store's format)."""
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise UsageError("public key is not valid base64 text") from None
        if base64.b64encode(raw).decode("ascii") != text:
            raise UsageError("public key base64 is not in canonical form")
        return cls(raw)

    def to_base64(self) -> str:
        """The standard base64 of the raw 32 bytes."""
        return base64.b64encode(self.raw).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``data``."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, the format of public key files."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey.from_base64({self.to_base64()!r})"


class PrivateKey:
    """An Ed25519 private key. Its repr shows only the key id, never key material."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey(raw)

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh key from the operating system's random source."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        """The key id of the matching public key."""
        return self.public_key.key_id

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"<PrivateKey key_id={self.key_id[:16]}...>"

    def __reduce__(self) -> NoReturn:
        raise UsageError("a PrivateKey cannot be pickled; save it with save_private_key")


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    data = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not isinstance(data, bytes) or not data:
        raise UsageError("a private key needs a non-empty passphrase")
    return data


def _write_atomic(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass overwrite=True to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_key_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(
                f"{path} is {size} bytes, too large to be a key file: check the path",
                path=str(path),
            )
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read key file {path}: {exc.strerror or exc}; check the path and permissions",
            path=str(path),
        ) from exc


def save_private_key(
    key: PrivateKey,
    path: str | os.PathLike[str],
    passphrase: str | bytes,
    *,
    overwrite: bool = False,
) -> None:
    """Write ``key`` encrypted with ``passphrase`` as PKCS#8 PEM, mode 0600."""
    pem = key._key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(_passphrase_bytes(passphrase)),
    )
    data = b"taskloom-key-id: " + key.key_id.encode("ascii") + b"\n" + pem
    _write_atomic(Path(path), data, mode=0o600, overwrite=overwrite)


def load_private_key(path: str | os.PathLike[str], passphrase: str | bytes) -> PrivateKey:
    """Read an encrypted private key; KeyFileError if damaged, not Ed25519 or wrong passphrase."""
    file = Path(path)
    data = _read_key_file(file)
    expected_id = None
    if data.startswith(b"taskloom"):
        header = _KEY_ID_LINE.match(data)
        if header is None:
            raise KeyFileError(
                f"{file} is damaged (its key id line is unreadable): restore it from a backup",
                path=str(file),
            )
        expected_id = header.group(1).decode("ascii")
        data = data[header.end() :]
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase_bytes(passphrase))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"cannot load private key {file}: wrong passphrase or a damaged file; "
            "check the passphrase, or restore the key from a backup",
            path=str(file),
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{file} holds a {type(key).__name__}, not an Ed25519 key; "
            "generate one with `taskloom keys generate`",
            path=str(file),
        )
    loaded = PrivateKey(key)
    if expected_id is not None and loaded.key_id != expected_id:
        raise KeyFileError(
            f"cannot load private key {file}: it decrypts to a key other than the one saved "
            f"({expected_id[:16]}...): a wrong passphrase or a damaged file; check the "
            "passphrase, or restore the key from a backup",
            path=str(file),
        )
    return loaded


def save_public_key(
    key: PublicKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write ``key`` as SubjectPublicKeyInfo PEM (mode 0644: public keys are public)."""
    _write_atomic(Path(path), key.to_pem(), mode=0o644, overwrite=overwrite)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a PEM public key; KeyFileError if the file is damaged or not Ed25519."""
    file = Path(path)
    data = _read_key_file(file)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"cannot load public key {file}: not a PEM public key or a damaged file; "
            "export it again with `taskloom keys export`",
            path=str(file),
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{file} holds a {type(key).__name__}, not an Ed25519 public key",
            path=str(file),
        )
    return PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def generate_key() -> PrivateKey:
    """A fresh Ed25519 private key."""
    return PrivateKey.generate()
