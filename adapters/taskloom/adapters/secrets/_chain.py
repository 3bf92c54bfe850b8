"""Several secret stores seen as one: the environment first, then a writable store.

Reads go down the chain in order, so an earlier store shadows a later one (an exported
variable overrides the keyring, as twelve-factor apps expect). Writes go to the first
store that accepts them: a store is skipped when it raises ``ReadOnlySecretStore``, which
SS9 promises happens without any change, so the chain needs no extra protocol to learn
which stores are writable. Every other error propagates: a store that is unavailable must
fail the call, never be skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable

from taskloom.adapters.secrets._common import StoreLifecycle
from taskloom.contracts import (
    InvalidSecretName,
    ReadOnlySecretStore,
    Secret,
    SecretNotFound,
    SecretStore,
    UsageError,
    check_secret_name,
)


class ChainSecretStore(StoreLifecycle):
    """A chain of stores: ``get`` tries each in order, ``set`` and ``delete`` go to the
    first writable one, ``names()`` is the sorted union. The chain owns its stores:
    ``aclose()`` closes each of them.

    A name deleted from the writable store may still be found in an earlier read-only
    one (an environment variable); that is shadowing, not a failed delete.
    """

    __slots__ = ("_stores",)

    def __init__(self, stores: Iterable[SecretStore]) -> None:
        super().__init__()
        self._stores = tuple(stores)
        if not self._stores:
            raise UsageError("a ChainSecretStore needs at least one store")

    def __repr__(self) -> str:
        inner = ", ".join(repr(store) for store in self._stores)
        return f"ChainSecretStore([{inner}])"

    @property
    def stores(self) -> tuple[SecretStore, ...]:
        """The stores of the chain, in the order they are asked."""
        return self._stores

    @property
    def durable(self) -> bool:
        """Durable when the store that receives writes is durable."""
        return any(getattr(store, "durable", False) for store in self._stores)

    async def get(self, name: str, /) -> Secret:
        """The first store's secret of that name; ``SecretNotFound`` if none has it."""
        self._check_open()
        check_secret_name(name)
        for store in self._stores:
            try:
                return await store.get(name)
            except (SecretNotFound, InvalidSecretName):
                # InvalidSecretName here: a name valid in general that this store cannot
                # hold (the environment store takes one spelling per variable)
                continue
        raise SecretNotFound(
            f"secret {name!r} not found in any of {len(self._stores)} store(s): "
            f"set it with `taskloom secrets set {name}`",
            name=name,
        )

    async def set(self, name: str, value: str | Secret, /) -> None:
        """Store the value in the first store that accepts writes."""
        self._check_open()
        check_secret_name(name)
        for store in self._stores:
            try:
                await store.set(name, value)
            except ReadOnlySecretStore:
                continue
            return
        raise ReadOnlySecretStore(
            f"cannot set secret {name!r}: every store of the chain is read-only; "
            "add a keyring or encrypted file store to it"
        )

    async def delete(self, name: str, /) -> bool:
        """Delete from the first store that accepts writes; True if it held the name."""
        self._check_open()
        check_secret_name(name)
        for store in self._stores:
            try:
                return await store.delete(name)
            except ReadOnlySecretStore:
                continue
        raise ReadOnlySecretStore(
            f"cannot delete secret {name!r}: every store of the chain is read-only"
        )

    async def names(self) -> list[str]:
        """Every name any store of the chain holds, once each, sorted."""
        self._check_open()
        found: set[str] = set()
        for store in self._stores:
            found.update(await store.names())
        return sorted(found)

    async def aclose(self) -> None:
        """Close every store of the chain (each once, even if one of them fails)."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for store in self._stores:
            try:
                await store.aclose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
