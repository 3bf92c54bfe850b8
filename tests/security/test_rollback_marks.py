"""Rollback marks beside the trust store: fail closed when missing or damaged, TUF-style
fast-forward after a revocation, capability-adding updates held for approval, and a
versioned trust store that refuses older copies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from _sec_support import DEFAULT_FILES, NOW, DictStorage, keys, write_plugin

from taskloom.contracts import Capabilities
from taskloom.security import (
    CapabilitiesNotApproved,
    PrivateKey,
    RollbackDetected,
    RollbackGuard,
    RollbackMarks,
    RollbackMarksUnavailable,
    TrustStore,
    TrustStoreRolledBack,
    build_manifest,
    sign_manifest,
    verify_plugin,
)

MAX_SAFE = 2**53 - 1


def _signed(
    root: Path, key: PrivateKey, version: int, caps: Capabilities | None = None
) -> tuple[Path, bytes]:
    write_plugin(root, DEFAULT_FILES)
    manifest = build_manifest(
        root,
        name="demo",
        version=version,
        entry_point="plugin:setup",
        publisher="Example Co",
        capabilities=caps or Capabilities(secrets=("token",)),
        issued_at=NOW - 100,
        expires_at=NOW + 3600,
        min_sdk_version="0.1.0",
    )
    return root, sign_manifest(manifest, [key])


def _trust(*trusted: PrivateKey) -> TrustStore:
    store = TrustStore()
    for key in trusted:
        store.add_key(key.public_key, plugins=["demo"])
    return store


def _verify(signed: tuple[Path, bytes], trust: TrustStore, guard: object) -> int:
    root, envelope = signed
    result = asyncio.run(verify_plugin(root, envelope, trust, rollback=guard, now=NOW))  # type: ignore[arg-type]
    return result.manifest.version


def _guards(tmp_path: Path) -> list[object]:
    marks = RollbackMarks(tmp_path / "trust.marks.json")
    marks.create()
    return [marks, RollbackGuard(DictStorage())]


def test_missing_or_damaged_marks_fail_closed(tmp_path: Path) -> None:
    """No marks file, or one edited by hand: RollbackMarksUnavailable naming the fix."""
    signed = _signed(tmp_path / "p", keys(1)[0], 1)
    marks = RollbackMarks(tmp_path / "trust.marks.json")
    with pytest.raises(RollbackMarksUnavailable, match="rebaseline"):
        _verify(signed, _trust(keys(1)[0]), marks)
    marks.create()
    assert _verify(signed, _trust(keys(1)[0]), marks) == 1
    raw = json.loads(marks.path.read_text())
    raw["body"]["plugins"]["demo"]["version"] = 0  # lower the floor by hand
    marks.path.write_text(json.dumps(raw))
    with pytest.raises(RollbackMarksUnavailable, match="damaged"):
        _verify(signed, _trust(keys(1)[0]), marks)
    marks.path.write_text("{")
    with pytest.raises(RollbackMarksUnavailable, match="damaged"):
        asyncio.run(marks.highest("demo"))


def test_marks_survive_a_new_database(tmp_path: Path) -> None:
    """The floor lives in the file: a fresh run database does not let v1 back in."""
    key = keys(1)[0]
    marks = RollbackMarks(tmp_path / "trust.marks.json")
    marks.create()
    assert _verify(_signed(tmp_path / "v2", key, 2), _trust(key), marks) == 2
    again = RollbackMarks(tmp_path / "trust.marks.json")  # another process, no database
    with pytest.raises(RollbackDetected):
        _verify(_signed(tmp_path / "v1", key, 1), _trust(key), again)


@pytest.mark.parametrize("kind", ["file", "storage"])
def test_revoking_the_key_that_signed_the_floor_resets_it(tmp_path: Path, kind: str) -> None:
    """A compromised key signed 2**53-1; revoking it lets the real release (v3) load."""
    stolen, real = keys(2)
    guard = _guards(tmp_path)[0 if kind == "file" else 1]
    assert _verify(_signed(tmp_path / "evil", stolen, MAX_SAFE), _trust(stolen, real), guard)
    with pytest.raises(RollbackDetected):
        _verify(_signed(tmp_path / "v3", real, 3), _trust(stolen, real), guard)
    rotated = _trust(stolen, real)
    rotated.revoke(stolen.key_id)
    assert _verify(_signed(tmp_path / "v3b", real, 3), rotated, guard) == 3
    with pytest.raises(RollbackDetected):  # and the new floor holds
        _verify(_signed(tmp_path / "v2", real, 2), rotated, guard)


@pytest.mark.parametrize("kind", ["file", "storage"])
def test_an_update_adding_capabilities_waits_for_approval(tmp_path: Path, kind: str) -> None:
    """v2 asking for a new secret is refused until approved; then it loads."""
    key = keys(1)[0]
    guard = _guards(tmp_path)[0 if kind == "file" else 1]
    assert _verify(_signed(tmp_path / "v1", key, 1), _trust(key), guard) == 1
    wider = Capabilities(secrets=("token", "openai_api_key"), network_hosts=("api.openai.com",))
    v2 = _signed(tmp_path / "v2", key, 2, wider)
    with pytest.raises(CapabilitiesNotApproved, match="openai_api_key") as info:
        _verify(v2, _trust(key), guard)
    assert "trust approve demo" in str(info.value)
    same = _signed(tmp_path / "v2same", key, 3, Capabilities(secrets=("token",)))
    assert _verify(same, _trust(key), guard) == 3  # no new capability: no approval needed
    approve = guard.approve("demo", wider)  # type: ignore[attr-defined]
    added = asyncio.run(approve) if asyncio.iscoroutine(approve) else approve
    assert added == {"network_hosts": ["api.openai.com"], "secrets": ["openai_api_key"]}
    assert _verify(_signed(tmp_path / "v4", key, 4, wider), _trust(key), guard) == 4


def test_an_older_trust_store_copy_is_refused(tmp_path: Path) -> None:
    """Each save is a new version; loading a copy older than one seen is refused."""
    path = tmp_path / "trust.json"
    store = _trust(keys(1)[0])
    store.save(path)
    old_copy = path.read_bytes()
    store.revoke(keys(2)[1].key_id)
    store.save(path)
    assert TrustStore.load(path).version == 2
    marks = RollbackMarks(RollbackMarks.beside(path))
    marks.create()
    marks.check_trust_version(TrustStore.load(path).version)
    path.write_bytes(old_copy)
    old = TrustStore.load(path)
    assert old.version == 1
    with pytest.raises(TrustStoreRolledBack):
        marks.check_trust_version(old.version)


def test_verify_plugin_refuses_an_older_trust_store_through_the_marks(tmp_path: Path) -> None:
    """With file marks, verify_plugin itself refuses a trust store older than one seen."""
    key = keys(1)[0]
    marks = RollbackMarks(tmp_path / "trust.marks.json")
    marks.create()
    newer = _trust(key)
    newer.version = 5
    assert _verify(_signed(tmp_path / "v1", key, 1), newer, marks) == 1
    older = _trust(key)
    older.version = 4
    with pytest.raises(TrustStoreRolledBack):
        _verify(_signed(tmp_path / "v2", key, 2), older, marks)


def test_marks_in_an_unwritable_place_fail_with_a_taskloom_error(tmp_path: Path) -> None:
    """A marks path whose directory is a file: RollbackMarksUnavailable, not an OSError."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    marks = RollbackMarks(blocker / "trust.marks.json")
    with pytest.raises(RollbackMarksUnavailable):
        marks.create()
    with pytest.raises(RollbackMarksUnavailable):
        marks.check_trust_version(1)
