"""taskloom audit anchor / verify --anchor --key / repair, in a real process and database."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from test_cli_story import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    work = tmp_path / "project"
    work.mkdir()
    (work / "taskloom.toml").write_text("")
    return Cli(tmp_path / "home", work)


def _database(cli: Cli) -> Path:
    home = Path(cli.env["HOME"])
    (found,) = [
        p for p in home.rglob("*") if p.is_file() and p.read_bytes()[:15] == b"SQLite format 3"
    ]
    return found


def _cut(cli: Cli, count: int, *, move_head: bool) -> None:
    """Remove the last ``count`` audit entries; with ``move_head`` as an attacker would
    (chain head moved to the new end, stored signed head dropped)."""
    with sqlite3.connect(_database(cli)) as db:
        rows = db.execute("SELECT seq, payload FROM streams WHERE stream='audit' ORDER BY seq")
        entries = rows.fetchall()
        keep = entries[: len(entries) - count]
        db.execute("DELETE FROM streams WHERE stream='audit' AND seq > ?", (len(keep),))
        if move_head:
            digest = hashlib.sha256(keep[-1][1]).hexdigest()
            value = b'{"hash":"%s","seq":%d}' % (digest.encode(), len(keep))
            db.execute(
                "UPDATE records SET value=? WHERE namespace='audit.chain' AND key='audit'",
                (value,),
            )
            db.execute("DELETE FROM records WHERE namespace='audit.heads'")


def test_an_anchor_catches_a_truncation_that_the_stored_state_hides(cli: Cli) -> None:
    """Truncated, chain head moved and head re-signed by another key: only the anchor tells."""
    cli.json("keys", "generate", "me")
    cli.json("keys", "generate", "mallory")
    for name in ("a", "b", "c"):
        cli.json("keys", "generate", name)
    anchored = cli.json("audit", "anchor", "--key", "me", "--out", "anchor.json")
    assert anchored["seq"] == 5
    ok = cli.json("audit", "verify", "--anchor", "anchor.json", "--key", "me")
    assert ok["ok"] is True and ok["head_checked"] is True

    _cut(cli, 2, move_head=True)
    cli.json("audit", "anchor", "--key", "mallory")  # the attacker signs the stored head
    assert cli.json("audit", "verify")["ok"] is True  # nothing stored says otherwise
    stored = cli("audit", "verify", "--key", "me", "--json")
    assert stored.returncode == 1 and '"kind": "head"' in stored.stdout
    caught = cli("audit", "verify", "--anchor", "anchor.json", "--key", "me", "--json")
    assert caught.returncode == 1 and '"truncated"' in caught.stdout

    no_key = cli("audit", "verify", "--anchor", "anchor.json")
    assert no_key.returncode == 2 and "--key" in no_key.stderr


def test_a_torn_tail_is_reported_as_such_and_repair_makes_the_log_usable(cli: Cli) -> None:
    """The last entry lost: verify says torn, writers refuse, repair keeps the rest."""
    cli.json("keys", "generate", "me")
    cli.json("keys", "generate", "you")
    _cut(cli, 1, move_head=False)
    torn = cli("audit", "verify")
    assert torn.returncode == 1 and "TORN TAIL" in torn.stdout and "audit repair" in torn.stdout
    blocked = cli("keys", "generate", "third")
    assert blocked.returncode == 1 and "audit repair" in blocked.stderr
    repaired = cli.json("audit", "repair", "--reason", "crash during write")
    assert repaired["repaired"] is True and repaired["kept"] == 1 and repaired["found"] == "torn"
    assert cli.json("audit", "verify")["ok"] is True
    cli.json("keys", "generate", "fourth")
    actions = [e["action"] for e in cli.json("audit", "show")]
    assert actions == ["keys.generate", "audit.repair", "keys.generate"]
    assert cli.json("audit", "repair")["repaired"] is False
