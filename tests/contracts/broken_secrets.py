"""Broken secret stores, each wrapping a working MemorySecretStore and changing one
behaviour.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from taskloom.adapters.memory import MemorySecretStore
from taskloom.contracts import (
    InvalidSecretName,
    ReadOnlySecretStore,
    Secret,
    SecretNotFound,
    UsageError,
)


class WrappedSecrets:
    """Passes every call to a working MemorySecretStore; subclasses break one thing."""

    def __init__(self, inner: MemorySecretStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    async def get(self, name: str, /) -> Secret:
        return await self.inner.get(name)

    async def set(self, name: str, value: str | Secret, /) -> None:
        await self.inner.set(name, value)

    async def delete(self, name: str, /) -> bool:
        return await self.inner.delete(name)

    async def names(self) -> list[str]:
        return await self.inner.names()

    async def aclose(self) -> None:
        await self.inner.aclose()


class FirstSetWins(WrappedSecrets):
    """SS1: a second ``set`` of a name is ignored."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        if name not in await self.inner.names():
            await self.inner.set(name, value)


class MissingIsEmpty(WrappedSecrets):
    """SS2: a missing name reads as an empty secret instead of raising."""

    async def get(self, name: str, /) -> Secret:
        try:
            return await self.inner.get(name)
        except SecretNotFound:
            return Secret("")


class NamesUnsorted(WrappedSecrets):
    """SS3: ``names()`` comes back in reverse order."""

    async def names(self) -> list[str]:
        return sorted(await self.inner.names(), reverse=True)


class DeleteReturnsNothing(WrappedSecrets):
    """SS4: ``delete`` always reports False."""

    async def delete(self, name: str, /) -> bool:
        await self.inner.delete(name)
        return False


class LaxNames(WrappedSecrets):
    """SS5: names with spaces or slashes are quietly rewritten instead of refused."""

    @staticmethod
    def _fix(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:128] or "_"

    async def get(self, name: str, /) -> Secret:
        return await self.inner.get(self._fix(name))

    async def set(self, name: str, value: str | Secret, /) -> None:
        await self.inner.set(self._fix(name), value)

    async def delete(self, name: str, /) -> bool:
        return await self.inner.delete(self._fix(name))


class LeakyErrors(WrappedSecrets):
    """SS6: an invalid name's error quotes the value that was being set."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        try:
            await self.inner.set(name, value)
        except Exception as exc:
            shown = value.reveal() if isinstance(value, Secret) else value
            raise type(exc)(f"{exc} (while setting {shown!r})") from None


class ForgetsOnReopen(WrappedSecrets):
    """SS7: stands for a store that never flushes: reopening finds it empty."""


class WorksAfterCloseSecrets(WrappedSecrets):
    """SS8: ``aclose`` does nothing."""

    async def aclose(self) -> None:
        return None


class ReadOnlyThatWrites(WrappedSecrets):
    """SS9: declares itself read-only, but ``set`` and ``delete`` still work."""


BROKEN_SECRETS: dict[str, tuple[type[WrappedSecrets], str]] = {
    "second set ignored": (FirstSetWins, "ss1"),
    "missing name is empty": (MissingIsEmpty, "ss2"),
    "names unsorted": (NamesUnsorted, "ss3"),
    "delete reports False": (DeleteReturnsNothing, "ss4"),
    "invalid names rewritten": (LaxNames, "ss5"),
    "errors leak values": (LeakyErrors, "ss6"),
    "forgets on reopen": (ForgetsOnReopen, "ss7"),
    "works after close": (WorksAfterCloseSecrets, "ss8"),
    "read-only store writes": (ReadOnlyThatWrites, "ss9"),
}
"""Each broken secret store and the invariant whose tests must catch it."""


# --- more: argument edge cases, ownership, logs, non-ASCII text ---------------------------


class ValuesStripped(WrappedSecrets):
    """SS1: values are stripped of surrounding whitespace when set (a form handler's habit)."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        text = value.reveal() if isinstance(value, Secret) else value
        await self.inner.set(name, text.strip())


class NonAsciiMangled(WrappedSecrets):
    """SS1: values are stored as ASCII with replacement (``encode("ascii", "replace")``)."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        text = value.reveal() if isinstance(value, Secret) else value
        await self.inner.set(name, text.encode("ascii", "replace").decode("ascii"))


class NamesCaseFolded(WrappedSecrets):
    """SS1: names are lower-cased (a case-insensitive backend), so API_KEY is api_key."""

    async def get(self, name: str, /) -> Secret:
        return await self.inner.get(name.lower())

    async def set(self, name: str, value: str | Secret, /) -> None:
        await self.inner.set(name.lower(), value)


class GetReturnsPlainText(WrappedSecrets):
    """SS1: ``get`` returns the bare string instead of a Secret."""

    async def get(self, name: str, /) -> Any:
        return (await self.inner.get(name)).reveal()


class NotFoundWithoutName(WrappedSecrets):
    """SS2: SecretNotFound says "not found" without naming the secret."""

    async def get(self, name: str, /) -> Secret:
        try:
            return await self.inner.get(name)
        except SecretNotFound:
            raise SecretNotFound("secret not found") from None


class NamesHandsOutItsList(WrappedSecrets):
    """SS3 (ownership): ``names()`` returns the store's own cached list."""

    cache: list[str] | None = None

    async def set(self, name: str, value: str | Secret, /) -> None:
        self.cache = None
        await self.inner.set(name, value)

    async def names(self) -> list[str]:
        if self.cache is None:
            self.cache = await self.inner.names()
        return self.cache


class NamesKeepDeleted(WrappedSecrets):
    """SS3: a deleted name stays in ``names()`` (a tombstone nobody filters)."""

    def __init__(self, inner: MemorySecretStore) -> None:
        super().__init__(inner)
        self.tombstones: set[str] = set()

    async def delete(self, name: str, /) -> bool:
        existed = await self.inner.delete(name)
        if existed:
            self.tombstones.add(name)
        return existed

    async def names(self) -> list[str]:
        return sorted(set(await self.inner.names()) | self.tombstones)


class DeleteMissingRaisesNotFound(WrappedSecrets):
    """SS4: deleting a missing name raises SecretNotFound instead of returning False."""

    async def delete(self, name: str, /) -> bool:
        if not await self.inner.delete(name):
            raise SecretNotFound(f"no secret named {name!r}")
        return True


class LongestNameRefused(WrappedSecrets):
    """SS5: the length check is off by one, so a name of 128 characters is refused."""

    @staticmethod
    def _check(name: str) -> None:
        if len(name) >= 128:
            raise InvalidSecretName(f"name {name[:20]!r}... is too long")

    async def get(self, name: str, /) -> Secret:
        self._check(name)
        return await self.inner.get(name)

    async def set(self, name: str, value: str | Secret, /) -> None:
        self._check(name)
        await self.inner.set(name, value)


class LogsValues(WrappedSecrets):
    """SS6: ``set`` logs what it stores at DEBUG level."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        text = value.reveal() if isinstance(value, Secret) else value
        logging.getLogger("broken.secrets").debug("set %s = %s", name, text)
        await self.inner.set(name, value)


class ReprShowsValues(WrappedSecrets):
    """SS6: the store's repr lists its contents, values included (a dataclass repr)."""

    def __init__(self, inner: MemorySecretStore) -> None:
        super().__init__(inner)
        self.seen: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ReprShowsValues({self.seen!r})"

    async def get(self, name: str, /) -> Secret:
        secret = await self.inner.get(name)
        self.seen[name] = secret.reveal()
        return secret


class NamesWorkAfterClose(WrappedSecrets):
    """SS8: ``names()`` reads a cache and never checks that the store is closed."""

    async def names(self) -> list[str]:
        try:
            return await self.inner.names()
        except UsageError:
            return []


class SecondAcloseRaisesSecrets(WrappedSecrets):
    """SS8: closing twice raises."""

    closed = False

    async def aclose(self) -> None:
        if self.closed:
            raise UsageError("already closed")
        self.closed = True
        await self.inner.aclose()


class ReadOnlyThatDeletes(WrappedSecrets):
    """SS9: declares itself read-only and refuses ``set``, but ``delete`` still works."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        raise ReadOnlySecretStore("this store is read-only")


class DeletesComeBack(WrappedSecrets):
    """SS7: deletes live only in memory; reopening the location brings deleted names back."""

    deleted: ClassVar[dict[int, dict[str, Secret]]] = {}

    def __init__(self, inner: MemorySecretStore) -> None:
        super().__init__(inner)
        vault = inner._vault
        vault.values.update(self.deleted.get(id(vault), {}))

    async def delete(self, name: str, /) -> bool:
        try:
            value = await self.inner.get(name)
        except SecretNotFound:
            value = None
        existed = await self.inner.delete(name)
        if value is not None:
            self.deleted.setdefault(id(self.inner._vault), {})[name] = value
        return existed


class LastSetLostOnClose(WrappedSecrets):
    """SS7: ``aclose`` rolls back the last ``set`` (a transaction left uncommitted)."""

    last: tuple[str, Secret | None] | None = None

    async def set(self, name: str, value: str | Secret, /) -> None:
        try:
            before: Secret | None = await self.inner.get(name)
        except SecretNotFound:
            before = None
        await self.inner.set(name, value)
        self.last = (name, before)

    async def aclose(self) -> None:
        if self.last is not None:
            name, before = self.last
            self.last = None
            if before is None:
                await self.inner.delete(name)
            else:
                await self.inner.set(name, before)
        await self.inner.aclose()


READ_ONLY = (ReadOnlyThatWrites, ReadOnlyThatDeletes)
"""The broken stores that declare ``writable = False``."""

BROKEN_SECRETS_MORE: dict[str, tuple[type[WrappedSecrets], str]] = {
    "values stripped": (ValuesStripped, "ss1"),
    "non-ASCII values mangled": (NonAsciiMangled, "ss1"),
    "names case-folded": (NamesCaseFolded, "ss1"),
    "get returns plain text": (GetReturnsPlainText, "ss1"),
    "not-found error without the name": (NotFoundWithoutName, "ss2"),
    "names() hands out its list": (NamesHandsOutItsList, "ss3"),
    "deleted names listed": (NamesKeepDeleted, "ss3"),
    "delete of a missing name raises": (DeleteMissingRaisesNotFound, "ss4"),
    "longest name refused": (LongestNameRefused, "ss5"),
    "values logged": (LogsValues, "ss6"),
    "repr shows values": (ReprShowsValues, "ss6"),
    "deletes come back after reopening": (DeletesComeBack, "ss7"),
    "last set lost on close": (LastSetLostOnClose, "ss7"),
    "names() after close": (NamesWorkAfterClose, "ss8"),
    "second aclose raises": (SecondAcloseRaisesSecrets, "ss8"),
    "read-only store deletes": (ReadOnlyThatDeletes, "ss9"),
}
"""Each broken secret store here and the invariant whose tests must catch it."""
