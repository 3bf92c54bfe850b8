"""``MemorySecretStore``: named secrets kept in this process only."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from taskloom.contracts import (
    ReadOnlySecretStore,
    Secret,
    SecretNotFound,
    UsageError,
    check_secret_name,
)

__all__ = ["MemorySecretStore"]


def _as_secret(value: str | Secret) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


class _Vault:
    """The secrets of one store; shared by the stores ``reopen`` made from one another."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, Secret] = {}


class MemorySecretStore:
    """A ``SecretStore`` for tests and ephemeral use.

    Values are held as ``Secret`` objects, so even a debugger's view of the store
    shows masks. ``read_only=True`` makes it behave like the environment store
    (``set`` and ``delete`` raise ``ReadOnlySecretStore``), which lets tests cover
    that path without touching the process environment.
    """

    def __init__(
        self, initial: Mapping[str, str | Secret] | None = None, *, read_only: bool = False
    ) -> None:
        self._vault = _Vault()
        for name, value in (initial or {}).items():
            self._vault.values[check_secret_name(name)] = _as_secret(value)
        self._read_only = read_only
        self._closed = False

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        state = "closed" if self._closed else "open"
        return f"<MemorySecretStore {state}, {mode}: {len(self._vault.values)} secret(s)>"

    async def __aenter__(self) -> MemorySecretStore:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def reopen(self) -> MemorySecretStore:
        """A new, open store over this one's secrets (as if a process opened it again)."""
        other = MemorySecretStore(read_only=self._read_only)
        other._vault = self._vault
        return other

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this MemorySecretStore is closed: open a new store (or reopen())")

    def _check_writable(self, name: str) -> None:
        if self._read_only:
            raise ReadOnlySecretStore(
                f"cannot change secret {name!r}: this MemorySecretStore is read-only; "
                "create it with read_only=False to allow writes"
            )

    async def get(self, name: str, /) -> Secret:
        """The secret called ``name``; ``SecretNotFound`` if there is none."""
        self._check_open()
        check_secret_name(name)
        try:
            return self._vault.values[name]
        except KeyError:
            raise SecretNotFound(
                f"no secret named {name!r} in this MemorySecretStore: set it first",
                name=name,
            ) from None

    async def set(self, name: str, value: str | Secret, /) -> None:
        """Store ``value`` under ``name``, replacing what was there."""
        self._check_open()
        check_secret_name(name)
        self._check_writable(name)
        if not isinstance(value, str | Secret):
            raise UsageError(f"a secret value must be text or a Secret, got {type(value).__name__}")
        self._vault.values[name] = _as_secret(value)

    async def delete(self, name: str, /) -> bool:
        """Remove ``name``; True if it existed."""
        self._check_open()
        check_secret_name(name)
        self._check_writable(name)
        return self._vault.values.pop(name, None) is not None

    async def names(self) -> list[str]:
        """Every name in the store, sorted."""
        self._check_open()
        return sorted(self._vault.values)

    async def aclose(self) -> None:
        """Close this store (idempotent); the secrets stay for ``reopen`` stores."""
        self._closed = True
