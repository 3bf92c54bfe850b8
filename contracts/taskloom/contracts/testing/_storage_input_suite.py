"""Example tests of what an adapter must refuse and accept: names and value sizes (ST10).

One part of ``StorageConformance``; the tests are plain synchronous pytest
tests that run their own event loop.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taskloom.contracts import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Append,
    Check,
    Delete,
    InvalidKey,
    Put,
    StorageAdapter,
    UsageError,
    ValueTooLarge,
)
from taskloom.contracts.testing._storage_base import (
    INVALID_NAMES,
    StorageSuiteBase,
)


class InputTests(StorageSuiteBase):
    """Tests ST10: invalid names and oversized values are refused, the limits accepted."""

    # ST10 ----------------------------------------------------------------------------

    def test_st10_invalid_names_raise_invalid_key(self, tmp_path: Path) -> None:
        """Empty, NUL, lone-surrogate and over-long names raise InvalidKey in every method."""

        async def body(s: StorageAdapter) -> None:
            calls: list[Callable[[str], Awaitable[Any]]] = [
                lambda n: s.get(n, "k"),
                lambda n: s.get("ns", n),
                lambda n: s.put(n, "k", b"v"),
                lambda n: s.put("ns", n, b"v"),
                lambda n: s.delete(n, "k"),
                lambda n: s.delete("ns", n),
                lambda n: s.scan(n),
                lambda n: s.append(n, b"p"),
                lambda n: s.read(n),
                lambda n: s.commit([Put(namespace=n, key="k", value=b"")]),
                lambda n: s.commit([Put(namespace="ns", key=n, value=b"")]),
                lambda n: s.commit([Delete(namespace="ns", key=n)]),
                lambda n: s.commit([Append(stream=n, payload=b"")]),
                lambda n: s.commit([Check(namespace="ns", key=n, version=0)]),
            ]
            for name in INVALID_NAMES:
                for number, call in enumerate(calls):
                    with pytest.raises(InvalidKey):
                        await call(name)
                        pytest.fail(f"call #{number} accepted the name {name[:20]!r}")
            assert await s.get("ns", "k") is None
            assert await s.scan("ns") == []

        self._run(tmp_path, body)

    def test_st10_invalid_arguments_raise_usage_error(self, tmp_path: Path) -> None:
        """Negative limits, TTLs that are not positive, non-bytes values raise UsageError."""

        async def body(s: StorageAdapter) -> None:
            kept = await s.put("ns", "k", b"v")
            await s.append("s", b"p")
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "scan('ns', limit=-1)": lambda: s.scan("ns", limit=-1),
                "read('s', limit=-1)": lambda: s.read("s", limit=-1),
                "read('s', after=-1)": lambda: s.read("s", after=-1),
                "put('ns', 'k', b'x', ttl=0)": lambda: s.put("ns", "k", b"x", ttl=0),
                "put('ns', 'k', b'x', ttl=-5)": lambda: s.put("ns", "k", b"x", ttl=-5),
                "put('ns', 'k', b'x', ttl=nan)": lambda: s.put("ns", "k", b"x", ttl=math.nan),
                "put('ns', 'k', b'x', if_version=-1)": lambda: s.put(
                    "ns", "k", b"x", if_version=-1
                ),
                "put('ns', 'k', 'text')": lambda: s.put("ns", "k", "text"),  # type: ignore[arg-type]
                "append('s', 'text')": lambda: s.append("s", "text"),  # type: ignore[arg-type]
            }
            for shown, call in calls.items():
                try:
                    result = await call()
                except UsageError:
                    continue
                except Exception as exc:
                    raise AssertionError(
                        f"{shown} raised {type(exc).__name__}: {exc}; expected UsageError"
                    ) from exc
                raise AssertionError(f"{shown} returned {result!r}; expected UsageError")
            got = await s.get("ns", "k")
            assert got == kept, f"after the refused calls get('ns', 'k') is {got!r}"
            entries = [e.payload for e in await s.read("s")]
            assert entries == [b"p"], f"after the refused calls read('s') is {entries}"

        self._run(tmp_path, body)

    def test_st10_the_longest_names_are_accepted(self, tmp_path: Path) -> None:
        """Names of exactly MAX_KEY_BYTES UTF-8 bytes, in any script, work everywhere."""

        async def body(s: StorageAdapter) -> None:
            for name in ("k" * MAX_KEY_BYTES, "é" * (MAX_KEY_BYTES // 2), "\U0001f600" * 256):
                assert len(name.encode()) == MAX_KEY_BYTES
                record = await s.put(name, name, b"v")
                assert await s.get(name, name) == record
                assert (await s.append(name, b"p")).seq == 1

        self._run(tmp_path, body)

    def test_st10_oversized_values_store_nothing(self, tmp_path: Path) -> None:
        """A value or payload over MAX_VALUE_BYTES raises ValueTooLarge and changes nothing."""

        async def body(s: StorageAdapter) -> None:
            too_big = b"x" * (MAX_VALUE_BYTES + 1)
            with pytest.raises(ValueTooLarge):
                await s.put("ns", "new", too_big)
            assert await s.get("ns", "new") is None
            kept = await s.put("ns", "k", b"small")
            with pytest.raises(ValueTooLarge):
                await s.put("ns", "k", too_big)
            assert await s.get("ns", "k") == kept
            with pytest.raises(ValueTooLarge):
                await s.append("s", too_big)
            assert await s.read("s") == []
            assert (await s.append("s", b"ok")).seq == 1

        self._run(tmp_path, body)

    def test_st10_the_largest_value_is_accepted(self, tmp_path: Path) -> None:
        """A value of exactly MAX_VALUE_BYTES is stored and read back intact."""

        async def body(s: StorageAdapter) -> None:
            value = bytes(range(256)) * (MAX_VALUE_BYTES // 256)
            assert len(value) == MAX_VALUE_BYTES
            await s.put("ns", "big", value)
            record = await s.get("ns", "big")
            assert record is not None and record.value == value

        self._run(tmp_path, body)
