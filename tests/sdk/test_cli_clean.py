"""What the CLI prints cannot drive the terminal: escapes in names are shown, not run."""

from __future__ import annotations

import io
import json
from pathlib import Path

from taskloom.sdk._cli.context import Output, clean

EVIL = "textkit\x1b]0;owned\x07\x1b[2J\u202eevil\x9b31m"


def test_clean_shows_controls_and_bidi_as_escapes() -> None:
    """ESC, BEL, C1 CSI and a bidi override become visible escapes; newlines and tabs stay."""
    out = clean(EVIL + "\n\tok")
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\x9b" not in out
    assert "\\x1b" in out and "\\u202e" in out and out.endswith("\n\tok")


def test_notes_tables_and_json_are_cleaned() -> None:
    """A plugin directory name with escapes is printed inert in every output form."""
    buffer = io.StringIO()
    human = Output(json_mode=False, stream=buffer)
    human.table("plugins", ["name"], [[EVIL]])
    human.console.print(f"plugin {EVIL} not loaded", markup=False)
    machine = io.StringIO()
    Output(json_mode=True, stream=machine).data({"name": EVIL})
    for text in (buffer.getvalue(), machine.getvalue()):
        assert "\x1b" not in text and "\u202e" not in text and "\x9b" not in text
    assert json.loads(machine.getvalue())["name"] == EVIL  # the data itself is intact


def test_a_plugin_directory_named_with_escapes_prints_inert(tmp_path: Path) -> None:
    """A refused plugin whose directory name holds terminal escapes: none reach the output."""
    from test_cli_story import Cli

    work = tmp_path / "project"
    evil = work / "plugins" / "kit\x1b]0;owned\x07\x1b[2J\u202e"
    (evil / "src").mkdir(parents=True)
    (evil / "taskloom-plugin.json").write_text("{}")
    (work / "taskloom.toml").write_text('[plugins]\ndirs = ["plugins"]\n')
    cli = Cli(tmp_path / "home", work)
    for args in (("plugins", "list"), ("plugins", "list", "--debug"), ("plugins", "verify")):
        done = cli(*args)
        assert done.returncode == 1, done.stderr
        for text in (done.stdout, done.stderr):
            assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, text
        assert "kit\\x1b" in done.stdout + done.stderr
