"""A tamper-evident audit log: a SHA-256 hash chain over a storage stream.

Each entry is RFC 8785 canonical JSON holding its sequence number and the
SHA-256 of the previous entry's stored bytes, so changing, removing,
reordering or inserting an entry breaks a link that ``verify`` finds and names.
Cutting entries off the end breaks no link; a *signed head* (the sequence
number and hash of the last entry, signed with an Ed25519 key and kept
elsewhere) makes that visible too. Without a head, a change to the very last
entry and entries appended by someone with write access to the storage are not
detectable -- sign heads regularly and keep them outside the storage. A
consistent rewrite of the chain from some entry onward (every later hash
recomputed) breaks no link either; the signed head catches it, but can only
point at the entry it covers, since nothing else remembers the old hashes.

Appends are serialized through a head record (namespace ``audit.chain``)
written in the same atomic ``commit`` as the entry, with a version check, so
two writers -- in one process or several -- can never fork the chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import rfc8785

from taskloom.contracts import (
    Append,
    ConflictError,
    DecodeError,
    Put,
    SecurityError,
    StorageAdapter,
    StorageCorrupted,
    UsageError,
)
from taskloom.contracts.serde import structure
from taskloom.security._envelope import pae
from taskloom.security._errors import MalformedInput
from taskloom.security._keys import PrivateKey, PublicKey
from taskloom.security._strictjson import loads_strict

AUDIT_FORMAT = "taskloom.audit/v1"
HEAD_PAYLOAD_TYPE = "application/vnd.taskloom.audit-head+json"
GENESIS = "0" * 64
"""The ``prev`` of the first entry."""

CHAIN_NAMESPACE = "audit.chain"
HEADS_NAMESPACE = "audit.heads"
MAX_ENTRY_BYTES = 1 << 20
_PAGE = 1000

JSONObject = Mapping[str, Any]


@attrs.frozen(kw_only=True)
class _Body:
    format: str
    seq: int
    time_us: int
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev: str


@attrs.frozen(kw_only=True)
class AuditEntry:
    """One audit entry as read back: who did what to what, when, and its chain hashes."""

    seq: int
    time: float
    actor: str
    action: str
    subject: str
    details: JSONObject
    prev: str
    hash: str


@attrs.frozen(kw_only=True)
class SignedHead:
    """The stream's last sequence number and entry hash, signed with an Ed25519 key."""

    stream: str
    seq: int
    hash: str
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers: PAE of the head type and the canonical head."""
        body: dict[str, Any] = {
            "format": AUDIT_FORMAT,
            "stream": self.stream,
            "seq": self.seq,
            "hash": self.hash,
        }
        return pae(HEAD_PAYLOAD_TYPE, bytes(rfc8785.dumps(body)))

    def verify(self, public_key: PublicKey) -> bool:
        """True if ``public_key`` made this signature."""
        return public_key.key_id == self.key_id and public_key.verify(
            self.signature, self.signed_bytes()
        )

    def to_bytes(self) -> bytes:
        """JSON for storing the head outside the audit storage."""
        return bytes(
            rfc8785.dumps(
                {
                    "stream": self.stream,
                    "seq": self.seq,
                    "hash": self.hash,
                    "key_id": self.key_id,
                    "signature": self.signature.hex(),
                }
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedHead:
        """Parse ``to_bytes`` output; ``MalformedInput`` if it is not a signed head."""
        raw = loads_strict(data, max_bytes=4096, what="signed audit head")
        try:
            fields = structure(raw, _HeadFile)
            return cls(
                stream=fields.stream,
                seq=fields.seq,
                hash=fields.hash,
                key_id=fields.key_id,
                signature=bytes.fromhex(fields.signature),
            )
        except (DecodeError, ValueError) as exc:
            raise MalformedInput(f"not a signed audit head: {exc}") from exc


@attrs.frozen(kw_only=True)
class _HeadFile:
    stream: str
    seq: int
    hash: str
    key_id: str
    signature: str


@attrs.frozen(kw_only=True)
class AuditReport:
    """The result of ``AuditLog.verify``.

    ``ok`` is True when nothing is wrong. Otherwise ``first_bad`` is the
    sequence number of the first entry found bad and ``kind`` says how:
    ``changed``, ``removed``, ``reordered``, ``inserted``, ``truncated`` (entries
    up to the signed head are missing), or ``head`` (the head's signature or
    stream does not check out; ``first_bad`` is then None).
    """

    ok: bool
    entries: int
    first_bad: int | None = None
    kind: str | None = None
    message: str = ""
    head_checked: bool = False


@attrs.frozen
class _Link:
    hash: str
    body: _Body | None


_BODY_TYPES: dict[str, type] = {
    "format": str,
    "seq": int,
    "time_us": int,
    "actor": str,
    "action": str,
    "subject": str,
    "details": dict,
    "prev": str,
}


def _parse(payload: bytes) -> _Body | None:
    """The entry's fields, or None if it is not a well-formed entry of this format."""
    try:
        raw = loads_strict(
            payload, max_bytes=MAX_ENTRY_BYTES, what="audit entry", allow_floats=True
        )
    except MalformedInput:
        return None
    if type(raw) is not dict or raw.keys() != _BODY_TYPES.keys():
        return None
    if any(type(raw[k]) is not t for k, t in _BODY_TYPES.items()):
        return None
    if raw["format"] != AUDIT_FORMAT:
        return None
    return _Body(**raw)


def _bad(n: int, seq: int, kind: str, message: str) -> AuditReport:
    return AuditReport(ok=False, entries=n, first_bad=seq, kind=kind, message=message)


def _walk(links: Sequence[_Link], head: SignedHead | None) -> AuditReport | None:
    """Find the first bad entry; None if the chain holds. Positions are 1-based."""
    n = len(links)

    def hash_at(j: int) -> str:
        return GENESIS if j == 0 else links[j - 1].hash

    def vouched(j: int) -> bool | None:
        """Does what follows entry ``j`` (the next entry or the head) confirm its hash?"""
        if j < n:
            nxt = links[j].body
            return nxt is not None and nxt.prev == links[j - 1].hash
        if head is not None and head.seq == j:
            return head.hash == links[j - 1].hash
        return None

    for j in range(1, n + 1):
        body = links[j - 1].body
        if body is None:
            return _bad(n, j, "changed", f"entry {j} is not a readable audit entry")
        linked = body.prev == hash_at(j - 1)
        if body.seq == j and linked:
            continue
        if body.seq == j:
            if j > 1 and vouched(j) is not False:
                return _bad(
                    n,
                    j - 1,
                    "changed",
                    f"entry {j - 1} was changed (entry {j} no longer links to it)",
                )
            return _bad(
                n, j, "changed", f"entry {j} was changed (its link to entry {j - 1} breaks)"
            )
        if linked:
            return _bad(n, j, "changed", f"entry {j} was changed: it says seq {body.seq}")
        if body.seq == j - 1 and j > 1 and body.prev == hash_at(j - 2):
            # Two entries claim seq j-1. The one the next entry links to is the original.
            nxt = links[j].body if j < n else None
            if nxt is not None and nxt.prev == hash_at(j - 1):
                return _bad(n, j, "inserted", f"entry {j} is a second entry {j - 1}: inserted")
            return _bad(n, j - 1, "inserted", f"entry {j - 1} was inserted before the original")
        if body.seq > j:
            later = any(link.body is not None and link.body.seq == j for link in links[j:])
            kind = "reordered" if later else "removed"
            return _bad(n, j, kind, f"entry {j} was {kind}: entry {body.seq} stands in its place")
        return _bad(n, j, "inserted", f"entry {j} does not belong here (it says seq {body.seq})")
    if head is not None:
        if head.seq > n:
            return _bad(
                n,
                n + 1,
                "truncated",
                f"the signed head covers {head.seq} entries but only {n} remain: entries "
                f"{n + 1} to {head.seq} were removed",
            )
        if head.seq >= 1 and head.hash != links[head.seq - 1].hash:
            return _bad(n, head.seq, "changed", f"entry {head.seq} differs from the signed head")
    return None


class AuditLog:
    """An append-only, hash-chained audit log over one ``StorageAdapter`` stream."""

    def __init__(
        self,
        storage: StorageAdapter,
        stream: str = "audit",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._stream = stream
        self._clock = clock
        self._lock = asyncio.Lock()
        # The last tip this object wrote or read: appends reuse it, and the
        # version check in commit() catches another writer having moved it.
        self._cached_tip: tuple[int, str, int] | None = None

    @property
    def stream(self) -> str:
        """The stream the entries are appended to."""
        return self._stream

    async def _tip(self) -> tuple[int, str, int]:
        """(seq, hash, record version) of the last entry, from the head record."""
        record = await self._storage.get(CHAIN_NAMESPACE, self._stream)
        if record is None:
            return 0, GENESIS, 0
        try:
            raw = loads_strict(record.value, max_bytes=4096, what="audit chain head")
            seq, digest = raw["seq"], raw["hash"]
            if not isinstance(seq, int) or not isinstance(digest, str):
                raise MalformedInput("wrong field types")
        except (MalformedInput, KeyError, TypeError) as exc:
            raise StorageCorrupted(
                f"the chain head of audit stream {self._stream!r} is damaged: run "
                "`taskloom audit verify` and restore the store from a backup"
            ) from exc
        return seq, digest, record.version

    async def append(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        details: JSONObject | None = None,
    ) -> AuditEntry:
        """Append one entry; it holds the hash of the entry before it."""
        for value, field in ((actor, "actor"), (action, "action"), (subject, "subject")):
            if not isinstance(value, str):
                raise UsageError(f"audit {field} must be text")
        body_details = dict(details or {})
        async with self._lock:
            for _ in range(32):
                if self._cached_tip is None:
                    self._cached_tip = await self._tip()
                seq, prev, version = self._cached_tip
                time_us = int(self._clock() * 1_000_000)
                body: dict[str, Any] = {
                    "format": AUDIT_FORMAT,
                    "seq": seq + 1,
                    "time_us": time_us,
                    "actor": actor,
                    "action": action,
                    "subject": subject,
                    "details": body_details,
                    "prev": prev,
                }
                try:
                    payload = bytes(rfc8785.dumps(body))
                except Exception as exc:  # rfc8785 raises its own error types
                    raise UsageError(f"audit details must be JSON data: {exc}") from exc
                digest = hashlib.sha256(payload).hexdigest()
                head_value = b'{"hash":"%s","seq":%d}' % (digest.encode("ascii"), seq + 1)
                try:
                    result = await self._storage.commit(
                        [
                            Put(
                                namespace=CHAIN_NAMESPACE,
                                key=self._stream,
                                value=head_value,
                                if_version=version,
                            ),
                            Append(stream=self._stream, payload=payload),
                        ]
                    )
                except ConflictError:
                    self._cached_tip = None
                    continue
                except BaseException:
                    self._cached_tip = None
                    raise
                self._cached_tip = (seq + 1, digest, result.records[0].version)
                if result.entries[0].seq != seq + 1:
                    raise SecurityError(
                        f"audit stream {self._stream!r} holds entries its chain head does not "
                        "know: the log was tampered with; run `taskloom audit verify`"
                    )
                return AuditEntry(
                    seq=seq + 1,
                    time=time_us / 1_000_000,
                    actor=actor,
                    action=action,
                    subject=subject,
                    details=body_details,
                    prev=prev,
                    hash=digest,
                )
        raise ConflictError(
            f"could not append to audit stream {self._stream!r}: other writers kept winning; "
            "try again"
        )

    async def _payloads(self) -> list[bytes]:
        payloads: list[bytes] = []
        after = 0
        while True:
            page = await self._storage.read(self._stream, after=after, limit=_PAGE)
            payloads.extend(entry.payload for entry in page)
            if len(page) < _PAGE:
                return payloads
            after = page[-1].seq

    async def entries(self) -> list[AuditEntry]:
        """Every entry, in order (unreadable ones are skipped: ``verify`` names them)."""
        result = []
        for payload in await self._payloads():
            body = _parse(payload)
            if body is None:
                continue
            result.append(
                AuditEntry(
                    seq=body.seq,
                    time=body.time_us / 1_000_000,
                    actor=body.actor,
                    action=body.action,
                    subject=body.subject,
                    details=body.details,
                    prev=body.prev,
                    hash=hashlib.sha256(payload).hexdigest(),
                )
            )
        return result

    async def sign_head(self, private_key: PrivateKey) -> SignedHead:
        """Sign the current last entry's seq and hash; store the head and return it.

        Keep the returned head (``to_bytes``) somewhere the storage's writers
        cannot reach: a head kept only beside the log can be removed with it.
        """
        seq, digest, _ = await self._tip()
        if seq:
            last = await self._storage.read(self._stream, after=seq - 1, limit=1)
            if not last or hashlib.sha256(last[0].payload).hexdigest() != digest:
                raise SecurityError(
                    f"audit stream {self._stream!r} does not match its chain head; it was "
                    "tampered with: run `taskloom audit verify` before signing"
                )
        unsigned = SignedHead(
            stream=self._stream, seq=seq, hash=digest, key_id=private_key.key_id, signature=b""
        )
        head = attrs.evolve(unsigned, signature=private_key.sign(unsigned.signed_bytes()))
        await self._storage.put(HEADS_NAMESPACE, self._stream, head.to_bytes())
        return head

    async def stored_head(self) -> SignedHead | None:
        """The head most recently signed with ``sign_head``, if any."""
        record = await self._storage.get(HEADS_NAMESPACE, self._stream)
        if record is None:
            return None
        try:
            return SignedHead.from_bytes(record.value)
        except MalformedInput as exc:
            raise StorageCorrupted(
                f"the stored signed head of audit stream {self._stream!r} is damaged: {exc}"
            ) from exc

    async def verify(
        self,
        *,
        head: SignedHead | None = None,
        public_key: PublicKey | None = None,
        entries: Sequence[bytes] | None = None,
    ) -> AuditReport:
        """Check the chain; the report names the first bad entry and how it is bad.

        ``head`` defaults to the stored head (if any); pass one kept elsewhere
        to detect truncation by someone who can also rewrite the storage. With
        ``public_key`` the head's signature is checked. ``entries`` checks these
        payloads (in stream order) instead of the stream's.
        """
        payloads = list(entries) if entries is not None else await self._payloads()
        links = [_Link(hashlib.sha256(p).hexdigest(), _parse(p)) for p in payloads]
        n = len(links)
        if head is None:
            head = await self.stored_head()
        checked = False
        if head is not None:
            if head.stream != self._stream:
                return AuditReport(
                    ok=False,
                    entries=n,
                    kind="head",
                    message=f"the head is for stream {head.stream!r}, not {self._stream!r}",
                )
            if public_key is not None:
                if not head.verify(public_key):
                    return AuditReport(
                        ok=False,
                        entries=n,
                        kind="head",
                        message="the signed head's signature does not verify with this key: "
                        "the head was forged or altered",
                    )
                checked = True
        report = _walk(links, head)
        if report is not None:
            return attrs.evolve(report, head_checked=checked)
        return AuditReport(ok=True, entries=n, head_checked=checked)
