"""The plugin host reads an envelope file under its size cap: at most cap + 1 bytes, ever."""

from __future__ import annotations

import builtins
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from test_plugin_host import Sink

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import PluginError
from taskloom.sdk._plugins import host as _plugin_host
from taskloom.sdk._plugins.host import CODE_DIR, ENVELOPE_NAME, PluginHost, discover
from taskloom.security import (
    MAX_ENVELOPE_BYTES,
    InputTooLarge,
    MalformedEnvelope,
    RollbackGuard,
    TrustStore,
    generate_key,
)

HUGE = 2 * 1024**3
"""2 GiB: a sparse file this size costs nothing on disk, but reading it whole would."""


class ReadSpy:
    """Wraps a file object the host opens and records every read's request and result."""

    def __init__(self, handle: Any, log: list[tuple[int | None, int]]) -> None:
        self._handle = handle
        self._log = log

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._handle.read(size)
        self._log.append((size, len(data)))
        return data

    def __getattr__(self, name: str) -> Any:
        if name in ("readall", "readinto", "readline", "readlines", "__iter__", "__next__"):
            raise AssertionError(f"the host used {name}, which the spy does not bound")
        return getattr(self._handle, name)

    def __enter__(self) -> ReadSpy:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.__exit__(*exc)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, int]]:
    """Every read the plugin host makes through open(), as (requested, returned) sizes."""
    log: list[tuple[int | None, int]] = []

    def spying_open(*args: Any, **kwargs: Any) -> ReadSpy:
        return ReadSpy(builtins.open(*args, **kwargs), log)

    monkeypatch.setattr(_plugin_host, "open", spying_open, raising=False)
    return log


def _plugin_with_envelope_of(base: Path, name: str, size: int, *, sparse: bool) -> Path:
    root = base / name
    (root / CODE_DIR).mkdir(parents=True)
    (root / CODE_DIR / f"{name}.py").write_text("plugin = None\n")
    envelope = root / ENVELOPE_NAME
    if sparse:
        envelope.touch()
        os.truncate(envelope, size)
    else:
        envelope.write_bytes(b" " * size)
    return root


def _host(*, dev_mode: bool = False) -> PluginHost:
    storage = MemoryStorage()
    trust = TrustStore()
    trust.add_key(generate_key().public_key, plugins=["*"])
    return PluginHost(
        storage=storage,
        executors=Sink(),
        trust=trust,
        rollback=RollbackGuard(storage),
        dev_mode=dev_mode,
    )


async def test_a_2_gib_envelope_is_refused_after_reading_cap_plus_one_bytes(
    tmp_path: Path, reads: list[tuple[int | None, int]]
) -> None:
    """A 2 GiB envelope is InputTooLarge (its real size and the cap), and the host read at most
    cap + 1 bytes of it, each read bounded."""
    root = _plugin_with_envelope_of(tmp_path, "bloated", HUGE, sparse=True)
    (source,) = discover([root], entry_points=False)
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLarge) as info:
            await _host().verify(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MAX_ENVELOPE_BYTES, "the envelope was held in memory whole"
    assert (info.value.size, info.value.limit) == (HUGE, MAX_ENVELOPE_BYTES)
    assert reads, "the host did not read through open()"
    assert all(size is not None and 0 <= size <= MAX_ENVELOPE_BYTES + 1 for size, _ in reads)
    assert sum(got for _, got in reads) <= MAX_ENVELOPE_BYTES + 1


async def test_load_reports_the_oversized_envelope_and_loads_the_others(
    tmp_path: Path, reads: list[tuple[int | None, int]]
) -> None:
    """Through load(), the refusal is a report with error_type InputTooLarge."""
    _plugin_with_envelope_of(tmp_path, "bloated", HUGE, sparse=True)
    (report,) = await _host().load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.error_type == "InputTooLarge"
    assert reads, "the host did not read through open()"
    assert sum(got for _, got in reads) <= MAX_ENVELOPE_BYTES + 1


async def test_development_mode_reads_the_envelope_under_the_cap_too(
    tmp_path: Path, reads: list[tuple[int | None, int]]
) -> None:
    """The unverified read of development mode is bounded the same way."""
    _plugin_with_envelope_of(tmp_path, "bloated", HUGE, sparse=True)
    (report,) = await _host(dev_mode=True).load(discover([tmp_path], entry_points=False))
    assert not report.loaded and "is 2147483648 bytes" in (report.error or "")
    assert all(size is not None and 0 <= size <= MAX_ENVELOPE_BYTES + 1 for size, _ in reads)
    assert len(reads) <= 2  # once to verify, once for the development-mode fallback


@pytest.mark.parametrize(
    ("size", "error"),
    [(MAX_ENVELOPE_BYTES, MalformedEnvelope), (MAX_ENVELOPE_BYTES + 1, InputTooLarge)],
)
async def test_the_cap_is_inclusive(tmp_path: Path, size: int, error: type[Exception]) -> None:
    """An envelope of exactly the cap is parsed (and refused as malformed); one byte more is
    InputTooLarge, as the verifier's in-memory cap says."""
    root = _plugin_with_envelope_of(tmp_path, "edge", size, sparse=False)
    (source,) = discover([root], entry_points=False)
    with pytest.raises(error):
        await _host().verify(source)


async def test_an_unreadable_envelope_is_a_plugin_error(tmp_path: Path) -> None:
    """An envelope path that cannot be opened is a PluginError naming it."""
    root = _plugin_with_envelope_of(tmp_path, "gone", 10, sparse=False)
    (source,) = discover([root], entry_points=False)
    (root / ENVELOPE_NAME).unlink()
    (root / ENVELOPE_NAME).mkdir()
    with pytest.raises(PluginError, match=ENVELOPE_NAME):
        await _host().verify(source)
