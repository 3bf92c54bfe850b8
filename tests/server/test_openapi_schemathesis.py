"""schemathesis against /openapi.json of a running `taskloom serve`: no 5xx, every
response matches the document (status, media type, body schema)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_support import serve_process

from taskloom.sdk._cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bounded schemathesis run (10 examples per operation, fixed seed, the stateful
    phase following POST /api/tasks to the run it made) passes every check."""
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    shutil.copy(ROOT / "examples" / "hello.json", tmp_path / "pipelines" / "hello.json")
    (tmp_path / "taskloom.toml").write_text('[server]\npipelines = ["pipelines"]\n')
    assert main(["tokens", "create", "--scope", "admin", "--json"]) == 0
    token = json.loads(capsys.readouterr().out)["token"]
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    with serve_process("--workers", "2") as base:
        done = subprocess.run(
            [
                st,
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                "10",
                "--seed",
                "20261206",
                "--request-timeout",
                "10",
                "--generation-database",
                "none",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
