"""FileStorage's name encoding: reversible, injective, and safe on every filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.adapters.filesystem import FileStorage
from taskloom.adapters.filesystem import _names as _fs_names
from taskloom.adapters.filesystem._core import MAX_RELATIVE_PATH, PATH_MAX, RECORDS
from taskloom.contracts import MAX_KEY_BYTES

TAGS = (_fs_names.NAMESPACE, _fs_names.KEY, _fs_names.STREAM)

HOSTILE = (
    "../x",
    "..",
    ".",
    "/etc/passwd",
    "a/../../b",
    "C:\\Windows\\system32",
    "\x00",
    "a\x00b",
    "CON",
    "con",
    "NUL.txt",
    "nul",
    "COM1",
    "LPT9.log",
    "AUX",
    "PRN",
    "trailing.",
    "trailing ",
    " leading",
    "A",
    "a",
    "Straße",
    "STRASSE",
    "é",
    "e\u0301",
    "\u212a",  # KELVIN SIGN folds to 'k'
    "k",
    "\U0001f600",
    "x" * 200,
    "x" * 201,
    "é" * (MAX_KEY_BYTES // 2),
    "k" * MAX_KEY_BYTES,
)

WINDOWS_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$", "clock$"} | {
    f"{stem}{n}" for stem in ("com", "lpt") for n in "0123456789¹²³"
}

names = st.text(min_size=1, max_size=300) | st.sampled_from(HOSTILE)
tags = st.sampled_from(TAGS)


def _assert_safe(components: tuple[str, ...]) -> None:
    for component in components:
        assert component not in ("", ".", ".."), component
        assert len(component.encode()) <= 255, len(component)
        assert set(component[1:]) <= set(_fs_names.ALPHABET), component
        assert component == component.lower()
        assert component.split(".")[0] not in WINDOWS_RESERVED
        assert not component.endswith((".", " "))
        assert os.sep not in component and "/" not in component and "\\" not in component


@given(name=names, tag=tags)
@settings(max_examples=300)
def test_encoding_round_trips_and_is_safe(name: str, tag: str) -> None:
    """Every name decodes back to itself and encodes to safe, short, lowercase components."""
    components = _fs_names.encode(name, tag)
    _assert_safe(components)
    assert _fs_names.decode(components, tag) == name


@given(a=names, b=names, tag_a=tags, tag_b=tags)
@settings(max_examples=300)
def test_encoding_is_injective(a: str, b: str, tag_a: str, tag_b: str) -> None:
    """Different (name, kind) pairs never share a path, even on a case-insensitive disk."""
    if (a, tag_a) != (b, tag_b):
        path_a = "/".join(_fs_names.encode(a, tag_a)).casefold()
        path_b = "/".join(_fs_names.encode(b, tag_b)).casefold()
        assert path_a != path_b


@given(prefix=st.text(max_size=30), rest=st.text(max_size=300), tag=tags)
def test_encoded_prefixes_prefix_the_encoding(prefix: str, rest: str, tag: str) -> None:
    """Every name starting with a prefix encodes to text starting with the prefix's encoding."""
    if not prefix + rest:
        return
    text = "".join(c[1:] for c in _fs_names.encode(prefix + rest, tag))
    assert text.startswith(_fs_names.encoded_prefix(prefix))


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_distinct_and_safe(name: str) -> None:
    """Each hostile name gets its own safe path, different from every other hostile name."""
    components = _fs_names.encode(name, _fs_names.KEY)
    _assert_safe(components)
    others = {
        "/".join(_fs_names.encode(other, _fs_names.KEY)).casefold()
        for other in HOSTILE
        if other != name
    }
    assert "/".join(components).casefold() not in others


def test_longest_name_fits_path_limits() -> None:
    """A 1024-byte namespace and key fit in PATH_MAX below a root of reasonable length."""
    longest = "\U0001f600" * (MAX_KEY_BYTES // 4)
    components = _fs_names.encode(longest, _fs_names.NAMESPACE) + _fs_names.encode(
        longest, _fs_names.KEY
    )
    relative = "/".join((RECORDS, *components))
    assert len(relative) <= MAX_RELATIVE_PATH
    assert len(_fs_names.encode(longest, _fs_names.KEY)) == _fs_names.MAX_COMPONENTS
    assert MAX_RELATIVE_PATH + 500 < PATH_MAX


@pytest.mark.parametrize(
    "components",
    [
        ("kZZ",),
        ("k",),
        ("x00",),
        ("k00", "k00"),
        ("d00", "k00"),  # a partial chunk must be full length
        ("m00",),  # wrong kind
        ("k01",),  # non-canonical trailing bits
        ("k..",),
    ],
)
def test_decode_refuses_what_encode_cannot_produce(components: tuple[str, ...]) -> None:
    """Foreign or non-canonical names are refused, so two spellings never mean one key."""
    with pytest.raises(ValueError):
        _fs_names.decode(components, _fs_names.KEY)


@pytest.mark.parametrize(
    "key", [k for k in HOSTILE if "\x00" not in k] + ["../../../../../../tmp/owned"]
)
async def test_hostile_keys_stay_inside_the_root(tmp_path: Path, key: str) -> None:
    """Writing a hostile key creates files only below the store's records directory."""
    root = tmp_path / "store"
    before = set(tmp_path.parent.iterdir())
    async with FileStorage(root, fsync=False) as storage:
        await storage.put("ns", key, b"v")
        await storage.put(key, "k", b"v")
        await storage.append(key, b"e")
        assert (await storage.get("ns", key)) is not None
    assert set(tmp_path.parent.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
