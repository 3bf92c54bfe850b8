"""Secrets in one passphrase-encrypted file: the store for headless machines and CI,
where no keyring daemon runs.

File format, version 1 (all integers unsigned, big-endian)::

    magic    8 bytes  b"TLSECRET"
    version  1 byte   1
    log2_n   1 byte   scrypt cost: N = 2 ** log2_n (r = 8, p = 1 in version 1)
    salt    16 bytes  random, new for every new file
    check   16 bytes  HMAC-SHA256(check key, b"taskloom-secrets-passphrase-check")[:16]
    nonce   12 bytes  random, new for every write
    sealed   rest     AES-256-GCM(cipher key, nonce, plaintext, aad=every byte before nonce)

scrypt turns the passphrase and salt into 64 bytes: the first 32 are the AES-256 key,
the last 32 the check key. The check tells a wrong passphrase (the usual mistake) from a
damaged file, which AES-GCM alone cannot; it costs an attacker a full scrypt per guess,
like the cipher itself. The plaintext is JSON ``{"format": 1, "secrets": {name: value}}``:
the whole map is encrypted, so even the names stay private.

Cost: N = 2**15 by default (about 50 ms and 32 MiB per key derivation on a laptop, the
interactive-login figure of the scrypt paper). ``scrypt_n`` may lower it down to 2**10 for
tests only. The cost is stored in the header, so a file is always read with the cost it
was written with; writes keep the file's salt and cost, so the key is derived once per
store and file. Reads refuse a header cost above 2**20 (1 GiB of memory) so that a
damaged header cannot exhaust memory.

Writes are atomic: a temporary file created 0600 in the same directory, fsync, rename
over the old file, fsync of the directory. Concurrent writers in one process are
serialized by a lock; across processes by ``fcntl.flock`` on ``<file>.lock`` where the
platform has it. The passphrase is held as a ``Secret`` and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from taskloom.adapters.secrets._common import (
    CONFIGURE_HINT,
    PASSPHRASE_ENV,
    StoreLifecycle,
    secret_text,
)
from taskloom.contracts import (
    Secret,
    SecretDecryptionFailed,
    SecretNotFound,
    SecretStoreUnavailable,
    UsageError,
    check_secret_name,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the in-process lock remains
    fcntl = None  # type: ignore[assignment]

MAGIC = b"TLSECRET"
FORMAT_VERSION = 1
DEFAULT_SCRYPT_N = 2**15
MIN_SCRYPT_N = 2**10
MAX_SCRYPT_N = 2**20
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_LEN = 16
_CHECK_LEN = 16
_NONCE_LEN = 12
_HEADER = struct.Struct(f">8sBB{_SALT_LEN}s{_CHECK_LEN}s")
_CHECK_LABEL = b"taskloom-secrets-passphrase-check"
_PLAINTEXT_FORMAT = 1


class _Keys:
    """The two keys scrypt gives for one (passphrase, salt, cost)."""

    __slots__ = ("check", "cipher")

    def __init__(self, material: bytes) -> None:
        self.cipher = AESGCM(material[:32])
        self.check = hmac.new(material[32:], _CHECK_LABEL, hashlib.sha256).digest()[:_CHECK_LEN]


def _derive(passphrase: Secret, salt: bytes, log2_n: int) -> _Keys:
    kdf = Scrypt(salt=salt, length=64, n=2**log2_n, r=_SCRYPT_R, p=_SCRYPT_P)
    return _Keys(kdf.derive(passphrase.reveal().encode("utf-8")))


def _log2(n: object) -> int:
    if (
        isinstance(n, bool)
        or not isinstance(n, int)
        or n < MIN_SCRYPT_N
        or n > MAX_SCRYPT_N
        or n & (n - 1)
    ):
        raise UsageError(
            f"scrypt_n must be a power of two from {MIN_SCRYPT_N} to {MAX_SCRYPT_N}, got {n!r}; "
            f"keep the default {DEFAULT_SCRYPT_N} outside tests"
        )
    return n.bit_length() - 1


class EncryptedFileSecretStore(StoreLifecycle):
    """Secrets in one AES-256-GCM file keyed by scrypt over a passphrase (format in the
    module docstring).

    A wrong passphrase raises ``SecretDecryptionFailed`` at the first call that reads the
    file, and the file is never written with a key that could not read it. The file is
    created on the first ``set``; until then the store is empty.
    """

    __slots__ = ("_keys", "_lock", "_log2_n", "_passphrase", "_path")

    durable = True
    """A value set is on disk when ``set`` returns (SS7)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        passphrase: str | Secret,
        *,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> None:
        super().__init__()
        if not isinstance(passphrase, str | Secret):
            raise UsageError(
                f"the passphrase must be str or Secret, got {type(passphrase).__name__}"
            )
        self._passphrase = Secret(secret_text(passphrase))
        if not self._passphrase:
            raise UsageError(f"the passphrase is empty: {CONFIGURE_HINT}")
        self._path = Path(path)
        self._log2_n = _log2(scrypt_n)
        self._keys: dict[tuple[bytes, int], _Keys] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_env(
        cls,
        path: str | os.PathLike[str],
        *,
        environ: Mapping[str, str] | None = None,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> EncryptedFileSecretStore:
        """A store whose passphrase is the ``TASKLOOM_SECRETS_PASSPHRASE`` variable;
        ``SecretStoreUnavailable`` if it is unset or empty."""
        env = os.environ if environ is None else environ
        passphrase = env.get(PASSPHRASE_ENV, "")
        if not passphrase:
            raise SecretStoreUnavailable(
                f"{PASSPHRASE_ENV} is not set: export it to open the secret file {str(path)!r}"
            )
        return cls(path, Secret(passphrase), scrypt_n=scrypt_n)

    def __repr__(self) -> str:
        return f"EncryptedFileSecretStore(path={str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The secret file."""
        return self._path

    # --- reading and writing the file (run in a worker thread) -------------------------

    def _keys_for(self, salt: bytes, log2_n: int) -> _Keys:
        keys = self._keys.get((salt, log2_n))
        if keys is None:
            keys = self._keys[(salt, log2_n)] = _derive(self._passphrase, salt, log2_n)
        return keys

    def _damaged(self, why: str) -> SecretDecryptionFailed:
        return SecretDecryptionFailed(
            f"secret file {str(self._path)!r} is damaged ({why}): restore it from a backup, "
            "or move it away and set the secrets again"
        )

    def _load(self) -> tuple[dict[str, str], tuple[bytes, int] | None]:
        """The map in the file and the file's (salt, log2_n); empty and None if no file."""
        try:
            fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise SecretStoreUnavailable(
                f"cannot read secret file {str(self._path)!r} ({exc.strerror or exc}): "
                "check that it exists and is readable by this user"
            ) from exc
        try:
            with os.fdopen(fd, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if mode & 0o077:
                    # Encrypted, but a copy is all an offline passphrase guesser needs.
                    raise SecretStoreUnavailable(
                        f"secret file {str(self._path)!r} is readable or writable by other "
                        f"users (mode {mode & 0o777:o}): run 'chmod 600 {self._path}'; "
                        "nothing was read"
                    )
                blob = handle.read()
        except OSError as exc:
            raise SecretStoreUnavailable(
                f"cannot read secret file {str(self._path)!r} ({exc.strerror or exc}): "
                "check that it exists and is readable by this user"
            ) from exc
        minimum = _HEADER.size + _NONCE_LEN + 16
        if len(blob) < minimum:
            raise self._damaged(f"{len(blob)} bytes, shorter than the {minimum}-byte minimum")
        magic, version, log2_n, salt, check = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise self._damaged("not a taskloom secret file: wrong magic bytes")
        if version != FORMAT_VERSION:
            raise self._damaged(
                f"format version {version}, this taskloom reads {FORMAT_VERSION}; "
                "if a newer taskloom wrote it, upgrade taskloom"
            )
        if not MIN_SCRYPT_N <= 2**log2_n <= MAX_SCRYPT_N:
            raise self._damaged(f"scrypt cost 2**{log2_n} is out of range")
        keys = self._keys_for(salt, log2_n)
        if not hmac.compare_digest(keys.check, check):
            raise SecretDecryptionFailed(
                f"wrong passphrase for secret file {str(self._path)!r} (or its header is "
                f"damaged): check {PASSPHRASE_ENV} or the passphrase the application passes; "
                "the file was not changed"
            )
        nonce = blob[_HEADER.size : _HEADER.size + _NONCE_LEN]
        try:
            plain = keys.cipher.decrypt(
                nonce, blob[_HEADER.size + _NONCE_LEN :], blob[: _HEADER.size]
            )
        except InvalidTag:
            raise self._damaged("the authentication tag does not match") from None
        try:
            doc = json.loads(plain)
        except (ValueError, UnicodeDecodeError):
            raise self._damaged("decrypted content is not JSON") from None
        secrets = doc.get("secrets") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != _PLAINTEXT_FORMAT
            or not isinstance(secrets, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items())
        ):
            raise self._damaged("decrypted content has an unexpected shape")
        return secrets, (salt, log2_n)

    def _seal(self, secrets: Mapping[str, str], params: tuple[bytes, int] | None) -> bytes:
        salt, log2_n = params if params is not None else (os.urandom(_SALT_LEN), self._log2_n)
        keys = self._keys_for(salt, log2_n)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, log2_n, salt, keys.check)
        nonce = os.urandom(_NONCE_LEN)
        plain = json.dumps(
            {"format": _PLAINTEXT_FORMAT, "secrets": dict(sorted(secrets.items()))},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        return header + nonce + keys.cipher.encrypt(nonce, plain, header)

    def _write_atomic(self, blob: bytes) -> None:
        directory = self._path.parent
        # mkstemp creates the file 0600, so the secret file is never readable by others.
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _update(self, name: str, value: str | None) -> bool:
        """Set (``value``) or delete (None) one name under the file lock; True if it existed."""
        try:
            with self._file_lock():
                secrets, params = self._load()
                existed = name in secrets
                if value is None:
                    if not existed:
                        return False
                    del secrets[name]
                else:
                    secrets[name] = value
                self._write_atomic(self._seal(secrets, params))
                return existed
        except OSError as exc:
            raise SecretStoreUnavailable(
                f"cannot write secret file {str(self._path)!r} ({exc.strerror or exc}): "
                "check that its directory exists and is writable by this user"
            ) from exc

    # --- the SecretStore protocol ---------------------------------------------------------

    async def get(self, name: str, /) -> Secret:
        """The secret of that name; ``SecretNotFound`` if the file does not hold it."""
        self._check_open()
        check_secret_name(name)
        secrets, _ = await asyncio.to_thread(self._load)
        if name not in secrets:
            raise SecretNotFound(
                f"secret {name!r} not found in {str(self._path)!r}: "
                f"set it with `taskloom secrets set {name}`",
                name=name,
            )
        return Secret(secrets[name])

    async def set(self, name: str, value: str | Secret, /) -> None:
        """Store the value, replacing any earlier one; on disk when this returns."""
        self._check_open()
        check_secret_name(name)
        text = secret_text(value)
        async with self._lock:
            await asyncio.to_thread(self._update, name, text)

    async def delete(self, name: str, /) -> bool:
        """Remove the name; True if it was there."""
        self._check_open()
        check_secret_name(name)
        async with self._lock:
            return await asyncio.to_thread(self._update, name, None)

    async def names(self) -> list[str]:
        """The names in the file, sorted."""
        self._check_open()
        secrets, _ = await asyncio.to_thread(self._load)
        return sorted(secrets)

    async def aclose(self) -> None:
        """Forget the derived keys; later calls raise ``UsageError``."""
        self._closed = True
        self._keys.clear()


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; platforms that cannot open a directory skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        with suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)
