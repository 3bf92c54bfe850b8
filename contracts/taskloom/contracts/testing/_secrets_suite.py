"""``SecretStoreConformance``: the test suite every ``SecretStore`` must pass.

Subclass it and supply the factory::

    class TestMyStore(SecretStoreConformance):
        durable = True
        writable = True

        def open_store(self, location, initial=None):
            return MyStore.open(location, initial)   # an async context manager

``initial`` preloads values, which is how the suite reads from a store it cannot
write (``writable = False``, like the environment store): the factory puts them
wherever that store reads from. Each test is named after the invariant of
``SecretStore``'s docstring it checks (``test_ss3_...`` checks SS3).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    run_state_machine_as_test,
)

from taskloom.contracts import (
    MASK,
    InvalidSecretName,
    ReadOnlySecretStore,
    Secret,
    SecretError,
    SecretNotFound,
    SecretStore,
    UsageError,
    serde,
)
from taskloom.contracts.testing._naming import current_test, naming_invariant
from taskloom.contracts.testing._recording import Recording, Trail
from taskloom.contracts.testing._secrets_machine import _SecretMachine

__all__ = ["SecretStoreConformance"]

Body = Callable[[SecretStore], Awaitable[None]]

SENTINEL = "s3cr3t-VALUE-7f2a9c"
"""A value distinctive enough that finding it in any text means it leaked."""

INVALID_SECRET_NAMES: tuple[str, ...] = (
    "",
    "a b",
    "a/b",
    "../x",
    "é",
    "a\x00b",
    "x" * 129,
    "name\n",
)
"""Names outside ``[A-Za-z0-9_.-]{1,128}`` (SS5)."""


class SecretStoreConformance:
    """Subclass, implement ``open_store``, and pytest checks every invariant SS1-SS9.

    ``durable``: a second ``open_store`` on the same location sees what the first
    stored (SS7). ``writable``: ``set`` and ``delete`` work; False means the store
    must refuse them with ``ReadOnlySecretStore`` (SS9) and the suite reads only
    values given as ``initial``.
    """

    durable: ClassVar[bool] = True
    writable: ClassVar[bool] = True
    max_examples: ClassVar[int] = 25
    stateful_step_count: ClassVar[int] = 20
    timeout_s: ClassVar[float] = 60.0
    """Upper bound for one test's calls (a state machine step's), so that a store that
    never answers fails the test (TimeoutError) instead of hanging it."""

    def open_store(
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[SecretStore]:
        """An async context manager yielding the store kept at ``location``.

        ``initial`` (only given on the first open of a location) are values the
        store must hold when it opens. ``location`` does not exist yet; its
        parent directory does.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement open_store(location, initial) to run the "
            "secret store conformance suite"
        )

    def hypothesis_settings(self) -> settings:
        """Settings for the state machine; override to tune beyond the two knobs."""
        return settings(
            max_examples=self.max_examples,
            stateful_step_count=self.stateful_step_count,
            deadline=None,
            report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow],
        )

    # helpers -------------------------------------------------------------------------

    def _run(self, tmp_path: Path, body: Body, initial: Mapping[str, str] | None = None) -> None:
        trail = Trail()

        async def main() -> None:
            async with self.open_store(tmp_path / "secrets", initial) as store:
                recorded = cast(SecretStore, Recording(store, trail, {"set": (1,)}))
                await asyncio.wait_for(body(recorded), self.timeout_s)

        with naming_invariant(SecretStore, current_test(), trail):
            asyncio.run(main())

    def _need_writable(self) -> None:
        if not self.writable:
            pytest.skip("the store declares writable = False")

    # the model-based state machine ---------------------------------------------------

    def test_ss1_ss3_ss4_ss7_against_model(self, tmp_path: Path) -> None:
        """Random sets, deletes, gets and reopens agree with a plain dict."""
        self._need_writable()
        machine = type(
            "SecretMachine",
            (_SecretMachine,),
            {"suite": self, "location": tmp_path / "secrets"},
        )
        with naming_invariant(SecretStore, current_test()):
            run_state_machine_as_test(machine, settings=self.hypothesis_settings())

    # SS1 -----------------------------------------------------------------------------

    def test_ss1_get_returns_the_value_set(self, tmp_path: Path) -> None:
        """``get`` after ``set`` returns a Secret revealing the value; a second set replaces it."""
        self._need_writable()

        async def body(store: SecretStore) -> None:
            await store.set("api_key", "first")
            secret = await store.get("api_key")
            assert isinstance(secret, Secret) and secret.reveal() == "first"
            await store.set("api_key", Secret("second"))
            assert (await store.get("api_key")).reveal() == "second"
            await store.set("other", "")
            assert (await store.get("other")).reveal() == ""
            assert (await store.get("api_key")).reveal() == "second"

        self._run(tmp_path, body)

    def test_ss1_any_text_round_trips_and_names_are_case_sensitive(self, tmp_path: Path) -> None:
        """Non-ASCII, whitespace and newlines come back exactly; API_KEY and api_key differ."""
        self._need_writable()
        values = {
            "api_key": " ünï\u00e7ødé ✓ 日本 🎉 ",
            "API_KEY": "line1\nline2\t",
            "e": "e\u0301",
        }

        async def body(store: SecretStore) -> None:
            for name, value in values.items():
                await store.set(name, value)
            for name, value in values.items():
                got = (await store.get(name)).reveal()
                assert got == value, (
                    f"get({name!r}) revealed {got!r} after set({name!r}, {value!r})"
                )

        self._run(tmp_path, body)

    def test_ss1_initial_values_are_readable(self, tmp_path: Path) -> None:
        """Values the store was opened with come back exactly, any text included."""
        initial = {"api_key": SENTINEL, "unicode": "ünï\u00e7ødé ✓", "spaces": " a b "}

        async def body(store: SecretStore) -> None:
            for name, value in initial.items():
                secret = await store.get(name)
                assert isinstance(secret, Secret) and secret.reveal() == value

        self._run(tmp_path, body, initial)

    # SS2 -----------------------------------------------------------------------------

    def test_ss2_a_missing_name_raises_secret_not_found(self, tmp_path: Path) -> None:
        """``get`` of a name never set raises SecretNotFound, and the error names it."""

        async def body(store: SecretStore) -> None:
            with pytest.raises(SecretNotFound) as caught:
                await store.get("missing_name")
            assert "missing_name" in str(caught.value)

        self._run(tmp_path, body, {"present": "v"})

    # SS3 -----------------------------------------------------------------------------

    def test_ss3_names_lists_what_is_there_sorted(self, tmp_path: Path) -> None:
        """``names()`` is exactly the names present, in sorted order."""
        initial = {"b": "1", "A": "2", "a.c": "3", "a-b": "4", "_z": "5"}

        async def body(store: SecretStore) -> None:
            assert await store.names() == sorted(initial)

        self._run(tmp_path, body, initial)

    def test_ss3_names_follows_sets_and_deletes(self, tmp_path: Path) -> None:
        """Names appear when set and disappear when deleted."""
        self._need_writable()

        async def body(store: SecretStore) -> None:
            assert await store.names() == []
            for name in ("zeta", "alpha", "Mid"):
                await store.set(name, "v")
            assert await store.names() == ["Mid", "alpha", "zeta"]
            await store.delete("alpha")
            assert await store.names() == ["Mid", "zeta"]
            await store.set("zeta", "again")
            assert await store.names() == ["Mid", "zeta"]

        self._run(tmp_path, body)

    # SS4 -----------------------------------------------------------------------------

    def test_ss3_the_returned_list_is_the_callers(self, tmp_path: Path) -> None:
        """Clearing or extending the list ``names()`` returned changes nothing stored."""

        async def body(store: SecretStore) -> None:
            listed = await store.names()
            listed.clear()
            listed.append("intruder")
            again = await store.names()
            assert again == ["a", "b"], f"after changing a returned list, names() is {again}"

        self._run(tmp_path, body, {"a": "1", "b": "2"})

    def test_ss4_delete_reports_and_removes(self, tmp_path: Path) -> None:
        """``delete`` returns True then False, and ``get`` raises SecretNotFound after it."""
        self._need_writable()

        async def body(store: SecretStore) -> None:
            await store.set("k", "v")
            assert await store.delete("k") is True
            with pytest.raises(SecretNotFound):
                await store.get("k")
            assert await store.delete("k") is False
            assert await store.delete("never") is False

        self._run(tmp_path, body)

    # SS5 -----------------------------------------------------------------------------

    def test_ss5_invalid_names_are_refused(self, tmp_path: Path) -> None:
        """Names outside [A-Za-z0-9_.-]{1,128} raise InvalidSecretName from every method."""

        async def body(store: SecretStore) -> None:
            for name in INVALID_SECRET_NAMES:
                with pytest.raises(InvalidSecretName):
                    await store.get(name)
                if self.writable:
                    with pytest.raises(InvalidSecretName):
                        await store.set(name, "v")
                    with pytest.raises(InvalidSecretName):
                        await store.delete(name)
            assert await store.names() == ["ok"]

        self._run(tmp_path, body, {"ok": "v"})

    def test_ss5_the_longest_name_is_accepted(self, tmp_path: Path) -> None:
        """A name of 128 allowed characters is valid."""
        name = "N" * 64 + "n.-_0123" * 8

        async def body(store: SecretStore) -> None:
            assert (await store.get(name)).reveal() == "v"
            if self.writable:
                await store.set(name, "w")
                assert (await store.get(name)).reveal() == "w"

        self._run(tmp_path, body, {name: "v"})

    # SS6 -----------------------------------------------------------------------------

    def test_ss6_secrets_never_show_their_value(self, tmp_path: Path) -> None:
        """A Secret's repr, str, format, log line and serialized form show only the mask."""

        async def body(store: SecretStore) -> None:
            secret = await store.get("api_key")
            shown = [
                repr(secret),
                str(secret),
                f"{secret}",
                f"{secret!r}",
                f"{secret}",
                f"{secret:>40}",
                repr([secret]),
                repr({"k": secret}),
                json.dumps(serde.unstructure(secret)),
                logging.LogRecord(
                    "t", logging.INFO, "f", 1, "key=%s", (secret,), None
                ).getMessage(),
            ]
            for text in shown:
                assert SENTINEL not in text, f"the value leaked into {text!r}"
            assert MASK in str(secret)
            with pytest.raises(TypeError):
                pickle.dumps(secret)

        self._run(tmp_path, body, {"api_key": SENTINEL})

    def test_ss6_the_store_and_its_errors_never_show_values(self, tmp_path: Path) -> None:
        """The store's repr and every error it raises are free of stored and offered values."""

        async def body(store: SecretStore) -> None:
            texts = [repr(store), str(store)]
            await store.get("api_key")  # a store that caches what it read must not show it
            if self.writable:
                await store.set("offered", SENTINEL)
            texts += [repr(store), str(store)]
            failing: list[Callable[[], Awaitable[Any]]] = [
                lambda: store.get("missing"),
                lambda: store.get("bad name"),
                lambda: store.set("bad name", SENTINEL),
                lambda: store.delete("bad name"),
            ]
            if not self.writable:
                failing += [lambda: store.set("api_key", SENTINEL), lambda: store.delete("api_key")]
            for call in failing:
                with pytest.raises(SecretError) as caught:
                    await call()
                texts += [str(caught.value), repr(caught.value), repr(caught.value.args)]
            texts.append(repr(store))
            for text in texts:
                assert SENTINEL not in text, f"a secret value leaked into {text!r}"

        self._run(tmp_path, body, {"api_key": SENTINEL})

    def test_ss6_the_store_never_logs_values(self, tmp_path: Path) -> None:
        """No log record (any logger, any level) emitted while the store works holds a value."""

        class Collect(logging.Handler):
            def __init__(self) -> None:
                super().__init__(logging.DEBUG)
                self.texts: list[str] = []

            def emit(self, record: logging.LogRecord) -> None:
                self.texts.append(f"{record.getMessage()} {record.args!r} {record.__dict__!r}")

        async def body(store: SecretStore) -> None:
            collect = Collect()
            root = logging.getLogger()
            level = root.level
            root.addHandler(collect)
            root.setLevel(logging.DEBUG)
            try:
                await store.get("api_key")
                await store.names()
                if self.writable:
                    await store.set("other", SENTINEL)
                    await store.set("again", Secret(SENTINEL))
                    await store.get("other")
                    await store.delete("other")
                for name in ("missing", "bad name"):
                    with contextlib.suppress(SecretError):
                        await store.get(name)
            finally:
                root.removeHandler(collect)
                root.setLevel(level)
            for text in collect.texts:
                assert SENTINEL not in text, f"a secret value was logged: {text[:300]!r}"

        self._run(tmp_path, body, {"api_key": SENTINEL})

    # SS7 -----------------------------------------------------------------------------

    def test_ss7_values_survive_reopening(self, tmp_path: Path) -> None:
        """What was set (and not deleted) is there when the location is opened again."""
        if not self.durable:
            pytest.skip("the store declares durable = False")
        self._need_writable()

        trail = Trail()

        async def main() -> None:
            async with self.open_store(tmp_path / "secrets") as opened:
                store = cast(SecretStore, Recording(opened, trail, {"set": (1,)}))
                await store.set("kept", "value-1")
                await store.set("replaced", "old")
                await store.set("replaced", "new")
                await store.set("gone", "x")
                await store.delete("gone")
            async with self.open_store(tmp_path / "secrets") as opened:
                store = cast(SecretStore, Recording(opened, trail, {"set": (1,)}))
                assert await store.names() == ["kept", "replaced"]
                assert (await store.get("kept")).reveal() == "value-1"
                assert (await store.get("replaced")).reveal() == "new"

        with naming_invariant(SecretStore, current_test(), trail):
            asyncio.run(main())

    def test_ss7_the_last_change_before_closing_survives(self, tmp_path: Path) -> None:
        """A ``set`` or ``delete`` made just before closing is not lost in a buffer."""
        if not self.durable:
            pytest.skip("the store declares durable = False")
        self._need_writable()
        trail = Trail()

        async def main() -> None:
            for last in ("set", "delete"):
                location = tmp_path / f"secrets-{last}"
                async with self.open_store(location) as opened:
                    store = cast(SecretStore, Recording(opened, trail, {"set": (1,)}))
                    await store.set("first", "1")
                    await store.set("last", "2")
                    if last == "delete":
                        await store.delete("first")
                async with self.open_store(location) as opened:
                    store = cast(SecretStore, Recording(opened, trail, {"set": (1,)}))
                    want = ["last"] if last == "delete" else ["first", "last"]
                    got = await store.names()
                    assert got == want, (
                        f"after a {last} just before closing and reopening, names() is {got}; "
                        f"expected {want}"
                    )
                    assert (await store.get("last")).reveal() == "2", "the last set was lost"

        with naming_invariant(SecretStore, current_test(), trail):
            asyncio.run(main())

    # SS8 -----------------------------------------------------------------------------

    def test_ss8_every_method_raises_after_aclose(self, tmp_path: Path) -> None:
        """After ``aclose()`` each method raises UsageError; closing again is fine."""

        async def body(store: SecretStore) -> None:
            await store.aclose()
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: store.get("k"),
                lambda: store.set("k", "v"),
                lambda: store.delete("k"),
                store.names,
            ]
            for number, call in enumerate(calls):
                with pytest.raises(UsageError):
                    await call()
                    pytest.fail(f"call #{number} worked on a closed store")
            await store.aclose()
            await store.aclose()

        self._run(tmp_path, body, {"k": "v"})

    # SS9 -----------------------------------------------------------------------------

    def test_ss9_a_read_only_store_refuses_writes(self, tmp_path: Path) -> None:
        """``set`` and ``delete`` on a read-only store raise ReadOnlySecretStore, change nothing."""
        if self.writable:
            pytest.skip("the store declares writable = True")

        async def body(store: SecretStore) -> None:
            with pytest.raises(ReadOnlySecretStore):
                await store.set("k", "new")
            with pytest.raises(ReadOnlySecretStore):
                await store.set("other", "new")
            with pytest.raises(ReadOnlySecretStore):
                await store.delete("k")
            assert (await store.get("k")).reveal() == "v"
            assert await store.names() == ["k"]

        self._run(tmp_path, body, {"k": "v"})
