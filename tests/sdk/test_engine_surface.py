"""Engine's public attributes are read-only; its seams are typed for mypy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from taskloom.sdk import Engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(Engine._READ_ONLY))
async def test_every_public_attribute_is_read_only(name: str) -> None:
    """Setting any of Engine's public attributes after construction raises with a
    message saying how to change it (it used to be silently ignored)."""
    async with Engine() as engine:
        assert hasattr(engine, name)
        with pytest.raises(AttributeError, match=rf"Engine\.{name} is read-only.*Engine\(\.\.\.\)"):
            setattr(engine, name, getattr(engine, name))


async def test_max_concurrency_after_open_is_refused() -> None:
    """The case from the issue: max_concurrency set after open() did nothing; now it
    raises and the engine keeps the value it was built with."""
    async with Engine(max_concurrency=2) as engine:
        with pytest.raises(AttributeError):
            engine.max_concurrency = 50  # type: ignore[misc]
        assert engine.max_concurrency == 2
        assert engine.global_limit is not None


def test_every_public_attribute_is_listed() -> None:
    """No public instance attribute escapes the read-only list."""
    engine = Engine()
    public = {n for n in vars(engine) if not n.startswith("_")}
    assert public == set(Engine._READ_ONLY)


def test_plugin_steps_is_a_read_only_view() -> None:
    """plugin_steps cannot be changed from outside; register_step adds to it."""

    async def step(args: object) -> object:
        return args

    engine = Engine()
    with pytest.raises(TypeError):
        engine.plugin_steps["x"] = step  # type: ignore[index]
    engine.register_step("x", step)
    assert engine.plugin_steps["x"] is step


def test_a_renamed_service_fails_mypy(tmp_path: Path) -> None:
    """The services the engine hands its run are a typed Protocol: an engine lacking
    one of them (here ``limits`` renamed) is a mypy error where it is handed over."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from taskloom.sdk._engine.services import RunServices\n"
        "from taskloom.sdk._engine.leaf import LeafRunner\n"
        "class Renamed:\n"
        "    registry = None\n"
        "def use(x: Renamed) -> None:\n"
        "    LeafRunner(run_id='r', services=x, emit=print)\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(probe)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout
    assert 'incompatible type "Renamed"; expected "RunServices"' in done.stdout
