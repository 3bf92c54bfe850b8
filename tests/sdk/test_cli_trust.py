"""The trust store in a real process: marks beside it that fail closed, versions that
refuse older copies, a root key that must have signed it, and approvals for updates
that add capabilities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli_story import EXAMPLES, Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "project"
    work.mkdir()
    shutil.copytree(EXAMPLES / "plugins" / "textkit", work / "plugins" / "textkit")
    (work / "plugins" / "textkit" / "taskloom-plugin.json").unlink()
    (work / "taskloom.toml").write_text(
        '[storage]\nkind = "memory"\n\n[plugins]\ndirs = ["plugins"]\ntrust = "trust.json"\n'
    )
    done = Cli(tmp_path / "home", work)
    done.json("keys", "generate", "me")
    return done


def _release(cli: Cli, version: int, secrets: list[str] | None = None) -> None:
    """Sign textkit as ``version`` (with extra declared secrets)."""
    desc = cli.workdir / "plugins" / "textkit" / "plugin.toml"
    text = desc.read_text()
    text = "\n".join(
        f"version = {version}" if line.startswith("version =") else line
        for line in text.splitlines()
        if not line.startswith("secrets =")
    )
    if secrets:
        text += f"\nsecrets = {json.dumps(secrets)}\n"
    desc.write_text(text + "\n")
    cli.json("sign", "plugins/textkit", "--key", "me")


def _loaded(cli: Cli) -> dict[str, object]:
    done = cli("plugins", "list", "--json")
    (report,) = json.loads(done.stdout)
    return dict(report)


def test_rollback_marks_outlive_a_memory_database_and_fail_closed_when_deleted(cli: Cli) -> None:
    """v2 then v1 with storage.kind = memory: refused; marks deleted: nothing loads until
    'trust rebaseline'."""
    _release(cli, 2)
    cli.json("trust", "add", "me", "--plugins", "textkit")
    assert _loaded(cli)["loaded"] is True
    _release(cli, 1)
    report = _loaded(cli)
    assert report["loaded"] is False and report["error_type"] == "RollbackDetected"

    marks = cli.workdir / "trust.marks.json"
    assert marks.is_file()
    marks.unlink()
    done = cli("plugins", "list")
    assert done.returncode == 1 and "trust rebaseline" in done.stderr
    assert "Traceback" not in done.stderr
    rebased = cli.json("trust", "rebaseline")
    assert rebased["plugins"] == {"textkit": 1}
    assert _loaded(cli)["loaded"] is True
    assert cli("trust", "rebaseline").returncode == 2  # intact now: needs --force
    marks.write_text(marks.read_text().replace('"version":1', '"version":0'))
    damaged = cli("plugins", "list")
    assert damaged.returncode == 1 and "damaged" in damaged.stderr


def test_an_older_copy_of_the_trust_store_is_refused(cli: Cli) -> None:
    """A trust.json put back from before a revocation does not load."""
    _release(cli, 1)
    cli.json("keys", "generate", "old")
    cli.json("trust", "add", "me", "--plugins", "textkit")
    cli.json("trust", "add", "old", "--plugins", "*")
    before = (cli.workdir / "trust.json").read_bytes()
    old_id = json.loads(before)["keys"][0]["key_id"]
    listed = {k["key_id"] for k in cli.json("trust", "list")["keys"]}
    assert old_id in listed
    cli.json("trust", "remove", old_id, "--revoke")
    (cli.workdir / "trust.json").write_bytes(before)
    done = cli("plugins", "list")
    assert done.returncode == 1 and "older than version" in done.stderr


def test_a_configured_root_key_must_have_signed_the_trust_store(cli: Cli) -> None:
    """With [plugins] root_key, unsigned changes are refused and an unsigned file never loads."""
    root = cli.json("keys", "generate", "root")
    config = cli.workdir / "taskloom.toml"
    config.write_text(config.read_text() + f'root_key = "{root["public"]}"\n')
    _release(cli, 1)
    unsigned = cli("trust", "add", "me", "--plugins", "textkit")
    assert unsigned.returncode == 2 and "--sign-with" in unsigned.stderr
    cli.json("trust", "add", "me", "--plugins", "textkit", "--sign-with", "root")
    assert _loaded(cli)["loaded"] is True
    trust = cli.workdir / "trust.json"
    payload = json.loads(trust.read_text())["payload"]
    import base64

    trust.write_bytes(base64.b64decode(payload))  # the same content, signature stripped
    done = cli("plugins", "list")
    assert done.returncode == 1 and "signed" in done.stderr


def test_an_update_adding_a_secret_loads_only_after_trust_approve(cli: Cli) -> None:
    """v2 declaring a new secret is refused until 'taskloom trust approve textkit'."""
    _release(cli, 1)
    cli.json("trust", "add", "me", "--plugins", "textkit")
    assert _loaded(cli)["loaded"] is True
    _release(cli, 2, secrets=["openai_api_key"])
    report = _loaded(cli)
    assert report["loaded"] is False and report["error_type"] == "CapabilitiesNotApproved"
    approved = cli.json("trust", "approve", "textkit")
    assert approved["approved"] == {"secrets": ["openai_api_key"]}
    assert _loaded(cli)["loaded"] is True


def test_the_shipped_example_runs_with_its_marks_unchanged(tmp_path: Path) -> None:
    """examples/ ships its rollback marks: the README's example command runs as is."""
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples)
    before = (examples / "trust.marks.json").read_bytes()
    cli = Cli(tmp_path / "home", tmp_path)
    done = cli(
        "--config", "examples/taskloom.toml", "run", "examples/plugin_pipeline.json", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert (examples / "trust.marks.json").read_bytes() == before
