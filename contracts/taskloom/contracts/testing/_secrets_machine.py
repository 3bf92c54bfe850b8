"""The model-based state machine of ``SecretStoreConformance``: random sets, deletes,
gets and reopens of a writable store, compared with a plain dict after every step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskloom.contracts import Secret, SecretNotFound, SecretStore

if TYPE_CHECKING:
    from taskloom.contracts.testing._secrets_suite import SecretStoreConformance

_NAMES = ("api_key", "API_KEY", "db.password", "token-2")
_VALUES = st.sampled_from(["", "v", "p@ss w0rd", "ünï\u00e7ødé", "x" * 300, "line1\nline2"])


class _SecretMachine(RuleBasedStateMachine):
    """Drives a writable store and a dict with the same sets and deletes."""

    suite: ClassVar[SecretStoreConformance]
    location: ClassVar[Path]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model: dict[str, str] = {}
        self.context: AbstractAsyncContextManager[SecretStore] | None = None
        self.store: SecretStore | None = None

    def run(self, awaitable: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await asyncio.wait_for(awaitable, self.suite.timeout_s)

        return self.runner.run(wrapped())

    def open(self) -> None:
        self.context = self.suite.open_store(self.location)
        self.store = self.run(self.context.__aenter__())

    def close(self) -> None:
        context, self.context, self.store = self.context, None, None
        if context is not None:
            self.run(context.__aexit__(None, None, None))

    @property
    def s(self) -> SecretStore:
        assert self.store is not None
        return self.store

    @initialize()
    def start(self) -> None:
        self.open()
        # Each example starts from an empty store at the same location.
        for name in self.run(self.s.names()):
            self.run(self.s.delete(name))

    def teardown(self) -> None:
        try:
            self.close()
        finally:
            self.runner.close()

    @rule(name=st.sampled_from(_NAMES), value=_VALUES)
    def set(self, name: str, value: str) -> None:
        self.run(self.s.set(name, value))
        self.model[name] = value

    @rule(name=st.sampled_from(_NAMES))
    def delete(self, name: str) -> None:
        got = self.run(self.s.delete(name))
        assert got is (name in self.model), f"delete({name!r}) returned {got!r}"
        self.model.pop(name, None)

    @rule(name=st.sampled_from(_NAMES))
    def get(self, name: str) -> None:
        if name in self.model:
            secret = self.run(self.s.get(name))
            assert isinstance(secret, Secret), f"get({name!r}) returned {type(secret).__name__}"
            assert secret.reveal() == self.model[name], f"get({name!r}) revealed the wrong value"
        else:
            with pytest.raises(SecretNotFound):
                self.run(self.s.get(name))

    @precondition(lambda self: self.suite.durable)
    @rule()
    def reopen(self) -> None:
        self.close()
        self.open()

    @invariant()
    def names_match(self) -> None:
        if self.store is not None:
            assert self.run(self.s.names()) == sorted(self.model)
