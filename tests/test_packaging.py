"""The wheel holds only the ``taskloom`` namespace package, with all four portions."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_only_the_taskloom_namespace(tmp_path: Path) -> None:
    """Built wheel: every file is under taskloom/ (or the dist-info), no taskloom/__init__.py,
    each portion present with its py.typed."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("taskloom-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"taskloom"}
    assert "taskloom/__init__.py" not in names
    for portion in ("contracts", "adapters", "security", "sdk"):
        assert f"taskloom/{portion}/__init__.py" in names
        assert f"taskloom/{portion}/py.typed" in names
    assert not [n for n in names if n.endswith(".pyc")]
