"""The secret canary: a full CLI run whose provider echoes its API key and whose plugin
returns the secret it read, then a scan of everything taskloom wrote or printed.

Nothing may hold either value: not the data directory (database, WAL, audit log,
cache), not the project directory, not the output of ``run``, ``run --json``,
``run --debug``, ``show``, ``show --json`` or ``events --json``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_cli_story import EXAMPLES, Cli

from taskloom.contracts import MASK

API_KEY = "sk-canary-3f9a1c77e2b54d0f"
PLUGIN_TOKEN = "tok-canary-8b1e6d20c4f3"
CANARIES = (API_KEY, PLUGIN_TOKEN)


class _EchoHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose every reply repeats the bearer token it got."""

    def do_POST(self) -> None:
        request = self.rfile.read(int(self.headers.get("content-length", "0")))
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        if b"fail please" in request:  # an error body quoting the key, as some gateways do
            error = json.dumps({"error": {"message": f"key {token} is not allowed here"}})
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(error)))
            self.end_headers()
            self.wfile.write(error.encode())
            return
        body = json.dumps(
            {
                "id": "chatcmpl-canary",
                "object": "chat.completion",
                "model": "echo",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"your key is {token}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the CLI's output, not the server's."""


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


LEAKY_TOML = """[plugin]
name = "leaky"
version = 1
entry_point = "leaky:plugin"
publisher = "canary"
valid_days = 30

[capabilities]
steps = ["leak"]
secrets = ["plugin_token"]
"""

LEAKY_CODE = """
from typing import Any


class Leaky:
    async def setup(self, context: Any) -> None:
        self.context = context
        context.register_step("leak", self.leak)

    async def teardown(self) -> None:
        return None

    async def leak(self, args: Any) -> dict[str, str]:
        token = (await self.context.secret("plugin_token")).reveal()
        return {"token": token, "note": f"the token is {token}"}


plugin = Leaky()
"""

PIPELINE = {
    "taskloom": "pipeline/v1",
    "name": "canary",
    "steps": [
        {"id": "leak", "uses": "leaky.leak", "with": {}},
        {
            "id": "echo",
            "executor": "echo",
            "model": "echo",
            "temperature": 0,
            "cache": True,
            "prompt": "say something",
        },
        {
            "id": "again",
            "executor": "echo",
            "model": "echo",
            "temperature": 0,
            "prompt": "repeat: {{steps.echo.output}} {{steps.leak.output.note}}",
            "needs": ["echo", "leak"],
        },
        {
            "id": "refused",
            "executor": "echo",
            "model": "echo",
            "prompt": "fail please",
            "on_error": "continue",
            "retry": {"max_attempts": 1},
        },
    ],
    "output": {
        "leak": "{{steps.leak.output}}",
        "echo": "{{steps.echo.output}}",
        "again": "{{steps.again.output}}",
    },
}


def _forms(value: str) -> list[bytes]:
    """The raw value and the encodings a careless writer might store it in."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


def _leaks(blob: bytes) -> list[str]:
    return [value for value in CANARIES for form in _forms(value) if form in blob]


def test_no_secret_value_reaches_anything_taskloom_writes_or_prints(
    tmp_path: Path, echo_server: str
) -> None:
    """Echoed key and leaked plugin secret: zero occurrences in files, database and output."""
    work = tmp_path / "project"
    plugin = work / "plugins" / "leaky"
    (plugin / "src").mkdir(parents=True)
    (plugin / "plugin.toml").write_text(LEAKY_TOML)
    (plugin / "src" / "leaky.py").write_text(LEAKY_CODE)
    (work / "pipeline.json").write_text(json.dumps(PIPELINE))
    (work / "taskloom.toml").write_text(
        '[plugins]\ndirs = ["plugins"]\ntrust = "trust.json"\n\n'
        '[secrets]\nkind = "env"\n\n'
        f'[executors.echo]\ntype = "openai"\nbase_url = "{echo_server}"\nmodel = "echo"\n'
        'api_key = { secret = "openai_api_key" }\n'
    )
    assert (EXAMPLES / "plugins").is_dir()  # the story test's layout, reused
    cli = Cli(tmp_path / "home", work)
    cli.env["TASKLOOM_SECRET_OPENAI_API_KEY"] = API_KEY
    cli.env["TASKLOOM_SECRET_PLUGIN_TOKEN"] = PLUGIN_TOKEN
    cli.json("keys", "generate", "me")
    cli.json("sign", "plugins/leaky", "--key", "me")
    cli.json("trust", "add", "me", "--plugins", "leaky")

    printed: list[str] = []
    result = cli.json("run", "pipeline.json")
    printed.append(json.dumps(result))
    assert result["status"] == "succeeded"
    assert "your key is" in result["output"]["echo"]  # the provider did echo: the test bites
    assert result["output"]["leak"]["token"] != ""
    run_id = result["run_id"]
    for args in (
        ("run", "pipeline.json"),
        ("run", "pipeline.json", "--debug"),
        ("run", "pipeline.json", "--json", "--debug"),
        ("show", run_id),
        ("show", run_id, "--json"),
        ("events", run_id, "--json"),
        ("runs", "--json"),
        ("audit", "show", "--json"),
    ):
        done = cli(*args)
        assert done.returncode == 0, (args, done.stderr)
        printed.extend((done.stdout, done.stderr))
    # the second run took the echo step from the cache: the cached reply is masked too
    shown = cli.json("show", run_id)
    assert {s["step"] for s in shown["steps"]} == {"leak", "echo", "again", "refused"}
    failed = [e for e in cli.json("events", run_id) if e["type"] == "step.failed"]
    assert failed and MASK in json.dumps(failed)  # the error body quoted the key: masked

    leaks = {value for text in printed for value in _leaks(text.encode())}
    written = {
        f"{path}: {value}"
        for root in (tmp_path / "home", work)
        for path in root.rglob("*")
        if path.is_file() and path.name not in ("taskloom.toml",)
        for value in _leaks(path.read_bytes())
    }
    assert not leaks, f"secret values printed: {leaks}"
    assert not written, f"secret values written: {sorted(written)}"


def test_the_scan_finds_a_planted_value(tmp_path: Path) -> None:
    """The scan itself works: a file holding a canary in base64 is found."""
    planted = tmp_path / "planted.bin"
    planted.write_bytes(b"x" + base64.b64encode(API_KEY.encode()) + b"y")
    assert _leaks(planted.read_bytes()) == [API_KEY]
