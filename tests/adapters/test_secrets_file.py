"""EncryptedFileSecretStore: the file format, wrong passphrases, damage, atomic 0600 writes."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskloom.adapters.secrets import EncryptedFileSecretStore
from taskloom.adapters.secrets import _file as _secrets_file
from taskloom.contracts import (
    Secret,
    SecretDecryptionFailed,
    SecretNotFound,
    SecretStoreUnavailable,
    UsageError,
)

N = 2**10
PASSPHRASE = "correct horse battery staple"
VALUE = "sk-live-0123456789abcdefXYZ"


def _store(path: Path, passphrase: str | Secret = PASSPHRASE) -> EncryptedFileSecretStore:
    return EncryptedFileSecretStore(path, passphrase, scrypt_n=N)


async def _written(path: Path) -> bytes:
    store = _store(path)
    await store.set("openai_api_key", VALUE)
    await store.set("other", "second value")
    await store.aclose()
    return path.read_bytes()


async def test_file_holds_neither_names_nor_values_in_clear(tmp_path: Path) -> None:
    """The whole name→value map is encrypted: no name, value or passphrase in the bytes."""
    blob = await _written(tmp_path / "s.bin")
    for text in (VALUE, "openai_api_key", "second value", PASSPHRASE):
        assert text.encode() not in blob
    assert blob.startswith(_secrets_file.MAGIC)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
async def test_file_is_created_0600_and_no_temp_file_remains(tmp_path: Path) -> None:
    """The secret file is readable by its owner only; the atomic write leaves no temp file."""
    path = tmp_path / "deeper" / "s.bin"
    await _written(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


async def test_each_write_uses_a_fresh_nonce_and_keeps_the_salt(tmp_path: Path) -> None:
    """Rewriting the same content gives new ciphertext (new nonce) under the same salt."""
    path = tmp_path / "s.bin"
    store = _store(path)
    await store.set("a", VALUE)
    first = path.read_bytes()
    await store.set("a", VALUE)
    second = path.read_bytes()
    header = _secrets_file._HEADER.size
    assert first[:header] == second[:header]
    assert first[header:] != second[header:]


async def test_wrong_passphrase_is_clear_and_leaves_the_file_untouched(tmp_path: Path) -> None:
    """A wrong passphrase raises SecretDecryptionFailed saying so, from every method, and
    the file's bytes are unchanged (a write never happens with a key that cannot read)."""
    path = tmp_path / "s.bin"
    before = await _written(path)
    wrong = _store(path, "not the passphrase")
    for call in (wrong.get("other"), wrong.names(), wrong.set("x", "y"), wrong.delete("other")):
        with pytest.raises(SecretDecryptionFailed) as info:
            await call
        message = str(info.value)
        assert "wrong passphrase" in message
        assert str(path) in message
        assert "not the passphrase" not in message and VALUE not in message
    assert path.read_bytes() == before


async def test_the_right_passphrase_still_works_after_a_wrong_one(tmp_path: Path) -> None:
    """A failed attempt with a wrong passphrase does not spoil the file for the right one."""
    path = tmp_path / "s.bin"
    await _written(path)
    with pytest.raises(SecretDecryptionFailed):
        await _store(path, "wrong").set("x", "y")
    assert (await _store(path).get("openai_api_key")).reveal() == VALUE


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_refused_and_changes_nothing(
    tmp_path: Path, data: st.DataObject
) -> None:
    """Changing any one byte of the file makes every read fail with SecretDecryptionFailed
    naming the file, and a set then leaves the damaged bytes as they were."""
    path = tmp_path / "s.bin"
    if not path.exists():
        asyncio.run(_written(path))
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    delta = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(original)
    damaged[position] ^= delta
    if position == 9:  # the cost byte: stay clear of 2**17..2**20, slow and memory-hungry
        damaged[9] = data.draw(st.sampled_from([0, 9, 11, 12, 16, 21, 255]), label="cost")
    path.write_bytes(bytes(damaged))

    async def body() -> None:
        store = _store(path)
        for call in (store.get("other"), store.names(), store.set("x", "y")):
            with pytest.raises(SecretDecryptionFailed) as info:
                await call
            assert str(path) in str(info.value)
            assert VALUE not in str(info.value)

    try:
        asyncio.run(body())
        assert path.read_bytes() == bytes(damaged)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("cut", [0, 1, 8, 20, 50, -1])
async def test_truncated_file_is_reported_as_damaged(tmp_path: Path, cut: int) -> None:
    """A cut-off file raises SecretDecryptionFailed that says it is damaged and names it."""
    path = tmp_path / "s.bin"
    blob = await _written(path)
    path.write_bytes(blob[:cut])
    with pytest.raises(SecretDecryptionFailed, match="damaged") as info:
        await _store(path).names()
    assert str(path) in str(info.value)


async def test_foreign_and_future_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    """A file that is not ours, or of a newer format version, is refused saying which."""
    path = tmp_path / "s.bin"
    blob = await _written(path)
    path.write_bytes(b"PK\x03\x04" + blob[4:])
    with pytest.raises(SecretDecryptionFailed, match="not a taskloom secret file"):
        await _store(path).names()
    path.write_bytes(blob[:8] + bytes([2]) + blob[9:])
    with pytest.raises(SecretDecryptionFailed, match="upgrade taskloom"):
        await _store(path).names()
    path.write_bytes(blob[:9] + bytes([40]) + blob[10:])
    with pytest.raises(SecretDecryptionFailed, match="out of range"):
        await _store(path).names()


async def test_the_file_records_its_cost_and_is_read_with_it(tmp_path: Path) -> None:
    """The scrypt cost is in the header: a store built with another cost still reads it,
    and the default cost is 2**15."""
    path = tmp_path / "s.bin"
    await _written(path)
    assert path.read_bytes()[9] == 10
    reader = EncryptedFileSecretStore(path, PASSPHRASE)  # default cost
    assert (await reader.get("openai_api_key")).reveal() == VALUE
    fresh = EncryptedFileSecretStore(tmp_path / "default.bin", Secret(PASSPHRASE))
    await fresh.set("a", "b")
    assert (tmp_path / "default.bin").read_bytes()[9] == 15


async def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    """Each call reads the file afresh, so writes by another store (or process) are seen
    and not overwritten."""
    path = tmp_path / "s.bin"
    one, two = _store(path), _store(path)
    await one.set("a", "1")
    await two.set("b", "2")
    await one.set("c", "3")
    assert await two.names() == ["a", "b", "c"]
    assert await one.delete("b") is True
    with pytest.raises(SecretNotFound):
        await two.get("b")


def test_from_env_reads_the_passphrase_variable(tmp_path: Path) -> None:
    """from_env takes TASKLOOM_SECRETS_PASSPHRASE and refuses to open without it, naming it."""
    path = tmp_path / "s.bin"
    store = EncryptedFileSecretStore.from_env(
        path, environ={"TASKLOOM_SECRETS_PASSPHRASE": PASSPHRASE}, scrypt_n=N
    )
    asyncio.run(store.set("a", VALUE))
    assert asyncio.run(_store(path).get("a")).reveal() == VALUE
    for environ in ({}, {"TASKLOOM_SECRETS_PASSPHRASE": ""}):
        with pytest.raises(SecretStoreUnavailable, match="TASKLOOM_SECRETS_PASSPHRASE"):
            EncryptedFileSecretStore.from_env(path, environ=environ)


def test_from_env_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an environ mapping, from_env reads os.environ."""
    monkeypatch.setenv("TASKLOOM_SECRETS_PASSPHRASE", PASSPHRASE)
    store = EncryptedFileSecretStore.from_env(tmp_path / "s.bin", scrypt_n=N)
    assert PASSPHRASE not in repr(store)


@pytest.mark.parametrize("bad", ["", Secret(""), b"bytes", None])
def test_the_passphrase_must_be_non_empty_text(tmp_path: Path, bad: object) -> None:
    """An empty or non-text passphrase is a UsageError."""
    with pytest.raises(UsageError):
        EncryptedFileSecretStore(tmp_path / "s.bin", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2**9, 2**21, 3000, 0, True, 2.0**15])
def test_scrypt_cost_must_be_a_power_of_two_in_range(tmp_path: Path, n: object) -> None:
    """A cost outside 2**10..2**20 or not a power of two is a UsageError."""
    with pytest.raises(UsageError, match="power of two"):
        EncryptedFileSecretStore(tmp_path / "s.bin", PASSPHRASE, scrypt_n=n)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="POSIX, not root")
async def test_an_unreadable_file_is_unavailable_not_damaged(tmp_path: Path) -> None:
    """A file the process may not read raises SecretStoreUnavailable saying to check it."""
    path = tmp_path / "s.bin"
    await _written(path)
    path.chmod(0)
    try:
        with pytest.raises(SecretStoreUnavailable, match="readable"):
            await _store(path).names()
    finally:
        path.chmod(0o600)


async def test_an_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    """A path whose parent is a file raises SecretStoreUnavailable, not an OSError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SecretStoreUnavailable):
        await _store(blocker / "s.bin").set("a", VALUE)


def test_repr_shows_the_path_only(tmp_path: Path) -> None:
    """The repr names the file and never the passphrase."""
    store = _store(tmp_path / "s.bin")
    assert repr(store) == f"EncryptedFileSecretStore(path={str(tmp_path / 's.bin')!r})"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
async def test_a_file_other_users_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    """A secret file readable or writable by group or others is refused before it is read."""
    path = tmp_path / "s.bin"
    await _written(path)
    path.chmod(mode)
    with pytest.raises(SecretStoreUnavailable, match="chmod 600"):
        await _store(path).names()
    path.chmod(0o600)
    assert await _store(path).names() is not None
