"""Secrets in the platform's keyring (macOS Keychain, Windows Credential Locker, Secret
Service, KWallet) through the ``keyring`` package.

Three rules keep this store safe to fall back from:

* Only real backends count. ``keyring`` silently picks a failing, a null, or (once
  ``keyrings.alt`` is installed) a plaintext-file backend when no real one exists; each of
  those is refused with ``SecretStoreUnavailable``. A chainer backend is replaced by the
  highest-priority real backend it chains, so a plaintext one behind it never sees a
  write; a chainer with no real backend is refused.
* Every operation runs in its own daemon thread and is abandoned after ``timeout_s``: a
  locked keyring may open a prompt nobody answers, or D-Bus may hang, on a headless
  machine. Daemon threads, because a hung call must not keep the interpreter alive.
* After its first failure (a timeout or any backend exception) keyring is disabled for
  the whole process, so that every later call fails at once instead of hanging again.
  Tests undo it with :func:`_reset_keyring_state`.

Keyring cannot list entries, so the store keeps the index of its names as a JSON list under
the reserved user name ``taskloom:index`` of its service (``:`` is outside the secret name
alphabet, so no secret can collide with it). A value is written before the index, so a
crash in between leaves a value that works but is not listed. A secret put into the
service by another tool is readable but not listed either.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
from keyring.backend import KeyringBackend

from taskloom.adapters.secrets._common import CONFIGURE_HINT, StoreLifecycle, secret_text
from taskloom.contracts import (
    InvalidSecretName,
    Secret,
    SecretNotFound,
    SecretStoreUnavailable,
    UsageError,
    check_secret_name,
)

T = TypeVar("T")

INDEX_USER = "taskloom:index"
"""The keyring user name under which each service keeps the JSON list of its names."""

DEFAULT_TIMEOUT_S = 3.0

_disabled_reason: str | None = None
"""Why keyring was disabled for this process, or None while it is usable."""

_index_lock = threading.Lock()
"""Serializes the read-modify-write of an index among every store of this process."""


def _reset_keyring_state() -> None:
    """Re-enable keyring after a failure disabled it. For tests only: in a real process a
    backend that failed once is not trusted again."""
    global _disabled_reason
    _disabled_reason = None


def _disable(reason: str) -> None:
    global _disabled_reason
    if _disabled_reason is None:
        _disabled_reason = reason


def keyring_disabled_reason() -> str | None:
    """Why keyring is disabled for this process, or None if it has not failed."""
    return _disabled_reason


def _unavailable(reason: str) -> SecretStoreUnavailable:
    return SecretStoreUnavailable(f"keyring is not usable: {reason}; {CONFIGURE_HINT}")


def _check_enabled() -> None:
    if _disabled_reason is not None:
        raise _unavailable(f"it was disabled for this process after {_disabled_reason}")


def _backend_name(backend: KeyringBackend) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def refusal(backend: KeyringBackend) -> str | None:
    """Why ``backend`` is not a real keyring, or None if it is one."""
    name = _backend_name(backend)
    if type(backend).__module__.startswith("keyrings.alt"):
        return f"{name} from keyrings.alt keeps secrets in a plain or weakly protected file"
    if isinstance(backend, keyring.backends.fail.Keyring):
        return "no keyring backend is installed or running"
    if isinstance(backend, keyring.backends.null.Keyring):
        return "the null keyring backend is configured, which stores nothing"
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        return "a chainer backend must be resolved to one of its real backends first"
    return None


def resolve_backend(backend: KeyringBackend) -> KeyringBackend:
    """The real backend to use for ``backend``: itself, or the best real one a chainer
    holds; ``SecretStoreUnavailable`` if there is none."""
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        try:
            chained: list[KeyringBackend] = list(getattr(backend, "backends", []))
        except Exception as exc:  # listing instantiates every installed backend
            raise _unavailable(
                f"the chainer backend could not list its backends ({type(exc).__name__})"
            ) from exc
        real = [b for b in chained if refusal(b) is None]
        if not real:
            raise _unavailable("the chainer backend holds no real keyring backend")
        return real[0]  # the chainer lists its backends by priority, highest first
    reason = refusal(backend)
    if reason is not None:
        raise _unavailable(reason)
    return backend


async def _in_thread(fn: Callable[[], T], timeout_s: float) -> T:
    """Run ``fn`` in a fresh daemon thread; TimeoutError after ``timeout_s``.

    Not ``asyncio.to_thread``: a hung call would hold a worker of the default executor,
    which ``asyncio.run`` joins at exit, so one stuck keyring would hang the application.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(error: Exception | None, result: T | None) -> None:
        if future.done():
            return  # the caller gave up waiting
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        error: Exception | None = None
        result: T | None = None
        try:
            result = fn()
        except Exception as exc:
            error = exc
        with suppress(RuntimeError):  # the loop closed while the call hung
            loop.call_soon_threadsafe(settle, error, result)

    threading.Thread(target=work, name="taskloom-keyring", daemon=True).start()
    return await asyncio.wait_for(future, timeout_s)


class KeyringSecretStore(StoreLifecycle):
    """Secrets kept in the platform keyring under one service name.

    ``backend`` defaults to the one ``keyring.get_keyring()`` chose; pass one to pin it.
    Construction raises ``SecretStoreUnavailable`` when that backend is not a real keyring
    or keyring was disabled by an earlier failure; :meth:`open` also probes the backend
    (with the timeout) and is what applications should call.
    """

    __slots__ = ("_backend", "_lock", "_service", "_timeout_s")

    durable = True
    """The platform keyring keeps values across processes (SS7)."""

    def __init__(
        self,
        service: str = "taskloom",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backend: KeyringBackend | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(service, str) or not service:
            raise UsageError("the keyring service name must be non-empty text")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise UsageError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        _check_enabled()
        if backend is None:
            try:
                backend = keyring.get_keyring()
            except Exception as exc:
                raise _unavailable(
                    f"keyring could not choose a backend ({type(exc).__name__})"
                ) from exc
        self._backend = resolve_backend(backend)
        self._service = service
        self._timeout_s = float(timeout_s)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        service: str = "taskloom",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backend: KeyringBackend | None = None,
    ) -> KeyringSecretStore:
        """Build a store and prove the backend answers by reading the index, each step
        under the timeout; ``SecretStoreUnavailable`` if keyring is not usable."""
        _check_enabled()

        def build() -> KeyringSecretStore:
            return cls(service, timeout_s=timeout_s, backend=backend)

        try:
            store = await _in_thread(build, timeout_s)
        except TimeoutError:
            reason = f"choosing a keyring backend took longer than {timeout_s:g} s"
            _disable(reason)
            raise _unavailable(reason) from None
        await store.names()
        return store

    def __repr__(self) -> str:
        return (
            f"KeyringSecretStore(service={self._service!r}, "
            f"backend={_backend_name(self._backend)!r})"
        )

    @property
    def service(self) -> str:
        """The keyring service name every entry of this store is filed under."""
        return self._service

    @property
    def backend(self) -> KeyringBackend:
        """The real keyring backend in use."""
        return self._backend

    async def _run(self, what: str, fn: Callable[[], T], *, value: str | None = None) -> T:
        """Run one operation's keyring calls under the timeout; disable keyring on failure."""
        self._check_open()
        _check_enabled()
        try:
            return await _in_thread(fn, self._timeout_s)
        except TimeoutError:
            reason = f"a keyring call ({what}) took longer than {self._timeout_s:g} s"
            _disable(reason)
            raise _unavailable(reason) from None
        except _IndexDamaged:
            raise  # our own finding about the data, not a failure of the backend
        except Exception as exc:
            reason = f"{_backend_name(self._backend)} failed on {what} ({type(exc).__name__})"
            _disable(reason)
            # A backend's message might quote the value it was given: drop the cause then.
            leaks = value is not None and value and (value in str(exc) or value in repr(exc))
            raise _unavailable(reason) from (None if leaks else exc)

    def _read_index(self) -> list[str]:
        raw = self._backend.get_password(self._service, INDEX_USER)
        if raw is None:
            return []
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if not isinstance(names, list):
            raise _IndexDamaged
        return [n for n in names if isinstance(n, str) and _valid(n)]

    def _write_index(self, names: list[str]) -> None:
        self._backend.set_password(self._service, INDEX_USER, json.dumps(sorted(set(names))))

    def _index_damaged(self) -> SecretStoreUnavailable:
        return SecretStoreUnavailable(
            f"the keyring index of service {self._service!r} is damaged: remove it with "
            f"`keyring del {self._service} {INDEX_USER}` and set the secrets again"
        )

    async def get(self, name: str, /) -> Secret:
        """The secret of that name; ``SecretNotFound`` if the keyring has none."""
        check_secret_name(name)
        raw = await self._run("get", lambda: self._backend.get_password(self._service, name))
        if raw is None:
            raise SecretNotFound(
                f"secret {name!r} not found in the keyring service {self._service!r}: "
                f"set it with `taskloom secrets set {name}`",
                name=name,
            )
        return Secret(raw)

    async def set(self, name: str, value: str | Secret, /) -> None:
        """Store the value (replacing any earlier one) and list the name in the index."""
        check_secret_name(name)
        text = secret_text(value)

        def work() -> None:
            self._backend.set_password(self._service, name, text)
            with _index_lock:
                names = self._read_index()
                if name not in names:
                    self._write_index([*names, name])

        async with self._lock:
            try:
                await self._run("set", work, value=text)
            except _IndexDamaged:
                raise self._index_damaged() from None

    async def delete(self, name: str, /) -> bool:
        """Remove the secret and its index entry; True if the keyring held it."""
        check_secret_name(name)

        def work() -> bool:
            existed = self._backend.get_password(self._service, name) is not None
            if existed:
                self._backend.delete_password(self._service, name)
            with _index_lock:
                names = self._read_index()
                if name in names:
                    self._write_index([n for n in names if n != name])
            return existed

        async with self._lock:
            try:
                return await self._run("delete", work)
            except _IndexDamaged:
                raise self._index_damaged() from None

    async def names(self) -> list[str]:
        """The names in this service's index, sorted."""
        try:
            return sorted(await self._run("names", self._read_index))
        except _IndexDamaged:
            raise self._index_damaged() from None


class _IndexDamaged(Exception):
    """Internal signal: the index entry is not a JSON list (not a backend failure)."""


def _valid(name: str) -> bool:
    try:
        check_secret_name(name)
    except InvalidSecretName:
        return False
    return True
