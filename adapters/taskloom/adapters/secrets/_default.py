"""The default secret store chain an application gets unless it builds its own."""

from __future__ import annotations

import os
from collections.abc import Mapping

from taskloom.adapters.secrets._chain import ChainSecretStore
from taskloom.adapters.secrets._common import PASSPHRASE_ENV
from taskloom.adapters.secrets._env import EnvSecretStore
from taskloom.adapters.secrets._file import EncryptedFileSecretStore
from taskloom.adapters.secrets._keyring import DEFAULT_TIMEOUT_S, KeyringSecretStore
from taskloom.contracts import SecretStore, SecretStoreUnavailable


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
    With neither, raise ``SecretStoreUnavailable`` whose message is one line and carries
    no traceback chain. Async because probing the keyring is a call that may hang.
    """
    env = os.environ if environ is None else environ
    writable: SecretStore
    try:
        writable = await KeyringSecretStore.open(service, timeout_s=timeout_s)
    except SecretStoreUnavailable as keyring_error:
        if not env.get(PASSPHRASE_ENV):
            reason = str(keyring_error).split(";", 1)[0]
            raise SecretStoreUnavailable(
                f"no usable secret store ({reason}): set {PASSPHRASE_ENV} to keep secrets "
                f"encrypted in {str(path)!r}, or install a system keyring "
                "(macOS Keychain, Windows Credential Locker, GNOME Keyring or KWallet)"
            ) from None
        writable = EncryptedFileSecretStore.from_env(path, environ=env)
    return ChainSecretStore([EnvSecretStore(environ=environ), writable])
