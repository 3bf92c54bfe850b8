"""taskloom's security layer: keys, signed plugin manifests, trust, redaction, audit.

Plugins are verified before any of their code is imported: a DSSE-style
envelope signed with Ed25519 keys, checked against an application-owned
``TrustStore`` in a fixed order (see ``verify_plugin``), yielding the exact
verified bytes to load code from. The ``AuditLog`` chains SHA-256 hashes over a
storage stream so that tampering is visible. This portion imports only
``taskloom.contracts`` and third-party libraries.

Publisher side::

    key = generate_key()
    save_private_key(key, "publisher.pem", passphrase)        # PKCS#8, encrypted, 0600
    save_public_key(key.public_key, "publisher.pub")          # SubjectPublicKeyInfo PEM
    manifest = build_manifest("my_plugin/", name="my-plugin", version=3,
                              entry_point="my_plugin:Plugin", publisher="Me",
                              capabilities=Capabilities(secrets=("api_key",)),
                              issued_at=now, expires_at=now + 90 * 86400,
                              min_sdk_version="0.1.0")
    envelope = sign_manifest(manifest, [key])                 # bytes to ship

Application side::

    trust = TrustStore.load("trust.json", root_key=root_public_key)
    verified = await verify_plugin("my_plugin/", envelope, trust,
                                   rollback=RollbackGuard(storage),
                                   expected_name="my-plugin")
    verified.files["__init__.py"]   # verified bytes; paths are relative to the directory
"""

from __future__ import annotations

from taskloom.security._audit import AuditEntry, AuditLog, AuditReport, SignedHead
from taskloom.security._envelope import (
    Envelope,
    Signature,
    add_signature,
    pae,
    parse_envelope,
    sign_envelope,
)
from taskloom.security._errors import (
    CapabilitiesNotApproved,
    FileDigestMismatch,
    FileSetMismatch,
    InputTooLarge,
    KeyFileError,
    KeyNotInScope,
    KeyRevoked,
    MalformedEnvelope,
    MalformedInput,
    MalformedManifest,
    MalformedTrustStore,
    ManifestExpired,
    ManifestNotYetValid,
    NameMismatch,
    RollbackDetected,
    RollbackMarksUnavailable,
    SignatureInvalid,
    ThresholdNotMet,
    TrustStoreRolledBack,
    UnsafeFile,
    VersionReused,
    WeakKey,
    WrongPayloadType,
)
from taskloom.security._keys import (
    PrivateKey,
    PublicKey,
    generate_key,
    key_id_of,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
)
from taskloom.security._manifest import (
    MANIFEST_PAYLOAD_TYPE,
    build_manifest,
    manifest_bytes,
    parse_manifest,
    sign_manifest,
)
from taskloom.security._marks import RollbackMarks
from taskloom.security._redact import Redactor
from taskloom.security._strictjson import loads_strict
from taskloom.security._trust import (
    TRUST_STORE_PAYLOAD_TYPE,
    RollbackGuard,
    RollbackState,
    TrustedKey,
    TrustStore,
    check_public_key,
)
from taskloom.security._verify import (
    MAX_ENVELOPE_BYTES,
    MAX_PLUGIN_BYTES,
    VerifiedManifest,
    VerifiedPlugin,
    verify_manifest,
    verify_plugin,
)

__all__ = [
    "MANIFEST_PAYLOAD_TYPE",
    "MAX_ENVELOPE_BYTES",
    "MAX_PLUGIN_BYTES",
    "TRUST_STORE_PAYLOAD_TYPE",
    "AuditEntry",
    "AuditLog",
    "AuditReport",
    "CapabilitiesNotApproved",
    "Envelope",
    "FileDigestMismatch",
    "FileSetMismatch",
    "InputTooLarge",
    "KeyFileError",
    "KeyNotInScope",
    "KeyRevoked",
    "MalformedEnvelope",
    "MalformedInput",
    "MalformedManifest",
    "MalformedTrustStore",
    "ManifestExpired",
    "ManifestNotYetValid",
    "NameMismatch",
    "PrivateKey",
    "PublicKey",
    "Redactor",
    "RollbackDetected",
    "RollbackGuard",
    "RollbackMarks",
    "RollbackMarksUnavailable",
    "RollbackState",
    "Signature",
    "SignatureInvalid",
    "SignedHead",
    "ThresholdNotMet",
    "TrustStore",
    "TrustStoreRolledBack",
    "TrustedKey",
    "UnsafeFile",
    "VerifiedManifest",
    "VerifiedPlugin",
    "VersionReused",
    "WeakKey",
    "WrongPayloadType",
    "add_signature",
    "build_manifest",
    "check_public_key",
    "generate_key",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "loads_strict",
    "manifest_bytes",
    "pae",
    "parse_envelope",
    "parse_manifest",
    "save_private_key",
    "save_public_key",
    "sign_envelope",
    "sign_manifest",
    "verify_manifest",
    "verify_plugin",
]
