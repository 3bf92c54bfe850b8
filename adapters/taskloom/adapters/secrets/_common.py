"""What every secret store of this package shares: its lifecycle and the hint it gives
when no store can be used.

Kept apart so that each store module holds one idea (its backend) and the closed-store
and value checks read the same everywhere.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from taskloom.contracts import Secret, UsageError

PASSPHRASE_ENV = "TASKLOOM_SECRETS_PASSPHRASE"
"""The environment variable that holds the encrypted file store's passphrase."""

CONFIGURE_HINT = (
    f"set {PASSPHRASE_ENV} to use the encrypted secret file, "
    "or install a system keyring (macOS Keychain, Windows Credential Locker, "
    "GNOME Keyring or KWallet over Secret Service)"
)
"""One line that says how to get a usable secret store; ends every 'unavailable' message."""


def secret_text(value: object) -> str:
    """The text of a value given to ``set``: a ``str`` or a ``Secret``.

    The error names only the type, never the value, because a wrong type may still be a
    secret (bytes of a key, say).
    """
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, str):
        return value
    raise UsageError(f"a secret value must be str or Secret, got {type(value).__name__}")


class StoreLifecycle:
    """Closed-state bookkeeping: ``UsageError`` after ``aclose()``, which is idempotent."""

    __slots__ = ("_closed",)

    def __init__(self) -> None:
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{type(self).__name__} is closed: open a new store to use it again")

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` has been called."""
        return self._closed

    async def aclose(self) -> None:
        """Close the store; later calls raise ``UsageError``. Calling it again does nothing."""
        self._closed = True

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
