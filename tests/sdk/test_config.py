"""Engine.from_config: storage by kind (imported lazily), executors by type, engine settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from engine_support import pipeline

from taskloom.contracts import UsageError
from taskloom.sdk import Engine
from taskloom.sdk._config.build import make_storage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taskloom.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def test_config_builds_a_working_engine_with_scripted_echo(tmp_path: Path) -> None:
    """A config with a scripted executor and sqlite storage runs examples/hello.json."""
    config = write(
        tmp_path,
        """
[engine]
max_concurrency = 3

[storage]
kind = "sqlite"
path = "runs.db"

[executors.local]
type = "scripted"
default_model = "echo-model"
concurrency = 2
""",
    )
    async with Engine.from_config(config) as engine:
        assert engine.max_concurrency == 3
        assert engine.registry.ids() == ["local"]
        assert engine.registry.settings("local").concurrency == 2
        result = await engine.run(EXAMPLES / "hello.json")
        runs = await engine.runstore.list_runs()
    assert result.output["greeting"] == "Say hello to world."
    assert runs[0].status == "succeeded"
    assert (tmp_path / "runs.db").exists()


async def test_scripted_replies_from_config(tmp_path: Path) -> None:
    """`replies` in the executor table scripts the answers."""
    config = write(
        tmp_path,
        """
[executors.s]
type = "scripted"
replies = ["answer"]
""",
    )
    async with Engine.from_config(config) as engine:
        result = await engine.run(pipeline({"id": "a", "prompt": "x"}))
    assert result.output == "answer"


async def test_default_storage_is_memory_and_overrides_win(tmp_path: Path) -> None:
    """Without [storage] the engine keeps state in memory; keyword overrides replace config."""
    config = write(tmp_path, '[executors.s]\ntype = "scripted"\n')
    async with Engine.from_config(config, max_concurrency=7) as engine:
        assert type(engine.storage).__name__ == "MemoryStorage"
        assert engine.max_concurrency == 7
    async with Engine.from_config(config, storage=None) as engine:
        assert engine.runstore is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine\n", "not valid TOML"),
        ("[bogus]\n", "unknown section"),
        ("[engine]\nturbo = true\n", "unknown key(s) turbo in [engine]"),
        ('[storage]\nkind = "tape"\n', "unknown storage kind 'tape'"),
        ('[storage]\nkind = "memory"\npath = "x"\n', "takes no path"),
        ('[executors.x]\ntype = "no_such_type"\n', "unknown executor type"),
        ("[executors.x]\nconcurrency = 2\n", "needs a 'type'"),
        ('[secrets]\nkind = "vault"\n', "unknown secrets kind"),
        ('[secrets]\nkind = "env"\nfile = "x"\n', "unknown key(s) file in [secrets]"),
        ('[storage]\nkind = "sqlite"\nfsync = true\n', "do not apply to kind 'sqlite'"),
    ],
)
def test_bad_configs_are_usage_errors_naming_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    """Each kind of mistake in a config file is a UsageError that says what to fix."""
    with pytest.raises(UsageError, match=re.escape(message)):
        Engine.from_config(write(tmp_path, text))


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    """A config path that does not exist is a UsageError naming it."""
    with pytest.raises(UsageError, match="cannot read config"):
        Engine.from_config(tmp_path / "nope.toml")


def test_storage_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    """A relative storage path is resolved against the config file's directory."""
    storage = make_storage({"kind": "filesystem", "path": "store"}, tmp_path)
    assert Path(storage.root) == tmp_path / "store"
    assert make_storage({"kind": "none"}, tmp_path) is None
