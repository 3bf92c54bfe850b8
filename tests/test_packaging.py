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
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if "rich" in r or "prompt" in r], core
    assert any("rich" in r and "extra == 'cli'" in r for r in requires), requires


_BLOCK_CLI_LIBS = "import sys; sys.modules['rich'] = None; sys.modules['prompt_toolkit'] = None; "


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK_CLI_LIBS + code], capture_output=True, text=True, timeout=60
    )


def test_the_sdk_imports_without_the_cli_extra() -> None:
    """An application embedding taskloom runs a pipeline with neither rich nor
    prompt_toolkit importable."""
    done = _python(
        "import asyncio, taskloom.sdk, taskloom.adapters.sqlite, taskloom.security\n"
        "from taskloom.sdk import Engine\n"
        "from taskloom.adapters.scripted import ScriptedExecutor\n"
        "from taskloom.sdk import ExecutorRegistry\n"
        "async def go():\n"
        "    reg = ExecutorRegistry()\n"
        "    reg.register('m', ScriptedExecutor())\n"
        "    async with Engine(registry=reg) as e:\n"
        "        r = await e.run({'taskloom': 'pipeline/v1', 'name': 'p',\n"
        "                         'defaults': {'executor': 'm'},\n"
        "                         'steps': [{'id': 'a', 'prompt': 'hi'}]})\n"
        "        print(r.status)\n"
        "asyncio.run(go())\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("succeeded")


def test_the_command_without_the_cli_extra_says_how_to_get_it() -> None:
    """``taskloom`` without rich/prompt_toolkit exits 2 with a one-line install hint, no
    traceback."""
    done = _python("from taskloom.sdk._cli import main; raise SystemExit(main(['runs']))")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "pip install 'taskloom[cli]'" in done.stderr
    assert "rich, prompt_toolkit" in done.stderr


def test_wheel_ships_the_run_viewer(tmp_path: Path) -> None:
    """The /ui page's files are in the wheel (no build step, no CDN at run time)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("taskloom-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    for name in ("index.html", "viewer.js", "viewer.css"):
        assert f"taskloom/sdk/server/_ui/{name}" in names
    page = archive.read("taskloom/sdk/server/_ui/index.html").decode()
    script = archive.read("taskloom/sdk/server/_ui/viewer.js").decode()
    assert "http://" not in page + script and "https://" not in page + script  # nothing remote
