"""The dependency rule: contracts <- adapters, security <- sdk, and never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# portion -> the taskloom portions it may import
ALLOWED = {
    "contracts": {"contracts"},
    "adapters": {"contracts", "adapters"},
    "security": {"contracts", "security"},
    "sdk": {"contracts", "adapters", "security", "sdk"},
}
# third-party packages each portion may import (contracts stays down to attrs and cattrs;
# its testing subpackage may use the testing extra)
CONTRACTS_THIRD_PARTY = {"attrs", "cattrs"}
CONTRACTS_TESTING_THIRD_PARTY = {"attrs", "cattrs", "pytest", "hypothesis"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(portion: str) -> list[Path]:
    return sorted((ROOT / portion / "taskloom" / portion).rglob("*.py"))


@pytest.mark.parametrize("portion", sorted(ALLOWED))
def test_imports_point_one_way(portion: str) -> None:
    """No module imports a taskloom portion that its layer may not depend on."""
    bad = []
    for path in _modules(portion):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "taskloom" and len(parts) > 1 and parts[1] not in ALLOWED[portion]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "imports against the dependency rule:\n" + "\n".join(bad)


def test_contracts_need_only_attrs_and_cattrs() -> None:
    """taskloom.contracts imports no third-party package but attrs and cattrs (and the
    testing extra inside taskloom.contracts.testing)."""
    import sys

    stdlib = set(sys.stdlib_module_names)
    bad = []
    for path in _modules("contracts"):
        allowed = (
            CONTRACTS_TESTING_THIRD_PARTY if "testing" in path.parts else CONTRACTS_THIRD_PARTY
        )
        for name in _imports(path):
            top = name.split(".")[0]
            if top in stdlib or top == "taskloom" or top in allowed:
                continue
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_taskloom_init_anywhere() -> None:
    """taskloom is a PEP 420 namespace package: no portion ships taskloom/__init__.py."""
    assert not list(ROOT.glob("*/taskloom/__init__.py"))


@pytest.mark.parametrize("portion", sorted(ALLOWED))
def test_each_portion_ships_py_typed(portion: str) -> None:
    """Every portion marks itself typed for mypy users."""
    assert (ROOT / portion / "taskloom" / portion / "py.typed").is_file()
