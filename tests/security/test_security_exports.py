"""The public face of taskloom.security and the import rule of the portion."""

from __future__ import annotations

import ast
from pathlib import Path

import taskloom.security as security

PORTION = Path(security.__file__).parent


def test_all_is_exactly_the_public_surface() -> None:
    """__all__ lists every public name the package defines, and nothing else."""
    public = {
        name
        for name, value in vars(security).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("taskloom.")
    }
    public |= {name for name in vars(security) if name.isupper() and not name.startswith("_")}
    assert set(security.__all__) == public
    assert len(security.__all__) == len(set(security.__all__))


def test_every_exported_error_is_a_security_error() -> None:
    """Every exported exception class derives from the contracts' SecurityError."""
    from taskloom.contracts import SecurityError

    errors = [
        getattr(security, n)
        for n in security.__all__
        if isinstance(getattr(security, n), type) and issubclass(getattr(security, n), Exception)
    ]
    assert errors
    assert all(issubclass(e, SecurityError) for e in errors)


def test_the_portion_imports_only_contracts_and_third_party_code() -> None:
    """No module of taskloom.security imports taskloom.adapters or taskloom.sdk."""
    for path in PORTION.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("taskloom"):
                    assert name.startswith(("taskloom.contracts", "taskloom.security")), (
                        f"{path.name} imports {name}"
                    )
