"""Manifest content rules checked at sign *and* at verify: capabilities, version 0,
printable publisher text, Unicode-equivalent paths, and taskloom's own errors."""

from __future__ import annotations

import unicodedata

import pytest
from _sec_support import NOW

from taskloom.contracts import Capabilities, FileEntry, PluginManifest, TaskloomError
from taskloom.security import (
    MANIFEST_PAYLOAD_TYPE,
    MalformedManifest,
    PublicKey,
    TrustStore,
    UnsafeFile,
    WeakKey,
    generate_key,
    manifest_bytes,
    parse_manifest,
    sign_envelope,
    sign_manifest,
)
from taskloom.security._capabilities import parse_host_rule
from taskloom.security._ed25519 import SMALL_ORDER_YS

DIGEST = "0" * 64


def _manifest(**changes: object) -> PluginManifest:
    fields: dict[str, object] = {
        "name": "demo",
        "version": 1,
        "entry_point": "demo:plugin",
        "publisher": "Example Corp",
        "files": (FileEntry(path="demo.py", size=1, sha256=DIGEST),),
        "capabilities": Capabilities(steps=("run",)),
        "issued_at": NOW,
        "expires_at": NOW + 100,
    }
    fields.update(changes)
    return PluginManifest(**fields)  # type: ignore[arg-type]


BAD_CAPABILITIES = [
    Capabilities(steps=("*",)),
    Capabilities(steps=("a/b",)),
    Capabilities(executors=("..",)),
    Capabilities(storage_namespaces=("ns..other",)),
    Capabilities(storage_namespaces=("trust.rollback/x",)),
    Capabilities(secrets=("openai_*",)),
    Capabilities(secrets=("../etc",)),
    Capabilities(network_hosts=("*",)),
    Capabilities(network_hosts=("api.*.com",)),
    Capabilities(network_hosts=("api.example.com/v1",)),
    Capabilities(network_hosts=("user@api.example.com",)),
    Capabilities(network_hosts=("ftp://api.example.com",)),
    Capabilities(network_hosts=("api.example.com:99999",)),
]


@pytest.mark.parametrize("caps", BAD_CAPABILITIES, ids=repr)
def test_bad_capability_strings_are_refused_at_sign(caps: Capabilities) -> None:
    """Wildcards beyond '*.domain', '..', '/' and malformed hosts cannot be signed."""
    with pytest.raises(MalformedManifest, match="capabilities"):
        sign_manifest(_manifest(capabilities=caps), [generate_key()])


@pytest.mark.parametrize("caps", BAD_CAPABILITIES, ids=repr)
def test_bad_capability_strings_are_refused_at_verify(caps: Capabilities) -> None:
    """A hand-signed manifest holding a bad capability fails the strict parse."""
    payload = manifest_bytes(_manifest(capabilities=caps))
    with pytest.raises(MalformedManifest, match="capabilities"):
        parse_manifest(payload, max_bytes=1 << 20)


def test_the_documented_host_forms_parse() -> None:
    """HOST, HOST:PORT, http(s)://HOST[:PORT] and *.domain are the accepted forms."""
    rule = parse_host_rule("api.example.com")
    assert (rule.scheme, rule.host, rule.port, rule.subdomains) == (
        "https",
        "api.example.com",
        443,
        False,
    )
    assert parse_host_rule("http://localhost:8080").admits("http", "localhost", 8080)
    assert not parse_host_rule("http://localhost:8080").admits("http", "localhost", 80)
    wild = parse_host_rule("*.example.com")
    assert wild.admits("https", "a.b.example.com", 443)
    assert not wild.admits("https", "example.com", 443)
    assert not wild.admits("https", "badexample.com", 443)
    sign_manifest(
        _manifest(capabilities=Capabilities(network_hosts=("*.example.com", "10.0.0.1:8443"))),
        [generate_key()],
    )


def test_version_zero_is_refused_at_sign_and_verify() -> None:
    """Plugin versions start at 1: 0 cannot be signed, and a signed 0 does not parse."""
    with pytest.raises(MalformedManifest, match="version"):
        sign_manifest(_manifest(version=0), [generate_key()])
    with pytest.raises(MalformedManifest, match="version"):
        parse_manifest(manifest_bytes(_manifest(version=0)), max_bytes=1 << 20)


@pytest.mark.parametrize("publisher", ["Evil\x1b]0;pwned\x07", "Good\u202eevil", "A\x9b31m"])
def test_terminal_escapes_in_the_publisher_are_refused(publisher: str) -> None:
    """A publisher name with control or bidi characters is refused at sign and at verify."""
    with pytest.raises(MalformedManifest, match="publisher"):
        sign_manifest(_manifest(publisher=publisher), [generate_key()])
    with pytest.raises(MalformedManifest, match="publisher"):
        parse_manifest(manifest_bytes(_manifest(publisher=publisher)), max_bytes=1 << 20)


def test_nfc_and_nfd_spellings_of_one_path_are_refused() -> None:
    """'café.py' composed and decomposed is one file on macOS: listing both is refused."""
    composed = unicodedata.normalize("NFC", "café.py")
    decomposed = unicodedata.normalize("NFD", "café.py")
    assert composed != decomposed
    files = (
        FileEntry(path=composed, size=1, sha256=DIGEST),
        FileEntry(path=decomposed, size=1, sha256=DIGEST),
    )
    with pytest.raises(UnsafeFile, match="normalization"):
        sign_manifest(_manifest(files=files), [generate_key()])
    with pytest.raises(UnsafeFile):
        parse_manifest(manifest_bytes(_manifest(files=files)), max_bytes=1 << 20)


def test_signing_an_out_of_range_integer_raises_taskloom_errors() -> None:
    """A version beyond 2**53 - 1 is MalformedManifest, never rfc8785's own error."""
    with pytest.raises(MalformedManifest) as info:
        sign_manifest(_manifest(version=2**60), [generate_key()])
    assert isinstance(info.value, TaskloomError)
    with pytest.raises(TaskloomError):
        sign_manifest(_manifest(), "not a key list")  # type: ignore[arg-type]
    with pytest.raises(TaskloomError):
        sign_envelope(MANIFEST_PAYLOAD_TYPE, b"{}", [object()])  # type: ignore[list-item]


def test_a_weak_root_key_is_refused() -> None:
    """An application-supplied root key of small order is refused before it checks anything."""
    key = generate_key()
    data = sign_envelope("application/vnd.taskloom.trust-store+json", b"{}", [key])
    y = sorted(SMALL_ORDER_YS)[0]
    weak = PublicKey(y.to_bytes(32, "little"))
    with pytest.raises(WeakKey):
        TrustStore.from_bytes(data, root_key=weak)
