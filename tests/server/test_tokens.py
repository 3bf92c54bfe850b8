"""API tokens: the store (hashed, scoped, expiring, revocable) and `taskloom tokens`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import hello_pipeline, serve_process

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import UsageError
from taskloom.sdk._cli.main import main
from taskloom.sdk._cli.server import is_loopback
from taskloom.sdk.server import TokenStore, parse_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_token_is_stored_only_as_its_hash() -> None:
    """The token verifies; nothing stored holds the token or its secret part."""
    storage = MemoryStorage()
    store = TokenStore(storage)
    token, info = await store.create(scope="submit", name="ci")
    assert token.startswith("tlk_") and info.scope == "submit" and info.name == "ci"
    assert (await store.verify(token)) == info
    secret = token.rsplit("_", 1)[1]
    for namespace in ("api_tokens", "api_token_names"):
        for record in await storage.scan(namespace):
            assert secret.encode() not in record.value and token.encode() not in record.value


async def test_verify_refuses_near_misses_expired_and_revoked_tokens() -> None:
    """A token with one character changed, a truncated one, an expired one and a
    revoked one all fail; scopes are ordered read < submit < admin."""
    clock = Clock()
    store = TokenStore(MemoryStorage(), clock=clock)
    token, info = await store.create(scope="read", name="reader", expires_in_s=60)
    assert await store.verify(token) is not None
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (flipped, token[:-1], token + "x", "", "tlk_", token.upper()):
        assert await store.verify(bad) is None, bad
    assert info.allows("read") and not info.allows("submit") and not info.allows("admin")
    clock.now += 61
    assert await store.verify(token) is None
    admin, admin_info = await store.create(scope="admin", name="root")
    assert admin_info.allows("submit") and admin_info.allows("read")
    assert (await store.revoke("root")) is not None
    assert await store.verify(admin) is None
    assert await store.revoke("root") is None


async def test_names_are_unique_and_checked() -> None:
    """A second token of one name is refused (revoke first); bad names, scopes and
    lifetimes are UsageErrors that say what is allowed."""
    store = TokenStore(MemoryStorage())
    await store.create(scope="read", name="dash")
    with pytest.raises(UsageError, match="exists already"):
        await store.create(scope="admin", name="dash")
    for name in ("", "a b", "../x", "x" * 65, ".hidden"):
        with pytest.raises(UsageError, match="token name"):
            await store.create(scope="read", name=name)
    with pytest.raises(UsageError, match="scope must be one of"):
        await store.create(scope="root", name="other")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        await store.create(scope="read", name="later", expires_in_s=0)
    assert [t.name for t in await store.list()] == ["dash"]


def test_durations_read_as_seconds() -> None:
    """--expires takes a number and a unit; anything else is refused."""
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200 and parse_duration("1.5m") == 90
    assert parse_duration("2w") == 2 * 604800 and parse_duration("45s") == 45
    for bad in ("", "30", "d", "-1d", "0h", "1y", "1 d d"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_loopback_addresses() -> None:
    """Only loopback addresses count as local."""
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.com", ""):
        assert not is_loopback(host), host


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TASKLOOM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tokens_cli_create_list_revoke(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tokens create --json` prints {token, name, scope} once; `list` never shows the
    token; `revoke` removes it; bad input exits 2 with one line."""
    code, out, _ = _cli(
        capsys,
        "tokens",
        "create",
        "--scope",
        "read",
        "--name",
        "viewer",
        "--expires",
        "30d",
        "--json",
    )
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"token", "name", "scope"}
    assert created["name"] == "viewer" and created["scope"] == "read"
    code, out, _ = _cli(capsys, "tokens", "list", "--json")
    listed = json.loads(out)
    assert [t["name"] for t in listed] == ["viewer"] and created["token"] not in out
    assert listed[0]["expires_at"] - listed[0]["created_at"] == pytest.approx(30 * 86400)
    code, out, err = _cli(capsys, "tokens", "create", "--scope", "read", "--name", "viewer")
    assert code == 2 and "exists already" in err
    code, out, err = _cli(capsys, "tokens", "create", "--scope", "read", "--expires", "soon")
    assert code == 2 and "positive duration" in err
    code, out, err = _cli(capsys, "tokens", "create", "--scope", "root")
    assert code == 2
    code, out, _ = _cli(capsys, "tokens", "revoke", "viewer", "--json")
    assert code == 0 and json.loads(out)["revoked"] is True
    code, out, err = _cli(capsys, "tokens", "revoke", "viewer")
    assert code == 2 and "no token named" in err


def test_serve_refuses_a_public_address_without_a_token(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`taskloom serve --host 0.0.0.0` with no unexpired token exits 2 and says how to
    create one, before listening."""
    code, _out, err = _cli(capsys, "serve", "--host", "0.0.0.0", "--port", "1")
    assert code == 2
    assert "refusing to listen on 0.0.0.0" in err and "tokens create" in err


def test_taskloom_serve_end_to_end(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`taskloom serve` (a real process) answers /healthz, runs a submitted pipeline in
    its in-process worker with a token made by `taskloom tokens create`, and stops on
    SIGINT."""
    _code, out, _ = _cli(capsys, "tokens", "create", "--scope", "submit", "--json")
    token = json.loads(out)["token"]
    with serve_process("--workers", "2") as base:
        deadline = time.monotonic() + 30
        headers = {"authorization": f"Bearer {token}"}
        submitted = httpx.post(
            f"{base}/api/tasks", json={"pipeline": hello_pipeline()}, headers=headers, timeout=10
        )
        assert submitted.status_code == 202, submitted.text
        detail: dict[str, Any] = {}
        while time.monotonic() < deadline:
            detail = httpx.get(
                f"{base}{submitted.json()['url']}", headers=headers, timeout=10
            ).json()
            if detail["status"] == "succeeded":
                break
            time.sleep(0.1)
        assert detail["status"] == "succeeded", detail
        assert httpx.get(f"{base}/api/tasks", timeout=10).status_code == 401
