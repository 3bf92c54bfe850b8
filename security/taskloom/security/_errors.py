"""The security errors: one ``SecurityError`` subclass per check that can fail.

Each verification step has its own type so that a caller (the plugin host, the
CLI) can tell *which* check refused a plugin without parsing messages, and each
message says what to do next.

    SecurityError                       (taskloom.contracts)
    ├── KeyFileError                    a key file is missing, damaged or the passphrase is wrong
    ├── WeakKey                         a public key of small order or non-canonical encoding
    ├── InputTooLarge                   an envelope, manifest or plugin is over its size cap
    ├── MalformedInput                  bytes that strict parsing refuses
    │   ├── MalformedEnvelope           the signed envelope is not the expected shape
    │   ├── MalformedManifest           the signed manifest is not a valid manifest
    │   └── MalformedTrustStore         the trust store file is not a valid trust store
    ├── WrongPayloadType                the envelope carries another kind of document
    ├── SignatureInvalid                a signature by a known key does not verify
    ├── ThresholdNotMet                 too few distinct trusted keys signed
    ├── KeyNotInScope                   a signer may not sign for this plugin
    ├── KeyRevoked                      a signer's key was revoked
    ├── ManifestExpired                 the manifest's validity ended
    ├── ManifestNotYetValid             the manifest was issued in the future
    ├── NameMismatch                    the manifest is for another plugin
    ├── RollbackDetected                an older version than one already seen
    │   └── TrustStoreRolledBack        an older trust store than the one already trusted
    ├── VersionReused                   a version already seen, with different content
    ├── RollbackMarksUnavailable        the rollback marks file is missing or damaged
    ├── CapabilitiesNotApproved         an update asks for capabilities nobody approved
    ├── FileSetMismatch                 files missing from, or not listed in, the manifest
    ├── UnsafeFile                      a symlink, special file, escaping or case-colliding path
    └── FileDigestMismatch              a file's length or SHA-256 differs from the manifest
"""

from __future__ import annotations

from taskloom.contracts import SecurityError


class KeyFileError(SecurityError):
    """A key file could not be read: missing, damaged, not Ed25519, or a wrong passphrase."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class WeakKey(SecurityError):
    """An Ed25519 public key that would let anyone forge signatures was refused."""


class InputTooLarge(SecurityError):
    """Input is over its documented size cap; it was refused before being decoded."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class MalformedInput(SecurityError):
    """Bytes that strict JSON parsing refuses (duplicate keys, floats, a BOM, ...)."""


class MalformedEnvelope(MalformedInput):
    """The signed envelope is not ``{payloadType, payload, signatures}`` as expected."""


class MalformedManifest(MalformedInput):
    """The signed payload is not a valid plugin manifest."""


class MalformedTrustStore(MalformedInput):
    """The trust store file is not a valid trust store."""


class WrongPayloadType(SecurityError):
    """The envelope carries a different kind of document than the one expected."""


class SignatureInvalid(SecurityError):
    """A signature that names a trusted key does not verify: the envelope was altered."""


class ThresholdNotMet(SecurityError):
    """Fewer distinct trusted keys signed than the trust store's threshold requires."""


class KeyNotInScope(SecurityError):
    """A key signed for a plugin name that the trust store does not allow it to sign."""


class KeyRevoked(SecurityError):
    """A signer's key is on the trust store's revocation list."""


class ManifestExpired(SecurityError):
    """The manifest's ``expires_at`` is at or before the reference time."""


class ManifestNotYetValid(SecurityError):
    """The manifest's ``issued_at`` is after the reference time."""


class NameMismatch(SecurityError):
    """The manifest names another plugin than the one being loaded."""


class RollbackDetected(SecurityError):
    """The manifest's version is lower than one already accepted for this plugin."""


class TrustStoreRolledBack(RollbackDetected):
    """The trust store's version is lower than one already trusted (an older copy)."""


class RollbackMarksUnavailable(SecurityError):
    """The rollback marks kept beside the trust store are missing or damaged: fail closed."""


class CapabilitiesNotApproved(SecurityError):
    """A plugin update asks for capabilities its accepted version did not have."""


class VersionReused(SecurityError):
    """The manifest reuses an accepted version number with different content."""


class FileSetMismatch(SecurityError):
    """The directory's files differ from the manifest's list (extra or missing files)."""


class UnsafeFile(SecurityError):
    """A symlink, a special file, a path escaping the directory or a case-only collision."""


class FileDigestMismatch(SecurityError):
    """A file's length or SHA-256 differs from what the manifest lists."""
