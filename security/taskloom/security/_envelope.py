"""The DSSE-style signed envelope.

``{"payloadType": T, "payload": base64(B), "signatures": [{"keyid": K, "sig": base64(S)}]}``
where each ``S`` is an Ed25519 signature over DSSE's pre-authentication encoding
``PAE(T, B) = "DSSEv1 " + len(T) + " " + T + " " + len(B) + " " + B``. Signing
the type along with the bytes means a signature for one kind of document can
never be replayed as another (a trust store as a manifest, say), and signing the
exact bytes means the verifier checks what it received before it parses a
single field of it -- it never re-serializes anything to check a signature.

Parsing is strict: exactly these fields, canonical base64 (a base64 text whose
unused bits are set decodes to the same bytes as another text, so a one-byte
change would go unnoticed), at most ``MAX_SIGNATURES`` signatures.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence

import attrs
import rfc8785

from taskloom.contracts import UsageError
from taskloom.security._errors import MalformedEnvelope, MalformedInput, SignatureInvalid
from taskloom.security._keys import PrivateKey, PublicKey
from taskloom.security._strictjson import loads_strict

MAX_SIGNATURES = 16
"""Most signatures an envelope may carry; more is refused before any is checked."""

_FIELDS = frozenset({"payloadType", "payload", "signatures"})
_SIG_FIELDS = frozenset({"keyid", "sig"})


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of ``payload_type`` and ``payload``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


@attrs.frozen(kw_only=True)
class Signature:
    """One signature of an envelope: the key id it claims and the signature bytes."""

    keyid: str
    sig: bytes


@attrs.frozen(kw_only=True)
class Envelope:
    """A parsed envelope: the exact payload bytes received, their type, the signatures."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        """Canonical JSON (RFC 8785) of the envelope."""
        return rfc8785.dumps(
            {
                "payloadType": self.payload_type,
                "payload": _b64(self.payload),
                "signatures": [{"keyid": s.keyid, "sig": _b64(s.sig)} for s in self.signatures],
            }
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, field: str) -> bytes:
    if not isinstance(text, str):
        raise MalformedEnvelope(f"envelope field {field!r} must be base64 text")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedEnvelope(
            f"envelope field {field!r} is not valid base64; the envelope is damaged: "
            "obtain it again from the publisher"
        ) from None
    # Only the final quantum can carry unused bits (validate=True refuses bad
    # characters and padding), so re-encoding the last 1-2 bytes suffices.
    tail = len(data) % 3
    if tail and base64.b64encode(data[-tail:]).decode("ascii") != text[-4:]:
        raise MalformedEnvelope(
            f"envelope field {field!r} is not canonical base64; the envelope was altered"
        )
    return data


def sign_envelope(payload_type: str, payload: bytes, keys: Sequence[PrivateKey]) -> bytes:
    """Sign ``payload`` as ``payload_type`` with every key of ``keys``; the envelope bytes."""
    if isinstance(keys, PrivateKey) or not keys:
        raise UsageError("sign with a list of at least one private key")
    for key in keys:
        if not isinstance(key, PrivateKey):
            raise UsageError(f"signing keys must be PrivateKey objects, got {type(key).__name__}")
    message = pae(payload_type, payload)
    signatures = tuple(Signature(keyid=k.key_id, sig=k.sign(message)) for k in keys)
    return Envelope(payload_type=payload_type, payload=payload, signatures=signatures).to_bytes()


def parse_envelope(data: bytes, *, max_bytes: int) -> Envelope:
    """Parse envelope bytes strictly. Signatures are not checked here."""
    try:
        raw = loads_strict(data, max_bytes=max_bytes, what="signed envelope")
    except MalformedEnvelope:
        raise
    except MalformedInput as exc:
        raise MalformedEnvelope(f"{exc}; obtain the envelope again from the publisher") from exc
    if not isinstance(raw, dict) or set(raw) != _FIELDS:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise MalformedEnvelope(
            f"a signed envelope has exactly the fields {sorted(_FIELDS)}; found {found}"
        )
    payload_type = raw["payloadType"]
    if not isinstance(payload_type, str):
        raise MalformedEnvelope("envelope field 'payloadType' must be text")
    payload = _unb64(raw["payload"], "payload")
    entries = raw["signatures"]
    if not isinstance(entries, list) or not entries:
        raise MalformedEnvelope("envelope field 'signatures' must be a non-empty list")
    if len(entries) > MAX_SIGNATURES:
        raise MalformedEnvelope(
            f"the envelope carries {len(entries)} signatures; at most {MAX_SIGNATURES} are read"
        )
    signatures = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != _SIG_FIELDS:
            raise MalformedEnvelope(
                f"signature {index} must have exactly the fields {sorted(_SIG_FIELDS)}"
            )
        keyid = entry["keyid"]
        if not isinstance(keyid, str):
            raise MalformedEnvelope(f"signature {index}: 'keyid' must be text")
        signatures.append(
            Signature(keyid=keyid, sig=_unb64(entry["sig"], f"signatures[{index}].sig"))
        )
    return Envelope(payload_type=payload_type, payload=payload, signatures=tuple(signatures))


def add_signature(envelope_bytes: bytes, key: PrivateKey, *, max_bytes: int = 1 << 24) -> bytes:
    """Add ``key``'s signature to a signed envelope (no-op if that key already signed it)."""
    envelope = parse_envelope(envelope_bytes, max_bytes=max_bytes)
    if any(s.keyid == key.key_id for s in envelope.signatures):
        return envelope.to_bytes()
    signature = Signature(
        keyid=key.key_id, sig=key.sign(pae(envelope.payload_type, envelope.payload))
    )
    return attrs.evolve(envelope, signatures=(*envelope.signatures, signature)).to_bytes()


def valid_signers(envelope: Envelope, keys: Mapping[str, PublicKey]) -> frozenset[str]:
    """The distinct ids of ``keys`` that validly signed ``envelope``.

    Signatures naming keys not in ``keys`` are ignored (they may be meant for
    another verifier). A signature naming a known key that does not verify is
    refused outright with ``SignatureInvalid``: such a signature was made by
    that key over other bytes, or altered, and either way the envelope is not
    what its signer signed.
    """
    message = pae(envelope.payload_type, envelope.payload)
    signers: set[str] = set()
    for signature in envelope.signatures:
        key = keys.get(signature.keyid)
        if key is None:
            continue
        if not key.verify(signature.sig, message):
            raise SignatureInvalid(
                f"the signature of key {signature.keyid[:16]}... does not verify: the envelope "
                "or its payload was changed after signing; obtain it again from the publisher"
            )
        signers.add(signature.keyid)
    return frozenset(signers)


def key_map(keys: Iterable[PublicKey]) -> dict[str, PublicKey]:
    """Index public keys by key id."""
    return {k.key_id: k for k in keys}
