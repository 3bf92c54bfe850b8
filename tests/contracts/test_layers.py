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


# subpackage (or top-level private module) -> the others of its portion it may import
SDK_ROOMS = {
    "_pipeline": set(),
    "_runs": {"_pipeline"},
    "_registry": set(),
    "_config": {"_registry", "_telemetry"},
    "_plugins": set(),
    "_queue": {"_pipeline", "_runs"},
    "_telemetry": set(),
    "_engine": {"_pipeline", "_runs", "_config", "_registry", "_queue", "_telemetry"},
    "_workers": {"_pipeline", "_runs", "_config", "_registry", "_queue", "_engine"},
    "_sync": {"_engine"},
    "server": {"_engine", "_runs", "_pipeline", "_config", "_registry"},
    "_cli": {
        "_pipeline",
        "_runs",
        "_config",
        "_registry",
        "_plugins",
        "_engine",
        "_sync",
        "_queue",
        "_workers",
        "server",
    },
}
ADAPTER_ROOMS = {
    "_http": set(),
    "openai": {"_http"},
    "anthropic": {"_http"},
    "sqlite": set(),
    "postgres": set(),
    "filesystem": set(),
    "memory": set(),
    "secrets": set(),
    "scripted": set(),
}


def _room_violations(base: Path, rooms: dict[str, set[str]]) -> list[str]:
    portion = base.name
    bad = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).parts
        room = rel[0].removesuffix(".py")
        if room == "__init__":
            continue  # the portion's face may import every room
        assert room in rooms, f"{path} is in no room of the layering test"
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] != ["taskloom", portion] or len(parts) < 3:
                continue
            target = parts[2]
            if target != room and target not in rooms[room] and target != "__version__":
                bad.append(f"{path.relative_to(base)} imports {name}")
    return bad


@pytest.mark.parametrize(("portion", "rooms"), [("sdk", SDK_ROOMS), ("adapters", ADAPTER_ROOMS)])
def test_subpackages_import_one_way(portion: str, rooms: dict[str, set[str]]) -> None:
    """Inside a portion, subpackages import each other only along the drawn arrows
    (``_cli`` on top, ``_pipeline`` at the bottom; adapter groups never each other)."""
    bad = _room_violations(ROOT / portion / "taskloom" / portion, rooms)
    assert not bad, "imports against the subpackage arrows:\n" + "\n".join(bad)


def test_room_check_catches_a_reverse_arrow(tmp_path: Path) -> None:
    """The room check is not vacuous: a lower room importing a higher one is reported,
    the allowed direction is not."""
    base = tmp_path / "sdk"
    (base / "_low").mkdir(parents=True)
    (base / "_high").mkdir()
    (base / "_low" / "a.py").write_text("from taskloom.sdk._high.b import y\n")
    (base / "_high" / "b.py").write_text("from taskloom.sdk._low.a import x\n")
    bad = _room_violations(base, {"_low": set(), "_high": {"_low"}})
    assert bad == ["_low/a.py imports taskloom.sdk._high.b"]


def test_no_test_turns_an_import_error_of_ours_into_a_skip() -> None:
    """A broken taskloom module must fail the tests that import it: no test module skips
    on an import error of a taskloom module (``importorskip``, ``except ImportError``)."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        needle = "importorskip(" + '"taskloom'
        if path.name != "test_layers.py" and needle in text.replace("'", '"'):
            bad.append(f"{path.relative_to(ROOT)}: importorskip of a taskloom module")
    assert not bad, "\n".join(bad)
