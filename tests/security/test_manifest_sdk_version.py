"""min_sdk_version is checked at manifest parse, build and sign time; verify_plugin's caller
check runs after the signatures and before rollback state or files are touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _sec_support import DEFAULT_FILES, NOW, DictStorage, keys, make_signed, trust_for, write_plugin
from hypothesis import given
from hypothesis import strategies as st

from taskloom.contracts import Capabilities, PluginManifest, UsageError
from taskloom.security import (
    MANIFEST_PAYLOAD_TYPE,
    MalformedManifest,
    RollbackGuard,
    ThresholdNotMet,
    build_manifest,
    manifest_bytes,
    parse_manifest,
    sign_envelope,
    sign_manifest,
    verify_plugin,
)
from taskloom.security._manifest import SDK_VERSION

BAD_VERSIONS = ["1.0", "01.2.3", "1.2.3rc1", "1.2.3-beta", "1.2.3+x", " 1.2.3", "\u0661.2.3", ""]


def _manifest(**changes: Any) -> PluginManifest:
    """A small valid manifest with ``changes`` applied."""
    fields: dict[str, Any] = {
        "name": "demo",
        "version": 1,
        "entry_point": "plugin:setup",
        "publisher": "x",
        "files": (),
        "issued_at": NOW,
        "expires_at": NOW + 10,
        **changes,
    }
    return PluginManifest(**fields)


def _payload(min_sdk_version: object) -> bytes:
    manifest = _manifest()
    raw = json.loads(manifest_bytes(manifest))
    raw["min_sdk_version"] = min_sdk_version
    return json.dumps(raw).encode()


@pytest.mark.parametrize("text", BAD_VERSIONS)
def test_parsing_refuses_a_min_sdk_version_that_is_not_major_minor_patch(text: str) -> None:
    """A signed manifest with a malformed min_sdk_version is MalformedManifest naming the field."""
    with pytest.raises(MalformedManifest, match=r"min_sdk_version .*MAJOR\.MINOR\.PATCH"):
        parse_manifest(_payload(text), max_bytes=1 << 20)


@pytest.mark.parametrize("text", ["0.1.0", "10.20.30", "999999999.0.0", "0.0.0"])
def test_parsing_accepts_major_minor_patch(text: str) -> None:
    """Plain releases parse and keep their text."""
    assert parse_manifest(_payload(text), max_bytes=1 << 20).min_sdk_version == text


def test_a_manifest_without_min_sdk_version_still_defaults_to_0_1_0() -> None:
    """The field stays optional: absent means 0.1.0, as before."""
    raw = json.loads(_payload("0.1.0"))
    del raw["min_sdk_version"]
    manifest = parse_manifest(json.dumps(raw).encode(), max_bytes=1 << 20)
    assert manifest.min_sdk_version == "0.1.0"


@pytest.mark.parametrize("text", BAD_VERSIONS)
def test_building_refuses_a_malformed_min_sdk_version(tmp_path: Path, text: str) -> None:
    """build_manifest will not describe a plugin every verifier would refuse."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    with pytest.raises(UsageError, match="min_sdk_version"):
        build_manifest(
            tmp_path / "p",
            name="demo",
            version=1,
            entry_point="plugin:setup",
            publisher="x",
            capabilities=Capabilities(),
            issued_at=NOW,
            expires_at=NOW + 1,
            min_sdk_version=text,
        )


def test_signing_refuses_a_malformed_min_sdk_version() -> None:
    """sign_manifest will not sign a manifest with min_sdk_version '1.0'."""
    manifest = _manifest(entry_point="a:b", expires_at=NOW + 1, min_sdk_version="1.0")
    with pytest.raises(UsageError, match="min_sdk_version"):
        sign_manifest(manifest, keys(1))


@given(st.text(alphabet="0123456789.", max_size=12))
def test_the_format_is_three_dot_separated_numbers_without_leading_zeros(text: str) -> None:
    """SDK_VERSION accepts a text exactly when it is three canonical decimal ints joined by dots."""
    pieces = text.split(".")
    canonical = (
        len(pieces) == 3
        and all(p.isdigit() and len(p) <= 9 for p in pieces)
        and all(p == str(int(p)) for p in pieces)
    )
    assert (SDK_VERSION.fullmatch(text) is not None) == canonical


class Refuse(Exception):
    """What the caller's check raises in these tests."""


async def test_the_callers_check_sees_the_manifest_before_rollback_and_files(
    tmp_path: Path,
) -> None:
    """A refusal from check_manifest propagates, leaves the rollback state unchanged and
    comes before any file is read (a changed file does not mask it)."""
    envelope = make_signed(tmp_path / "p", keys(1), version=5)
    (tmp_path / "p" / "plugin.py").write_bytes(b"changed after signing\n")
    storage = DictStorage()
    rollback = RollbackGuard(storage)
    seen: list[PluginManifest] = []

    def check(manifest: PluginManifest) -> None:
        seen.append(manifest)
        raise Refuse(manifest.name)

    with pytest.raises(Refuse):
        await verify_plugin(
            tmp_path / "p",
            envelope,
            trust_for(*keys(1)),
            rollback=rollback,
            now=NOW,
            check_manifest=check,
        )
    assert [m.version for m in seen] == [5]
    assert storage.records == {} and storage.streams == {}


async def test_the_callers_check_runs_only_after_the_signatures_checked_out(
    tmp_path: Path,
) -> None:
    """An envelope signed by an untrusted key fails on the signature; the check never runs."""
    envelope = make_signed(tmp_path / "p", keys(2)[1:])
    calls: list[str] = []
    with pytest.raises(ThresholdNotMet):
        await verify_plugin(
            tmp_path / "p",
            envelope,
            trust_for(*keys(1)),
            rollback=RollbackGuard(DictStorage()),
            now=NOW,
            check_manifest=lambda m: calls.append(m.name),
        )
    assert calls == []


async def test_a_passing_check_changes_nothing(tmp_path: Path) -> None:
    """When check_manifest returns, verification goes on and the plugin verifies as before."""
    envelope = make_signed(tmp_path / "p", keys(1))
    verified = await verify_plugin(
        tmp_path / "p", envelope, trust_for(*keys(1)), rollback=RollbackGuard(DictStorage()),
        now=NOW, check_manifest=lambda m: None,
    )  # fmt: skip
    assert set(verified.files) == set(DEFAULT_FILES)


async def test_a_signed_malformed_min_sdk_version_fails_verification(tmp_path: Path) -> None:
    """verify_plugin refuses a properly signed manifest whose min_sdk_version is malformed."""
    write_plugin(tmp_path / "p", DEFAULT_FILES)
    envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, _payload("2.0"), keys(1))
    with pytest.raises(MalformedManifest):
        await verify_plugin(
            tmp_path / "p",
            envelope,
            trust_for(*keys(1)),
            rollback=RollbackGuard(DictStorage()),
            now=NOW,
        )
