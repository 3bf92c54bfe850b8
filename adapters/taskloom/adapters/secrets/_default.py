"""The default secret store chain an application gets unless it builds its own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from taskloom.adapters.secrets._chain import ChainSecretStore
from taskloom.adapters.secrets._common import PASSPHRASE_ENV
from taskloom.adapters.secrets._env import DEFAULT_PREFIX, EnvSecretStore, env_var_name
from taskloom.adapters.secrets._file import EncryptedFileSecretStore
from taskloom.adapters.secrets._keyring import DEFAULT_TIMEOUT_S, KeyringSecretStore
from taskloom.contracts import InvalidSecretName, Secret, SecretStore, SecretStoreUnavailable


async def open_default_secret_store(
    *,
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    service: str = "taskloom",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ChainSecretStore:
    """The secret store an application gets unless it builds its own.

    A chain of, in order: the environment (``TASKLOOM_SECRET_<NAME>``, read-only, so an
    exported variable overrides a stored value), then the platform keyring if it is a
    real one and answers within ``timeout_s``, else the encrypted file at ``path`` if
    ``TASKLOOM_SECRETS_PASSPHRASE`` is set in ``environ`` (default ``os.environ``).
    With neither, the environment still counts: the chain holds it and a store that
    fails closed -- asking it for a secret no variable holds, or writing one, raises
    ``SecretStoreUnavailable`` with a one-line hint that names every way to fix it.
    Never a plaintext fallback. Async because probing the keyring is a call that may hang.
    """
    env = os.environ if environ is None else environ
    writable: SecretStore
    try:
        writable = await KeyringSecretStore.open(service, timeout_s=timeout_s)
    except SecretStoreUnavailable as keyring_error:
        if not env.get(PASSPHRASE_ENV):
            reason = str(keyring_error).split(";", 1)[0]
            writable = _NoWritableStore(reason, str(path))
        else:
            writable = EncryptedFileSecretStore.from_env(path, environ=env)
    return ChainSecretStore([EnvSecretStore(environ=environ), writable])


class _NoWritableStore:
    """The end of a default chain with no keyring and no passphrase: fails closed, with
    the ways out (an environment variable, the passphrase, a keyring)."""

    durable = False

    def __init__(self, reason: str, path: str) -> None:
        self._reason = reason
        self._path = path

    def _unavailable(self, name: str | None) -> SecretStoreUnavailable:
        variable = f"{DEFAULT_PREFIX}<NAME>"
        if name:
            with contextlib.suppress(InvalidSecretName):
                variable = env_var_name(name)
        return SecretStoreUnavailable(
            f"no usable secret store ({self._reason}): export {variable} to give the "
            f"secret through the environment (read-only), or set {PASSPHRASE_ENV} to keep "
            f"secrets encrypted in {self._path!r}, or install a system keyring (macOS "
            "Keychain, Windows Credential Locker, GNOME Keyring or KWallet)"
        )

    async def get(self, name: str, /) -> Secret:
        raise self._unavailable(name) from None

    async def set(self, name: str, value: str | Secret, /) -> None:
        raise self._unavailable(name) from None

    async def delete(self, name: str, /) -> bool:
        raise self._unavailable(name) from None

    async def names(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        """Nothing to close."""
