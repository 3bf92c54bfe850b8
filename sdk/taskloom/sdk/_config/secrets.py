"""The secret store a configuration names, for the CLI and ``Engine.from_config`` alike.

``[secrets] kind``: ``"default"`` (also without a ``[secrets]`` table) is the chain
of ``open_default_secret_store`` -- the environment (``TASKLOOM_SECRET_<NAME>``)
always, then the platform keyring, else the encrypted file at ``path`` when
``TASKLOOM_SECRETS_PASSPHRASE`` is set, failing closed with a hint otherwise;
``"env"``: the environment only; ``"file"``: the encrypted file only.
"""

from __future__ import annotations

from taskloom.contracts import Secret, SecretStore
from taskloom.sdk._config.toml import CliConfig

__all__ = ["ConfiguredSecrets", "open_secret_store"]


async def open_secret_store(config: CliConfig) -> SecretStore:
    """Open the store ``config`` names (see the module)."""
    from taskloom.adapters.secrets import (
        EncryptedFileSecretStore,
        EnvSecretStore,
        open_default_secret_store,
    )

    if config.secrets_kind == "env":
        return EnvSecretStore()
    config.secrets_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if config.secrets_kind == "file":
        return EncryptedFileSecretStore.from_env(config.secrets_path)
    return await open_default_secret_store(path=config.secrets_path)


class ConfiguredSecrets:
    """The configured store, opened on first use: an engine whose pipelines need no
    secret starts on a machine without a keyring or a passphrase."""

    def __init__(self, config: CliConfig) -> None:
        self._config = config
        self._store: SecretStore | None = None

    async def _opened(self) -> SecretStore:
        if self._store is None:
            self._store = await open_secret_store(self._config)
        return self._store

    async def get(self, name: str, /) -> Secret:
        return await (await self._opened()).get(name)

    async def set(self, name: str, value: str | Secret, /) -> None:
        await (await self._opened()).set(name, value)

    async def delete(self, name: str, /) -> bool:
        return await (await self._opened()).delete(name)

    async def names(self) -> list[str]:
        return await (await self._opened()).names()

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()
            self._store = None
