"""Each public module's ``__all__`` is exactly its public surface, sorted (as httpx checks)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORTIONS = ("contracts", "adapters", "security", "sdk")


def _public_modules() -> list[str]:
    names = []
    for portion in PORTIONS:
        base = ROOT / portion / "taskloom" / portion
        names.append(f"taskloom.{portion}")
        for info in pkgutil.walk_packages([str(base)], prefix=f"taskloom.{portion}."):
            if any(part.startswith("_") for part in info.name.split(".")):
                continue
            names.append(info.name)
    return sorted(names)


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest."""
    if name.isupper() or (name.replace("_", "").isupper()):
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("name", _public_modules())
def test_all_is_the_public_surface(name: str) -> None:
    """``__all__`` exists, is sorted and names only what exists; in a package (a curated
    face) every public name is listed and nothing else is."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported, key=_isort_key), f"{name}.__all__ is not sorted"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_") and attr != "annotations" and not inspect.ismodule(value)
    }
    missing = [e for e in exported if not hasattr(module, e)]
    assert not missing, f"{name}.__all__ lists names it does not have: {missing}"
    if not hasattr(module, "__path__"):
        return  # a plain module may import helpers; only packages are curated faces
    exported_public = {e for e in exported if not (e.startswith("__") and e.endswith("__"))}
    assert exported_public == public, (
        f"{name}: missing from __all__: {sorted(public - set(exported))}; "
        f"listed but absent: {sorted(exported_public - public)}"
    )
