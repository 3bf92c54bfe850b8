"""``ignore_bytecode_caches``: pip's ``__pycache__`` directories pass, nothing else does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _sec_support import NOW, DictStorage, keys, make_signed, trust_for

from taskloom.security import FileSetMismatch, RollbackGuard, verify_plugin


def _verify(root: Path, envelope: bytes, *, ignore: bool) -> dict[str, bytes]:
    verified = asyncio.run(
        verify_plugin(
            root,
            envelope,
            trust_for(*keys(1)),
            rollback=RollbackGuard(DictStorage()),
            now=NOW,
            ignore_bytecode_caches=ignore,
        )
    )
    return dict(verified.files)


def _plant(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


PIP_CACHES = {
    "__pycache__/plugin.cpython-311.pyc": b"\x00pyc",
    "pkg/__pycache__/__init__.cpython-311.pyc": b"\x00pyc",
    "pkg/__pycache__/util.cpython-311.opt-1.pyc": b"\x00pyc",
}


def test_pip_compiled_caches_are_skipped_and_never_returned(tmp_path: Path) -> None:
    """With the flag, __pycache__ dirs of .pyc files pass and none of their bytes is returned."""
    envelope = make_signed(tmp_path / "p", keys(1))
    _plant(tmp_path / "p", PIP_CACHES)
    files = _verify(tmp_path / "p", envelope, ignore=True)
    assert sorted(files) == ["data/prompt.txt", "pkg/__init__.py", "pkg/util.py", "plugin.py"]


def test_without_the_flag_the_same_caches_are_refused(tmp_path: Path) -> None:
    """The default stays strict: the same caches are unlisted files."""
    envelope = make_signed(tmp_path / "p", keys(1))
    _plant(tmp_path / "p", PIP_CACHES)
    with pytest.raises(FileSetMismatch):
        _verify(tmp_path / "p", envelope, ignore=False)


def test_an_empty_pycache_is_skipped_with_the_flag(tmp_path: Path) -> None:
    """An empty __pycache__ holds only .pyc files (none), so the flag skips it."""
    envelope = make_signed(tmp_path / "p", keys(1))
    (tmp_path / "p" / "__pycache__").mkdir()
    assert "plugin.py" in _verify(tmp_path / "p", envelope, ignore=True)


@pytest.mark.parametrize(
    "planted",
    [
        "__pycache__/evil.py",
        "__pycache__/plugin.cpython-311.pyc.so",
        "__pycache__/sub/x.pyc",
        "pkg/__pycache__/evil.pth",
        "not_a_cache/x.pyc",
        "plugin.pyc",
        "__pycache___/x.pyc",
    ],
)
def test_anything_but_pyc_files_in_a_cache_is_still_refused(tmp_path: Path, planted: str) -> None:
    """A cache holding a non-.pyc file or a subdirectory, or a .pyc outside a cache, is refused."""
    envelope = make_signed(tmp_path / "p", keys(1))
    _plant(tmp_path / "p", {**PIP_CACHES, planted: b"\x00x"})
    with pytest.raises(FileSetMismatch):
        _verify(tmp_path / "p", envelope, ignore=True)


def test_a_listed_file_inside_a_cache_is_verified_normally(tmp_path: Path) -> None:
    """A __pycache__ that the manifest lists is not skipped: its files are checked and returned."""
    files = {"plugin.py": b"X = 1\n", "__pycache__/notes.pyc": b"listed"}
    envelope = make_signed(tmp_path / "p", keys(1), files=files)
    assert _verify(tmp_path / "p", envelope, ignore=True) == files
    (tmp_path / "p" / "__pycache__" / "extra.pyc").write_bytes(b"\x00")
    with pytest.raises(FileSetMismatch):
        _verify(tmp_path / "p", envelope, ignore=True)
