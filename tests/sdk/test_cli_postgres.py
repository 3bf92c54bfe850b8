"""The command line on PostgreSQL: ``[storage] kind = "postgres"`` with the DSN from a secret,
``taskloom run`` and ``runs``, then ``submit`` and a real ``taskloom worker`` process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cli_support import Cli, run_one_queued_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg_cli(tmp_path: Path, postgres_dsn: str) -> Cli:
    """A CLI whose taskloom.toml stores in PostgreSQL, the DSN in the env secret store."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "hello.json").write_text((ROOT / "examples" / "hello.json").read_text())
    schema = "tl_cli_" + uuid.uuid4().hex[:12]
    (work / "taskloom.toml").write_text(
        f'[storage]\nkind = "postgres"\ndsn = {{ secret = "pg_dsn" }}\nschema = "{schema}"\n'
        '[secrets]\nkind = "env"\n'
    )
    cli = Cli(tmp_path / "home", work)
    cli.env["TASKLOOM_SECRET_PG_DSN"] = postgres_dsn
    return cli


def test_run_and_worker_on_postgres(pg_cli: Cli, postgres_dsn: str) -> None:
    """run stores the run in PostgreSQL; a submitted run is taken by `taskloom worker`;
    the password appears in no output."""
    password = postgres_dsn.split(":")[2].split("@")[0]
    ran = pg_cli("run", "hello.json", "-i", "name=Ada", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["status"] == "succeeded"
    submitted = pg_cli.json("submit", "hello.json", "-i", "name=Bo")
    out, printed = run_one_queued_run(pg_cli, submitted["run_id"])
    assert out["succeeded"] == 1
    assert len(pg_cli.json("runs")) == 2
    assert password not in ran.stdout + ran.stderr + printed


def test_a_plain_text_password_in_the_config_is_refused(pg_cli: Cli) -> None:
    """A DSN with its password written into taskloom.toml: exit 2, password not echoed."""
    (pg_cli.workdir / "taskloom.toml").write_text(
        '[storage]\nkind = "postgres"\ndsn = "postgresql://u:hunter2-cli@db/x"\n'
    )
    done = pg_cli("runs")
    assert done.returncode == 2
    assert "secret" in done.stderr and "hunter2-cli" not in done.stdout + done.stderr
