"""Secret stores: the behaviour every store shares, the keyring store with fake backends,
the chain, and ``open_default_secret_store``.

Keyring backends here are fakes: an in-memory one (the stand-in for a platform keyring),
one that hangs, one that fails, one that claims to come from ``keyrings.alt``. Their
``priority`` raises, as keyring's docs prescribe for a backend unsuitable here, so that
keyring never picks one of them by itself for another test of this process.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import keyring.core
import keyring.errors
import pytest
from keyring.backend import KeyringBackend
from keyring.compat import properties

from taskloom.adapters.secrets import (
    ChainSecretStore,
    EncryptedFileSecretStore,
    EnvSecretStore,
    KeyringSecretStore,
    open_default_secret_store,
)
from taskloom.adapters.secrets import _keyring as _secrets_keyring
from taskloom.contracts import (
    InvalidSecretName,
    ReadOnlySecretStore,
    Secret,
    SecretNotFound,
    SecretStore,
    SecretStoreUnavailable,
    UsageError,
)
from taskloom.contracts.testing import SecretStoreConformance

FAST_SCRYPT_N = 2**10
VALUE = "sk-live-0123456789abcdefXYZ"
OTHER = "pa$$w0rd with spaces and ünïcode"
TIMEOUT_S = 0.5


class MemoryKeyring(KeyringBackend):
    """A stand-in for a platform keyring: entries in a dict, calls counted."""

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("test-only backend: never chosen by keyring itself")

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}
        self.calls = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.calls += 1
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.calls += 1
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.calls += 1
        if (service, username) not in self.entries:
            raise keyring.errors.PasswordDeleteError("not found")
        del self.entries[(service, username)]


class HangingKeyring(MemoryKeyring):
    """A keyring whose calls block (a locked keyring prompting nobody) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def get_password(self, service: str, username: str) -> str | None:
        self.release.wait(30)
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self.release.wait(30)
        super().set_password(service, username, password)


class FailingKeyring(MemoryKeyring):
    """A keyring whose every call fails the way a locked one does; it echoes the value."""

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("the collection is locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError(f"refused to store {password!r}")


class PlaintextAltKeyring(MemoryKeyring):
    """Claims to come from keyrings.alt, as its plaintext file backend does."""

    __module__ = "keyrings.alt.file"


@pytest.fixture(autouse=True)
def keyring_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    """Each test starts with keyring enabled and a fresh in-memory backend as the default."""
    backend = MemoryKeyring()
    monkeypatch.setattr(keyring.core, "_keyring_backend", backend)
    _secrets_keyring._reset_keyring_state()
    yield backend
    _secrets_keyring._reset_keyring_state()


@pytest.fixture
def hanging() -> Iterator[HangingKeyring]:
    """A hanging backend whose blocked threads are released when the test ends."""
    backend = HangingKeyring()
    yield backend
    backend.release.set()


# --- behaviour every writable store shares (SS1-SS8) -------------------------------------

KINDS = ("file", "keyring", "chain")


def _factory(kind: str, tmp_path: Path, backend: MemoryKeyring) -> Callable[[], SecretStore]:
    path = tmp_path / "secrets.bin"
    if kind == "file":
        return lambda: EncryptedFileSecretStore(path, "correct horse", scrypt_n=FAST_SCRYPT_N)
    if kind == "keyring":
        return lambda: KeyringSecretStore("taskloom-test", timeout_s=5, backend=backend)
    return lambda: ChainSecretStore(
        [
            EnvSecretStore(environ={}),
            EncryptedFileSecretStore(path, "correct horse", scrypt_n=FAST_SCRYPT_N),
        ]
    )


@pytest.fixture(params=KINDS)
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, keyring_state: MemoryKeyring
) -> Callable[[], SecretStore]:
    """A factory of stores of one kind, all on the same location."""
    return _factory(request.param, tmp_path, keyring_state)


@pytest.fixture
async def store(make_store: Callable[[], SecretStore]) -> AsyncIterator[SecretStore]:
    """One open store of the parametrized kind."""
    opened = make_store()
    yield opened
    await opened.aclose()


async def test_ss1_get_returns_the_value_set_and_set_replaces(store: SecretStore) -> None:
    """SS1: get after set reveals the value set; a second set replaces it."""
    await store.set("api_key", VALUE)
    assert (await store.get("api_key")).reveal() == VALUE
    await store.set("api_key", Secret(OTHER))
    got = await store.get("api_key")
    assert isinstance(got, Secret)
    assert got.reveal() == OTHER


async def test_ss1_values_of_any_text_round_trip(store: SecretStore) -> None:
    """SS1: empty, multi-line, quote-laden and non-BMP values come back unchanged."""
    values = {"empty": "", "lines": "a\nb\r\n", "quotes": "\"'\\", "emoji": "🔑 clé"}
    for name, value in values.items():
        await store.set(name, value)
    for name, value in values.items():
        assert (await store.get(name)).reveal() == value


async def test_ss2_missing_name_raises_secret_not_found_naming_it(store: SecretStore) -> None:
    """SS2: get of a missing name raises SecretNotFound whose name and message name it."""
    with pytest.raises(SecretNotFound) as info:
        await store.get("nope.not-here")
    assert info.value.name == "nope.not-here"
    assert "nope.not-here" in str(info.value)


async def test_ss3_names_are_exactly_those_set_and_not_deleted(store: SecretStore) -> None:
    """SS3: names() lists what was set and not deleted, sorted, each once."""
    assert await store.names() == []
    for name in ("b", "a", "c.d", "b", "Z-1"):
        await store.set(name, VALUE)
    await store.delete("c.d")
    assert await store.names() == ["Z-1", "a", "b"]


async def test_ss4_delete_reports_whether_the_name_existed(store: SecretStore) -> None:
    """SS4: delete returns True then False, and get raises SecretNotFound afterwards."""
    await store.set("gone", VALUE)
    assert await store.delete("gone") is True
    assert await store.delete("gone") is False
    assert await store.delete("never") is False
    with pytest.raises(SecretNotFound):
        await store.get("gone")


@pytest.mark.parametrize("bad", ["", "a b", "x/y", "../etc", "n" * 129, "é", "a:b", "\x00"])
async def test_ss5_invalid_names_are_refused(store: SecretStore, bad: str) -> None:
    """SS5: names outside [A-Za-z0-9_.-]{1,128} raise InvalidSecretName from every method."""
    with pytest.raises(InvalidSecretName):
        await store.get(bad)
    with pytest.raises(InvalidSecretName):
        await store.set(bad, VALUE)
    with pytest.raises(InvalidSecretName):
        await store.delete(bad)
    assert await store.names() == []


async def test_ss6_values_never_show_in_repr_or_errors(store: SecretStore) -> None:
    """SS6: neither the store's repr nor any error it raises holds a value set."""
    await store.set("api_key", VALUE)
    texts = [repr(store), str(store), repr(await store.get("api_key"))]
    for call in (
        store.get("missing"),
        store.set("bad name", VALUE),
        store.set("ok", 12345),  # type: ignore[arg-type]
        store.set("ok", VALUE.encode()),  # type: ignore[arg-type]
    ):
        with pytest.raises((SecretNotFound, InvalidSecretName, UsageError)) as info:
            await call
        texts += [str(info.value), repr(info.value)]
    assert not [t for t in texts if VALUE in t or "12345" in t]


async def test_ss7_a_value_set_is_seen_by_a_new_store(
    make_store: Callable[[], SecretStore],
) -> None:
    """SS7: a new store on the same location returns the value the first one set."""
    first = make_store()
    await first.set("durable", VALUE)
    await first.aclose()
    second = make_store()
    assert (await second.get("durable")).reveal() == VALUE
    assert await second.names() == ["durable"]
    await second.aclose()


async def test_ss8_calls_after_aclose_raise_usage_error(store: SecretStore) -> None:
    """SS8: after aclose every method raises UsageError, and aclose can be called again."""
    await store.aclose()
    await store.aclose()
    for call in (store.get("a"), store.set("a", VALUE), store.delete("a"), store.names()):
        with pytest.raises(UsageError):
            await call


async def test_stores_are_async_context_managers(make_store: Callable[[], SecretStore]) -> None:
    """`async with` closes the store on exit."""
    async with make_store() as opened:  # type: ignore[attr-defined]
        await opened.set("a", VALUE)
    with pytest.raises(UsageError):
        await opened.get("a")


async def test_concurrent_sets_all_land(store: SecretStore) -> None:
    """Many sets at once lose nothing: every name is listed and readable afterwards."""
    names = [f"k{i:02d}" for i in range(20)]
    await asyncio.gather(*(store.set(n, f"value-{n}") for n in names))
    assert await store.names() == names
    for n in names:
        assert (await store.get(n)).reveal() == f"value-{n}"


# --- keyring -------------------------------------------------------------------------------


async def test_keyring_stores_values_under_its_service_and_an_index(
    keyring_state: MemoryKeyring,
) -> None:
    """Values sit under (service, name) and the names as a JSON list under the index entry."""
    store = KeyringSecretStore("svc", backend=keyring_state)
    await store.set("b", "vb")
    await store.set("a", "va")
    assert keyring_state.entries[("svc", "a")] == "va"
    index = keyring_state.entries[("svc", _secrets_keyring.INDEX_USER)]
    assert json.loads(index) == ["a", "b"]
    other = KeyringSecretStore("another", backend=keyring_state)
    assert await other.names() == []


async def test_keyring_uses_keyrings_default_backend(keyring_state: MemoryKeyring) -> None:
    """Without a backend argument the store uses the one keyring.get_keyring() returns."""
    store = KeyringSecretStore()
    assert store.backend is keyring_state
    await store.set("x", VALUE)
    assert keyring_state.entries[("taskloom", "x")] == VALUE


@pytest.mark.parametrize(
    "backend",
    [keyring.backends.fail.Keyring(), keyring.backends.null.Keyring(), PlaintextAltKeyring()],
    ids=["fail", "null", "keyrings.alt"],
)
def test_keyring_refuses_backends_that_are_not_real(backend: KeyringBackend) -> None:
    """The failing, null and keyrings.alt backends are refused with a one-line how-to."""
    with pytest.raises(SecretStoreUnavailable) as info:
        KeyringSecretStore(backend=backend)
    message = str(info.value)
    assert "\n" not in message
    assert "TASKLOOM_SECRETS_PASSPHRASE" in message


def test_keyring_refuses_the_default_plaintext_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyrings.alt backend that keyring chose by itself is refused too."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", PlaintextAltKeyring())
    with pytest.raises(SecretStoreUnavailable, match=r"keyrings\.alt"):
        KeyringSecretStore()


def test_keyring_refuses_a_chainer_without_a_real_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chainer holding only plaintext backends is refused."""
    chainer_cls = keyring.backends.chainer.ChainerBackend
    monkeypatch.setattr(chainer_cls, "backends", [PlaintextAltKeyring()])
    with pytest.raises(SecretStoreUnavailable, match="no real keyring backend"):
        KeyringSecretStore(backend=chainer_cls())


def test_keyring_chainer_that_cannot_list_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chainer whose backend discovery raises is SecretStoreUnavailable, cause kept."""

    def broken(self: object) -> list[KeyringBackend]:
        raise ImportError("a keyring plugin failed to import")

    chainer_cls = keyring.backends.chainer.ChainerBackend
    monkeypatch.setattr(chainer_cls, "backends", property(broken))
    with pytest.raises(SecretStoreUnavailable, match="could not list") as info:
        KeyringSecretStore(backend=chainer_cls())
    assert isinstance(info.value.__cause__, ImportError)


async def test_keyring_chainer_resolves_to_its_real_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a chainer, writes go to the best real backend, never to a plaintext one."""
    plaintext, real = PlaintextAltKeyring(), MemoryKeyring()
    chainer_cls = keyring.backends.chainer.ChainerBackend
    monkeypatch.setattr(chainer_cls, "backends", [plaintext, real])
    store = KeyringSecretStore(backend=chainer_cls())
    assert store.backend is real
    await store.set("k", VALUE)
    assert ("taskloom", "k") in real.entries
    assert plaintext.entries == {}


async def test_keyring_hanging_call_times_out_and_disables_keyring(
    hanging: HangingKeyring, keyring_state: MemoryKeyring
) -> None:
    """A call past the timeout raises SecretStoreUnavailable, and keyring stays disabled:
    a later store fails at once without calling any backend."""
    store = KeyringSecretStore(timeout_s=TIMEOUT_S, backend=hanging)
    with pytest.raises(SecretStoreUnavailable, match="took longer than") as info:
        await store.get("k")
    assert "\n" not in str(info.value)
    assert _secrets_keyring.keyring_disabled_reason() is not None
    with pytest.raises(SecretStoreUnavailable, match="disabled for this process"):
        await store.names()
    with pytest.raises(SecretStoreUnavailable, match="disabled for this process"):
        KeyringSecretStore(backend=keyring_state)
    assert keyring_state.calls == 0
    _secrets_keyring._reset_keyring_state()
    assert await KeyringSecretStore(backend=keyring_state).names() == []


async def test_keyring_backend_error_is_translated_and_disables_keyring(
    keyring_state: MemoryKeyring,
) -> None:
    """A backend exception becomes SecretStoreUnavailable (cause kept), then keyring is off."""
    store = KeyringSecretStore(backend=FailingKeyring())
    with pytest.raises(SecretStoreUnavailable) as info:
        await store.get("k")
    assert isinstance(info.value.__cause__, keyring.errors.KeyringLocked)
    with pytest.raises(SecretStoreUnavailable, match="disabled"):
        await KeyringSecretStore(backend=keyring_state).get("k")


def _keyring_error_classes() -> list[type[Exception]]:
    classes: list[type[Exception]] = []
    pending: list[type[Exception]] = [keyring.errors.KeyringError]
    while pending:
        cls = pending.pop()
        classes.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(classes, key=lambda c: c.__name__)


class _RaisingKeyring(MemoryKeyring):
    """A backend whose calls raise the exception it was given."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error

    def set_password(self, service: str, username: str, password: str) -> None:
        raise self.error

    def delete_password(self, service: str, username: str) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error_cls",
    [*_keyring_error_classes(), OSError, RuntimeError, ValueError, LookupError],
    ids=lambda c: c.__name__,
)
async def test_every_backend_exception_becomes_secret_store_unavailable(
    error_cls: type[Exception],
) -> None:
    """Each keyring error class, and the OS or D-Bus errors a backend may let through,
    reach the caller only as SecretStoreUnavailable, from every method."""
    error = error_cls.__new__(error_cls)
    error.args = ("backend says no",)
    for method in ("get", "set", "delete", "names"):
        _secrets_keyring._reset_keyring_state()
        store = KeyringSecretStore(backend=_RaisingKeyring(error))
        call = getattr(store, method)
        args = ("k", VALUE) if method == "set" else ("k",) if method != "names" else ()
        with pytest.raises(SecretStoreUnavailable) as info:
            await call(*args)
        assert info.value.__cause__ is error
        assert error_cls.__name__ in str(info.value)


async def test_keyring_error_quoting_the_value_drops_the_cause() -> None:
    """When the backend's own message quotes the value, the cause is dropped with it."""
    store = KeyringSecretStore(backend=FailingKeyring())
    with pytest.raises(SecretStoreUnavailable) as info:
        await store.set("k", VALUE)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert VALUE not in str(info.value)


async def test_keyring_damaged_index_is_reported_without_disabling(
    keyring_state: MemoryKeyring,
) -> None:
    """An index that is not a JSON list raises SecretStoreUnavailable saying how to fix it;
    the backend did not fail, so keyring stays enabled."""
    keyring_state.entries[("taskloom", _secrets_keyring.INDEX_USER)] = "{not json"
    store = KeyringSecretStore(backend=keyring_state)
    with pytest.raises(SecretStoreUnavailable, match="keyring del taskloom taskloom:index"):
        await store.names()
    assert _secrets_keyring.keyring_disabled_reason() is None
    keyring_state.entries[("taskloom", "x")] = "v"
    assert (await store.get("x")).reveal() == "v"


async def test_keyring_open_probes_the_backend(hanging: HangingKeyring) -> None:
    """KeyringSecretStore.open fails (and disables keyring) when the backend hangs."""
    with pytest.raises(SecretStoreUnavailable):
        await KeyringSecretStore.open(timeout_s=TIMEOUT_S, backend=hanging)
    assert _secrets_keyring.keyring_disabled_reason() is not None


@pytest.mark.parametrize("timeout", [0, -1, True, "3"])
def test_keyring_timeout_must_be_positive(timeout: Any) -> None:
    """A timeout that is not a positive number is a UsageError."""
    with pytest.raises(UsageError):
        KeyringSecretStore(timeout_s=timeout)


# --- chain ---------------------------------------------------------------------------------


def _file_store(tmp_path: Path) -> EncryptedFileSecretStore:
    return EncryptedFileSecretStore(tmp_path / "s.bin", "pw", scrypt_n=FAST_SCRYPT_N)


async def test_chain_reads_in_order_and_writes_to_the_first_writable(tmp_path: Path) -> None:
    """An environment variable shadows the file; set and delete reach the file."""
    env = EnvSecretStore(environ={"TASKLOOM_SECRET_SHARED": "from-env"})
    file_store = _file_store(tmp_path)
    chain = ChainSecretStore([env, file_store])
    await chain.set("shared", "from-file")
    await chain.set("only_file", "f")
    assert (await chain.get("shared")).reveal() == "from-env"
    assert (await file_store.get("shared")).reveal() == "from-file"
    assert await chain.names() == ["only_file", "shared"]
    assert await chain.delete("only_file") is True
    assert await chain.names() == ["shared"]


async def test_chain_of_read_only_stores_refuses_writes() -> None:
    """With no writable store, set and delete raise ReadOnlySecretStore."""
    chain = ChainSecretStore([EnvSecretStore(environ={}), EnvSecretStore("X_", environ={})])
    with pytest.raises(ReadOnlySecretStore):
        await chain.set("a", VALUE)
    with pytest.raises(ReadOnlySecretStore):
        await chain.delete("a")


async def test_chain_does_not_skip_an_unavailable_store(
    tmp_path: Path, hanging: HangingKeyring
) -> None:
    """A store that fails is an error of the chain, never silently passed over."""
    chain = ChainSecretStore(
        [KeyringSecretStore(timeout_s=TIMEOUT_S, backend=hanging), _file_store(tmp_path)]
    )
    with pytest.raises(SecretStoreUnavailable):
        await chain.get("a")


async def test_chain_closes_every_store(tmp_path: Path) -> None:
    """aclose of the chain closes each of its stores."""
    stores = [EnvSecretStore(environ={}), _file_store(tmp_path)]
    chain = ChainSecretStore(stores)
    await chain.aclose()
    for inner in stores:
        with pytest.raises(UsageError):
            await inner.names()


def test_chain_needs_a_store() -> None:
    """An empty chain is a UsageError."""
    with pytest.raises(UsageError):
        ChainSecretStore([])


# --- open_default_secret_store ---------------------------------------------------------


async def test_default_store_is_env_then_keyring(
    tmp_path: Path, keyring_state: MemoryKeyring
) -> None:
    """With a real keyring the default is the environment, then the keyring."""
    environ = {"TASKLOOM_SECRET_FROM_ENV": "e"}
    store = await open_default_secret_store(path=tmp_path / "s.bin", environ=environ)
    kinds = [type(s) for s in store.stores]
    assert kinds == [EnvSecretStore, KeyringSecretStore]
    await store.set("k", VALUE)
    assert keyring_state.entries[("taskloom", "k")] == VALUE
    assert await store.names() == ["from_env", "k"]
    assert not (tmp_path / "s.bin").exists()


@pytest.mark.parametrize(
    "backend",
    [keyring.backends.fail.Keyring(), PlaintextAltKeyring()],
    ids=["no-keyring", "keyrings.alt"],
)
async def test_default_store_falls_back_to_the_encrypted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: KeyringBackend
) -> None:
    """Without a real keyring but with a passphrase, the encrypted file stores secrets."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", backend)
    environ = {"TASKLOOM_SECRETS_PASSPHRASE": "hunter2-long-passphrase"}
    path = tmp_path / "s.bin"
    store = await open_default_secret_store(path=path, environ=environ)
    assert [type(s) for s in store.stores] == [EnvSecretStore, EncryptedFileSecretStore]
    await store.set("k", VALUE)
    assert path.exists()
    assert VALUE.encode() not in path.read_bytes()


async def test_default_store_falls_back_when_keyring_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hanging: HangingKeyring
) -> None:
    """A keyring that does not answer in time is passed over for the encrypted file."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", hanging)
    store = await open_default_secret_store(
        path=tmp_path / "s.bin",
        environ={"TASKLOOM_SECRETS_PASSPHRASE": "pw"},
        timeout_s=TIMEOUT_S,
    )
    assert isinstance(store.stores[1], EncryptedFileSecretStore)


@pytest.mark.parametrize(
    "backend",
    [keyring.backends.fail.Keyring(), keyring.backends.null.Keyring(), PlaintextAltKeyring()],
    ids=["no-keyring", "null", "keyrings.alt"],
)
async def test_default_store_fails_closed_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: KeyringBackend
) -> None:
    """No real keyring and no passphrase: the environment still counts, and a secret it does
    not hold (or a write) is SecretStoreUnavailable in one line saying how to configure a
    store, with no chained traceback, and no plaintext file written."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", backend)
    monkeypatch.delenv("TASKLOOM_SECRETS_PASSPHRASE", raising=False)
    path = tmp_path / "s.bin"
    store = await open_default_secret_store(
        path=path, environ={"TASKLOOM_SECRETS_PASSPHRASE": "", "TASKLOOM_SECRET_FROM_ENV": "v"}
    )
    assert (await store.get("from_env")).reveal() == "v"
    with pytest.raises(SecretStoreUnavailable):
        await store.set("api_token", "value")
    with pytest.raises(SecretStoreUnavailable) as info:
        await store.get("api_token")
    await store.aclose()
    message = str(info.value)
    assert "\n" not in message
    assert "set TASKLOOM_SECRETS_PASSPHRASE" in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert list(tmp_path.iterdir()) == []
    if isinstance(backend, PlaintextAltKeyring):
        assert backend.entries == {}


# --- the conformance suite -------------------------------------------------------------


@asynccontextmanager
async def _preloaded(store: SecretStore, initial: Mapping[str, str] | None) -> AsyncIterator[Any]:
    """Yield ``store`` holding ``initial`` (written through it), and close it afterwards."""
    try:
        for name, value in (initial or {}).items():
            await store.set(name, value)
        yield store
    finally:
        await store.aclose()


class TestEncryptedFileConformance(SecretStoreConformance):
    """EncryptedFileSecretStore passes SecretStoreConformance (light scrypt cost)."""

    durable = True
    writable = True

    def open_store(
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[SecretStore]:
        store = EncryptedFileSecretStore(location, "conformance", scrypt_n=FAST_SCRYPT_N)
        return _preloaded(store, initial)


class TestKeyringConformance(SecretStoreConformance):
    """KeyringSecretStore over an in-memory keyring backend passes SecretStoreConformance;
    each location is its own service in one shared backend, so reopening sees its data."""

    durable = True
    writable = True
    backend = MemoryKeyring()

    def open_store(
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[SecretStore]:
        store = KeyringSecretStore(f"taskloom-test:{location}", backend=self.backend)
        return _preloaded(store, initial)


class TestChainConformance(SecretStoreConformance):
    """A chain of an empty environment store and an encrypted file passes the suite."""

    durable = True
    writable = True

    def open_store(
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[SecretStore]:
        file_store = EncryptedFileSecretStore(location, "conformance", scrypt_n=FAST_SCRYPT_N)
        return _preloaded(ChainSecretStore([EnvSecretStore(environ={}), file_store]), initial)


class TestEnvConformance(SecretStoreConformance):
    """EnvSecretStore passes the suite as a read-only, non-durable store; the values it is
    opened with are placed in its environ mapping."""

    durable = False
    writable = False

    @asynccontextmanager
    async def open_store(  # type: ignore[override]
        self, location: Path, initial: Mapping[str, str] | None = None
    ) -> AsyncIterator[SecretStore]:
        environ: dict[str, str] = {}
        async with EnvSecretStore(environ=environ) as store:
            # the variable each name's one accepted spelling reads ('A' and 'a' share one)
            environ.update(
                {
                    store.variable_name(n.lower().replace(".", "_").replace("-", "_")): v
                    for n, v in (initial or {}).items()
                }
            )
            yield store

    def test_ss3_names_lists_what_is_there_sorted(self, tmp_path: Path) -> None:
        """SS3 as the environment can hold it: variable names are upper-case and have no
        '.' or '-', so names() lists each secret in its canonical form (lower-case, '_');
        the suite's own version expects mixed-case names back, which no environment keeps."""
        initial = {"b": "1", "A": "2", "a.c": "3", "a-b": "4", "_z": "5"}

        async def body(store: SecretStore) -> None:
            assert await store.names() == ["_z", "a", "a_b", "a_c", "b"]
            for name in await store.names():
                assert (await store.get(name)).reveal() in initial.values()

        self._run(tmp_path, body, initial)

    def test_ss5_the_longest_name_is_accepted(self, tmp_path: Path) -> None:
        """SS5 as the environment can hold it: the longest name in its one spelling (lower
        case, '_'); other spellings of the same variable are refused, never read."""
        name = "n" * 64 + "n___0123" * 8

        async def body(store: SecretStore) -> None:
            assert (await store.get(name)).reveal() == "v"
            with pytest.raises(InvalidSecretName):
                await store.get(name.upper())

        self._run(tmp_path, body, {name: "v"})
