"""A plugin's min_sdk_version is checked against the running taskloom before its code runs."""

from __future__ import annotations

import importlib.metadata
import sys
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_plugin_host import Sink

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    Capabilities,
    PluginError,
    PluginIncompatible,
    PluginManifest,
)
from taskloom.sdk._plugins.host import (
    CODE_DIR,
    ENVELOPE_NAME,
    PluginHost,
    UnsignedPluginWarning,
    check_sdk_version,
    discover,
    parse_installed_version,
    parse_min_sdk_version,
    sdk_satisfies,
)
from taskloom.security import (
    MANIFEST_PAYLOAD_TYPE,
    PrivateKey,
    RollbackGuard,
    TrustStore,
    build_manifest,
    generate_key,
    manifest_bytes,
    sign_envelope,
)
from taskloom.security._manifest import check_sdk_version_format

# Importing the module has a visible effect, so a test can tell whether it ever ran.
MARKING_PLUGIN = """
import pathlib
pathlib.Path(MARKER).write_text("imported")

class P:
    async def setup(self, context):
        return None

    async def teardown(self):
        return None

plugin = P()
"""


def _write_plugin(
    base: Path,
    name: str,
    min_sdk_version: str,
    key: PrivateKey,
    *,
    version: int = 1,
    marker: Path | None = None,
) -> Path:
    """A plugin whose module writes ``marker`` when imported, signed by ``key``.

    The envelope is signed directly (not with sign_manifest), so a manifest that
    taskloom's own signer would refuse can be built too.
    """
    root = base / name
    code = root / CODE_DIR
    code.mkdir(parents=True, exist_ok=True)
    target = marker or base / f"{name}.imported"
    (code / f"{name}.py").write_text(MARKING_PLUGIN.replace("MARKER", repr(str(target))))
    now = int(time.time())
    manifest = build_manifest(
        code,
        name=name,
        version=version,
        entry_point=f"{name}:plugin",
        publisher="tests",
        capabilities=Capabilities(),
        issued_at=now - 10,
        expires_at=now + 3600,
        min_sdk_version="0.1.0",
    )
    payload = manifest_bytes(manifest).replace(
        b'"min_sdk_version":"0.1.0"', b'"min_sdk_version":' + f'"{min_sdk_version}"'.encode()
    )
    assert min_sdk_version.encode() in payload
    (root / ENVELOPE_NAME).write_bytes(sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, [key]))
    return root


@pytest.fixture
def key() -> PrivateKey:
    return generate_key()


@pytest.fixture
def trust(key: PrivateKey) -> TrustStore:
    store = TrustStore()
    store.add_key(key.public_key, plugins=["*"])
    return store


def _host(
    trust: TrustStore,
    *,
    sdk_version: str | None = "0.1.0",
    dev_mode: bool = False,
    storage: MemoryStorage | None = None,
) -> PluginHost:
    storage = storage or MemoryStorage()
    return PluginHost(
        storage=storage,
        executors=Sink(),
        trust=trust,
        rollback=RollbackGuard(storage),
        dev_mode=dev_mode,
        sdk_version=sdk_version,
    )


def _modules(name: str) -> list[str]:
    return [m for m in sys.modules if m.startswith(f"taskloom_plugins.{name}")]


async def test_a_plugin_needing_a_newer_taskloom_is_refused_before_any_import(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """min_sdk_version above the running version: PluginIncompatible naming the plugin, both
    versions and the fix; none of the plugin's code ran."""
    _write_plugin(tmp_path, "future", "0.2.0", key)
    host = _host(trust, sdk_version="0.1.0")
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.verified is False
    assert report.error_type == "PluginIncompatible"
    assert "'future'" in (report.error or "") and "0.2.0" in (report.error or "")
    assert "0.1.0" in (report.error or "") and "upgrade taskloom" in (report.error or "")
    assert not (tmp_path / "future.imported").exists()
    assert _modules("future") == []
    await host.aclose()


async def test_the_error_carries_the_plugin_and_both_versions(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """verify() raises PluginIncompatible with plugin, required and running attributes."""
    root = _write_plugin(tmp_path, "future", "1.10.0", key)
    host = _host(trust, sdk_version="1.9.7")
    (source,) = discover([root], entry_points=False)
    with pytest.raises(PluginIncompatible) as info:
        await host.verify(source)
    assert (info.value.plugin, info.value.required, info.value.running) == (
        "future",
        "1.10.0",
        "1.9.7",
    )


@pytest.mark.parametrize(
    ("required", "running"),
    [("0.1.0", "0.1.0"), ("0.0.9", "0.1.0"), ("1.9.0", "1.10.0"), ("1.2.3", "2.0.0")],
)
async def test_a_plugin_needing_this_or_an_older_taskloom_loads(
    tmp_path: Path, key: PrivateKey, trust: TrustStore, required: str, running: str
) -> None:
    """Equal or older min_sdk_version loads (1.10.0 is newer than 1.9.0, not older)."""
    name = "ok_" + required.replace(".", "_")
    _write_plugin(tmp_path, name, required, key)
    host = _host(trust, sdk_version=running)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.loaded, report.error
    assert (tmp_path / f"{name}.imported").exists()
    await host.aclose()


async def test_a_refused_plugin_does_not_move_the_rollback_mark(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """After v2 is refused for needing a newer taskloom, v1 (made for this one) still loads."""
    storage = MemoryStorage()
    _write_plugin(tmp_path / "new", "tool", "9.0.0", key, version=2)
    host = _host(trust, storage=storage)
    (report,) = await host.load(discover([tmp_path / "new"], entry_points=False))
    assert report.error_type == "PluginIncompatible"
    _write_plugin(tmp_path / "old", "tool", "0.1.0", key, version=1)
    (report,) = await host.load(discover([tmp_path / "old"], entry_points=False))
    assert report.loaded, report.error
    await host.aclose()


async def test_the_version_is_checked_before_any_file_is_read(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A plugin needing a newer taskloom is refused as such even if a file was changed."""
    root = _write_plugin(tmp_path, "future", "3.0.0", key)
    (root / CODE_DIR / "future.py").write_text("raise SystemExit('tampered')\n")
    host = _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.error_type == "PluginIncompatible"


async def test_by_default_the_installed_distribution_version_is_compared(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Without sdk_version the host compares with importlib.metadata's taskloom version."""
    host = _host(trust, sdk_version=None)
    assert host.sdk_version == importlib.metadata.version("taskloom")
    _write_plugin(tmp_path, "far_future", "999.0.0", key)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.error_type == "PluginIncompatible"
    assert importlib.metadata.version("taskloom") in (report.error or "")


async def test_development_mode_never_loads_a_plugin_needing_a_newer_taskloom(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """Development mode skips signature checks, not the version check: signed or unsigned,
    the plugin is refused (with no 'loading without verification' warning)."""
    _write_plugin(tmp_path / "signed", "signed_future", "0.5.0", key)
    _write_plugin(tmp_path / "unsigned", "unsigned_future", "0.5.0", generate_key())
    host = _host(trust, dev_mode=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reports = await host.load(
            discover([tmp_path / "signed", tmp_path / "unsigned"], entry_points=False)
        )
    assert [r.error_type for r in reports] == ["PluginIncompatible", "PluginIncompatible"]
    assert not [w for w in caught if issubclass(w.category, UnsignedPluginWarning)]
    assert not list(tmp_path.glob("*.imported"))
    await host.aclose()


async def test_development_mode_refuses_an_unparsable_min_sdk_version(
    tmp_path: Path, trust: TrustStore
) -> None:
    """An unsigned plugin with min_sdk_version '1.0' is refused, saying what the format is."""
    _write_plugin(tmp_path, "sloppy", "1.0", generate_key())
    host = _host(trust, dev_mode=True)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert not report.loaded and report.error_type == "PluginError"
    assert "MAJOR.MINOR.PATCH" in (report.error or "")
    assert not (tmp_path / "sloppy.imported").exists()


async def test_a_signed_unparsable_min_sdk_version_is_refused_by_the_verifier(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    """A signed manifest whose min_sdk_version is not MAJOR.MINOR.PATCH is malformed."""
    _write_plugin(tmp_path, "sloppy", "1.0.0-beta", key)
    host = _host(trust)
    (report,) = await host.load(discover([tmp_path], entry_points=False))
    assert report.error_type == "MalformedManifest"
    assert "min_sdk_version" in (report.error or "")


# --- the comparison itself --------------------------------------------------------------

parts = st.integers(min_value=0, max_value=999_999_999)
releases = st.tuples(parts, parts, parts)


def _text(release: tuple[int, int, int]) -> str:
    return ".".join(map(str, release))


def _manifest(min_sdk_version: str) -> PluginManifest:
    return PluginManifest(
        name="p",
        version=1,
        entry_point="p:plugin",
        publisher="tests",
        files=(),
        issued_at=0,
        expires_at=1,
        min_sdk_version=min_sdk_version,
    )


@given(required=releases, running=releases)
def test_the_comparison_agrees_with_tuple_comparison_of_the_parsed_ints(
    required: tuple[int, int, int], running: tuple[int, int, int]
) -> None:
    """A plugin is refused exactly when the running release tuple is below the required one."""
    assert parse_min_sdk_version(_text(required)) == required
    assert parse_installed_version(_text(running)) == (running, False)
    assert sdk_satisfies(required, running) == (running >= required)
    manifest = _manifest(_text(required))
    if running >= required:
        check_sdk_version(manifest, _text(running))
    else:
        with pytest.raises(PluginIncompatible):
            check_sdk_version(manifest, _text(running))


@given(
    required=releases,
    running=releases,
    suffix=st.sampled_from(["rc1", "a2", "b0", ".dev3", "rc1+local.7", "alpha"]),
)
def test_a_pre_release_is_older_than_its_release(
    required: tuple[int, int, int], running: tuple[int, int, int], suffix: str
) -> None:
    """Running 1.2.0rc1 satisfies only plugins needing less than 1.2.0."""
    assert parse_installed_version(_text(running) + suffix) == (running, True)
    refused = False
    try:
        check_sdk_version(_manifest(_text(required)), _text(running) + suffix)
    except PluginIncompatible:
        refused = True
    assert refused == (running <= required)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.2", ((0, 2, 0), False)),
        ("0.2.0.post1", ((0, 2, 0), False)),
        ("0.2.0+local.1", ((0, 2, 0), False)),
        ("0.2.0.post1.dev2", ((0, 2, 0), False)),
        ("0.2.0RC1", ((0, 2, 0), True)),
        ("garbage", None),
        ("0.2.0.1", None),
        ("0.2.0~", None),
    ],
)
def test_installed_versions_are_read_as_pep_440_releases(
    text: str, expected: tuple[tuple[int, int, int], bool] | None
) -> None:
    """Post and local versions are the release; pre and dev versions precede it; others fail."""
    assert parse_installed_version(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1.0",
        "1",
        "01.0.0",
        "1.00.0",
        "1.0.0rc1",
        "1.0.0-beta",
        "1.0.0+local",
        " 1.0.0",
        "1.0.0\n",
        "v1.0.0",
        "1.0.0.0",
        "\u0661.0.0",
        "1234567890.0.0",
        "",
    ],
)
def test_min_sdk_version_must_be_exactly_major_minor_patch(text: str) -> None:
    """Anything but MAJOR.MINOR.PATCH (ASCII, no leading zeros, no suffix) is not parsed,
    and the host refuses it with a PluginError that says the format."""
    assert parse_min_sdk_version(text) is None
    with pytest.raises(PluginError, match=r"MAJOR\.MINOR\.PATCH"):
        check_sdk_version(_manifest(text), "99.0.0")


def test_an_unreadable_running_version_refuses_rather_than_guesses() -> None:
    """A running version that is no release number is a PluginError telling to reinstall."""
    with pytest.raises(PluginError, match="reinstall taskloom"):
        check_sdk_version(_manifest("0.1.0"), "nightly")


@given(st.text(alphabet="0123456789.-+rcv \u0661", max_size=14))
def test_the_host_and_the_manifest_parser_accept_the_same_min_sdk_versions(text: str) -> None:
    """The host's strict parser and the security layer's format check agree on every text."""
    assert (parse_min_sdk_version(text) is not None) == (check_sdk_version_format(text) is None)
