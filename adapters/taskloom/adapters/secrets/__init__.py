"""Secret stores: the platform keyring, a passphrase-encrypted file, environment
variables, and a chain of them.

Most applications call :func:`open_default_secret_store`, which fails closed: with no
usable writable store it raises ``SecretStoreUnavailable`` with one line saying how to
configure one, and never falls back to plaintext.
"""

from __future__ import annotations

from taskloom.adapters.secrets._chain import ChainSecretStore
from taskloom.adapters.secrets._default import open_default_secret_store
from taskloom.adapters.secrets._env import EnvSecretStore
from taskloom.adapters.secrets._file import EncryptedFileSecretStore
from taskloom.adapters.secrets._keyring import KeyringSecretStore

__all__ = [
    "ChainSecretStore",
    "EncryptedFileSecretStore",
    "EnvSecretStore",
    "KeyringSecretStore",
    "open_default_secret_store",
]
