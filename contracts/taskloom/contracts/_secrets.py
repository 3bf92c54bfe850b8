"""The secret store contract and ``Secret``, a value that will not show itself."""

from __future__ import annotations

import re
from typing import Any, NoReturn, Protocol, runtime_checkable

import attrs

from taskloom.contracts._errors import InvalidSecretName, UsageError

MASK = "**********"
"""What a ``Secret`` shows instead of its value."""

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def check_secret_name(name: object) -> str:
    """Return ``name`` if it is a valid secret name, else raise InvalidSecretName."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSecretName(
            f"invalid secret name {name!r}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
        )
    return name


_CREDENTIAL_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z0-9_\-]*(?:key|token|secret|password|passwd|sig|signature|auth)"
    r"[a-z0-9_\-]*)=)[^&;#]*"
)
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/?#@]*@")


def mask_url(url: str) -> str:
    """``url`` for display: user and password (``https://user:key@host``) and the values of
    query parameters named like credentials (``?api_key=...``) replaced by ``MASK``."""
    if not isinstance(url, str):
        return url
    masked = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", url)
    return _CREDENTIAL_PARAM.sub(lambda m: f"{m.group(1)}{MASK}", masked)


class Secret:
    """A secret value. ``repr``, ``str``, f-strings, logging, pickling and the
    converter all show ``MASK``; only ``reveal()`` gives the text."""

    __slots__ = ("__value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise UsageError(f"a Secret holds text, got {type(value).__name__}")
        self.__value = value

    def reveal(self) -> str:
        """The secret text. Call it only where the value leaves for its destination."""
        return self.__value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self.__value.encode(), other.__value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", len(self.__value)))

    def __bool__(self) -> bool:
        return bool(self.__value)

    def __len__(self) -> int:
        return len(self.__value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled: store a SecretRef instead")

    def __getstate__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled: store a SecretRef instead")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


@attrs.frozen(kw_only=True)
class SecretRef:
    """A reference to a secret by name, as configs and pipelines hold it:
    ``{"secret": "openai_api_key"}``. Never the value itself."""

    secret: str = attrs.field(validator=attrs.validators.instance_of(str))

    def __attrs_post_init__(self) -> None:
        check_secret_name(self.secret)


@runtime_checkable
class SecretStore(Protocol):
    """Named secrets.

    Invariants (each one checked by ``SecretStoreConformance``):

    SS1 ``get`` after ``set`` returns a ``Secret`` whose ``reveal()`` is the value
        set; a second ``set`` replaces it.
    SS2 ``get`` of a missing name raises ``SecretNotFound`` naming it.
    SS3 ``names()`` returns exactly the names set and not deleted, sorted, in a
        list that is the caller's (changing it changes nothing stored).
    SS4 ``delete`` returns True if the name existed and False otherwise; after
        it ``get`` raises ``SecretNotFound``.
    SS5 Names outside ``[A-Za-z0-9_.-]{1,128}`` raise ``InvalidSecretName``.
    SS6 No value appears in the store's ``repr``, in any error it raises, in
        any log record it emits, or in a ``Secret``'s repr, str, format or
        serialized form.
    SS7 A value set is durable: a new store on the same location returns it
        (for stores that declare themselves durable).
    SS8 After ``aclose()`` calls raise ``UsageError``; ``aclose()`` is idempotent.
    SS9 A read-only store raises ``ReadOnlySecretStore`` from ``set`` and
        ``delete`` and changes nothing.
    """

    async def get(self, name: str, /) -> Secret:
        """The secret ``name``, masked in every representation; ``SecretNotFound`` if absent."""

    async def set(self, name: str, value: str | Secret, /) -> None:
        """Store ``value`` under ``name``; ``ReadOnlySecretStore`` for a read-only store."""

    async def delete(self, name: str, /) -> bool:
        """Remove ``name``; deleting a missing name is a no-op."""

    async def names(self) -> list[str]:
        """The names stored, sorted; never their values."""

    async def aclose(self) -> None:
        """Release what the store holds (idempotent)."""
