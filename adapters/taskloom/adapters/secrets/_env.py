"""A read-only secret store over environment variables, for CI and containers.

Name mapping (both ways, documented because users type the variable names by hand):

* secret ``name`` → variable ``prefix + name.upper()``: ``openai_api_key`` reads
  ``TASKLOOM_SECRET_OPENAI_API_KEY``;
* variable → name: the part after the prefix, lower-cased; ``names()`` lists those that
  are valid secret names.

One spelling per variable: shells cannot export names holding ``.`` or ``-`` and
variables are upper case, so ``OPENAI-API-KEY``, ``openai.api.key`` and
``openai_api_key`` would all read one variable and be treated as one secret -- a grant
of one name would hand out another. Only the canonical spelling (``a-z 0-9 _``) is
accepted; any other is refused with ``InvalidSecretName`` naming the spelling to use.

An empty variable counts as unset: CI systems (GitHub Actions among them) expand a
missing secret to the empty string, and a blank API key is never what was meant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from taskloom.adapters.secrets._common import StoreLifecycle
from taskloom.contracts import (
    InvalidSecretName,
    ReadOnlySecretStore,
    Secret,
    SecretNotFound,
    UsageError,
    check_secret_name,
)

DEFAULT_PREFIX = "TASKLOOM_SECRET_"


def env_var_name(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The environment variable that holds secret ``name`` (see the module docstring).

    ``InvalidSecretName`` unless ``name`` is the one spelling of its variable.
    """
    check_secret_name(name)
    canonical = name.lower().replace(".", "_").replace("-", "_")
    if name != canonical:
        raise InvalidSecretName(
            f"secret name {name!r} is not accepted by the environment store: names that "
            f"differ only in case, '.', '-' or '_' read the same variable, so only one "
            f"spelling is accepted; use {canonical!r} (variable {prefix}{canonical.upper()})"
        )
    return prefix + canonical.upper()


class EnvSecretStore(StoreLifecycle):
    """Secrets read from environment variables; ``set`` and ``delete`` are refused (SS9).

    ``environ`` defaults to ``os.environ``, read afresh at every call so that a variable
    exported after the store was built is seen; pass a mapping to pin the values (tests,
    or an application that loaded a ``.env`` file itself).
    """

    __slots__ = ("_environ", "_prefix")

    durable = False
    """A new store sees what the environment holds then, not what this one saw."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, *, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        if not isinstance(prefix, str) or not prefix:
            raise UsageError("the environment prefix must be non-empty text")
        self._prefix = prefix
        self._environ = environ

    def __repr__(self) -> str:
        return f"EnvSecretStore(prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        """The prefix every variable of this store starts with."""
        return self._prefix

    def variable_name(self, name: str) -> str:
        """The environment variable this store reads for secret ``name``."""
        return env_var_name(name, self._prefix)

    def _variable_of(self, name: str) -> str:
        """The variable a name's canonical spelling reads (for messages; never refuses)."""
        return self._prefix + name.upper().replace(".", "_").replace("-", "_")

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    async def get(self, name: str, /) -> Secret:
        """The secret held by the variable for ``name``; ``SecretNotFound`` if unset or empty."""
        self._check_open()
        var = env_var_name(name, self._prefix)
        value = self._env().get(var)
        if not value:
            raise SecretNotFound(
                f"secret {name!r} not found: export {var} or set it in a writable store",
                name=name,
            )
        return Secret(value)

    async def set(self, name: str, value: str | Secret, /) -> None:
        """Refused: environment variables belong to whoever started the process."""
        self._check_open()
        check_secret_name(name)
        raise ReadOnlySecretStore(
            f"cannot set secret {name!r}: the environment store is read-only; "
            f"export {self._variable_of(name)} before starting the process instead"
        )

    async def delete(self, name: str, /) -> bool:
        """Refused: environment variables belong to whoever started the process."""
        self._check_open()
        check_secret_name(name)
        raise ReadOnlySecretStore(
            f"cannot delete secret {name!r}: the environment store is read-only; "
            f"unset {self._variable_of(name)} before starting the process instead"
        )

    async def names(self) -> list[str]:
        """The names whose variables are set and non-empty, lower-cased, sorted."""
        self._check_open()
        found: set[str] = set()
        for var, value in self._env().items():
            if not var.startswith(self._prefix) or not value:
                continue
            name = var[len(self._prefix) :].lower()
            try:
                found.add(check_secret_name(name))
            except InvalidSecretName:
                continue
        return sorted(found)
