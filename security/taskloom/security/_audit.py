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
``verify`` checks the stream against that chain head too: entries missing
from the end, or written past it, are reported even without a signed head.

A *torn tail* -- the last entry missing (its head was written) or unreadable,
as a write cut short by a crash leaves it -- is reported as ``torn``, apart
from tampering. Someone who can write the storage can produce the same, so
only a signed head kept elsewhere (an *anchor*) proves nothing else changed.
``repair`` appends an ``audit.repair`` entry that links back to the last
intact entry and says how many entries after it it leaves out of the chain
(stream entries are never deleted): the log verifies again, appends work
again, and the repair itself is on record.
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

REPAIR_ACTION = "audit.repair"
"""The action of the entry ``AuditLog.repair`` writes."""

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
        """True if ``public_key`` made this signature (``WeakKey`` for a key that would
        accept forged signatures)."""
        from taskloom.security._trust import check_public_key

        check_public_key(public_key)
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
    up to the signed or chain head are missing), ``torn`` (only the last entry
    is missing or unreadable, as a write cut short leaves it: ``repair`` fixes
    it), or ``head`` (the head's signature, key or stream does not check out;
    ``first_bad`` is then None).
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


def _repairs(links: Sequence[_Link]) -> tuple[dict[int, int], set[int]]:
    """Repair entries: {position: position it links back to}, and the positions they
    leave out of the chain. A repair counts only when it stands at its own position
    and says exactly how many entries it leaves out."""
    links_back: dict[int, int] = {}
    left_out: set[int] = set()
    for j, link in enumerate(links, 1):
        body = link.body
        if body is None or body.action != REPAIR_ACTION or body.seq != j:
            continue
        kept, skipped = body.details.get("kept"), body.details.get("skipped")
        if type(kept) is int and type(skipped) is int and 0 <= kept < j and skipped == j - 1 - kept:
            links_back[j] = kept
            left_out.update(range(kept + 1, j))
    return links_back, left_out


def _walk(links: Sequence[_Link], head: SignedHead | None) -> AuditReport | None:
    """Find the first bad entry; None if the chain holds. Positions are 1-based."""
    n = len(links)
    links_back, left_out = _repairs(links)

    def hash_at(j: int) -> str:
        return GENESIS if j == 0 else links[j - 1].hash

    def vouched(j: int) -> bool | None:
        """Does what follows entry ``j`` (the next entry or the head) confirm its hash?"""
        if j + 1 in left_out or j + 1 in links_back:
            return None
        if j < n:
            nxt = links[j].body
            return nxt is not None and nxt.prev == links[j - 1].hash
        if head is not None and head.seq == j:
            return head.hash == links[j - 1].hash
        return None

    for j in range(1, n + 1):
        if j in left_out:
            continue  # left out of the chain by a later repair entry (which says so)
        body = links[j - 1].body
        if body is None:
            return _bad(n, j, "changed", f"entry {j} is not a readable audit entry")
        linked = body.prev == hash_at(links_back.get(j, j - 1))
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


def _against_tip(links: Sequence[_Link], tip_seq: int, tip_hash: str) -> AuditReport | None:
    """Compare the stream with the chain head record that every append moves."""
    n = len(links)
    if tip_seq == n:
        if n and tip_hash != links[-1].hash:
            return _bad(n, n, "changed", f"entry {n} differs from the chain head: rewritten")
        return None
    if tip_seq > n:
        kind = "torn" if tip_seq == n + 1 else "truncated"
        what = (
            f"entry {n + 1}, the last one written, is missing: a write cut short by a crash "
            "(or someone removed it)"
            if kind == "torn"
            else f"the chain head counts {tip_seq} entries but only {n} remain: entries "
            f"{n + 1} to {tip_seq} were removed"
        )
        return _bad(n, n + 1, kind, what)
    return _bad(
        n,
        tip_seq + 1,
        "inserted",
        f"entries {tip_seq + 1} to {n} were written past the chain head, not through the log",
    )


_REPAIR_HINT = "; `taskloom audit repair` keeps the intact entries before it and records the repair"


def _as_torn(report: AuditReport, links: Sequence[_Link], tip_seq: int | None) -> AuditReport:
    """Name a damaged *last* entry (or one missing after the chain head) a torn tail."""
    n = len(links)
    unreadable_last = (
        report.kind == "changed"
        and report.first_bad == n
        and n > 0
        and links[-1].body is None
        and (tip_seq is None or tip_seq in (n - 1, n))
    )
    lost_last = report.kind == "truncated" and report.first_bad == n + 1 and tip_seq == n + 1
    if unreadable_last:
        report = attrs.evolve(
            report,
            kind="torn",
            message=f"entry {n}, the last one, is unreadable: a write cut short leaves this "
            "(tampering can look the same; an anchor made earlier tells them apart)",
        )
    elif lost_last:
        report = attrs.evolve(
            report,
            kind="torn",
            message=f"entry {n + 1}, the last one written, is missing: a write cut short by "
            "a crash (or someone removed it)",
        )
    return attrs.evolve(report, message=report.message + _REPAIR_HINT)


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
                f"the chain head of audit stream {self._stream!r} is damaged: restore the "
                "store from a backup, or run `taskloom audit repair` to rebuild it from the "
                "intact entries (the repair is recorded in the log)"
            ) from exc
        return seq, digest, record.version

    async def _checked_tip(self) -> tuple[int, str, int]:
        """The chain head, refused (before anything is written) when the stream does not
        end where it says: a lost or smuggled entry must be repaired, not built upon."""
        seq, digest, version = await self._tip()
        tail = await self._storage.read(self._stream, after=max(0, seq - 1), limit=2)
        expected = 1 if seq else 0
        if len(tail) != expected or (
            seq and (tail[0].seq != seq or hashlib.sha256(tail[0].payload).hexdigest() != digest)
        ):
            raise SecurityError(
                f"audit stream {self._stream!r} does not end where its chain head says "
                f"(entry {seq}): nothing was written; run `taskloom audit verify` to see why, "
                "then `taskloom audit repair`"
            )
        return seq, digest, version

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
                    self._cached_tip = await self._checked_tip()
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
                        f"audit stream {self._stream!r} does not match its chain head (it "
                        f"holds entry {result.entries[0].seq} where {seq + 1} belongs): run "
                        "`taskloom audit verify` to see why, then `taskloom audit repair`"
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
        tip_seq: int | None = None
        tip_hash = GENESIS
        if entries is None:  # the stream itself: its chain head record must agree
            try:
                tip_seq, tip_hash, _ = await self._tip()
            except StorageCorrupted as exc:
                return AuditReport(ok=False, entries=n, kind="head", message=str(exc))
        if public_key is not None:
            if not isinstance(public_key, PublicKey):
                raise UsageError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
            from taskloom.security._trust import check_public_key

            check_public_key(public_key)  # a weak key would accept a forged head
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
        if report is None and tip_seq is not None:
            report = _against_tip(links, tip_seq, tip_hash)
        if report is not None:
            return attrs.evolve(_as_torn(report, links, tip_seq), head_checked=checked)
        return AuditReport(ok=True, entries=n, head_checked=checked)

    async def repair(self, *, actor: str, reason: str = "") -> AuditEntry | None:
        """Make the log verifiable again after damage; None if nothing is wrong.

        Keeps the intact prefix (every entry before the first bad one) and appends an
        ``audit.repair`` entry that links to its last entry and records how many
        entries after it are left out of the chain, what ``verify`` found, and the
        chain head before the repair. Entries already in the stream are never
        deleted. A signed head or anchor made before still shows what was lost.
        """
        if not isinstance(actor, str) or not isinstance(reason, str):
            raise UsageError("audit repair: actor and reason must be text")
        async with self._lock:
            self._cached_tip = None
            payloads = await self._payloads()
            links = [_Link(hashlib.sha256(p).hexdigest(), _parse(p)) for p in payloads]
            n = len(links)
            try:
                tip_seq, tip_hash, version = await self._tip()
            except StorageCorrupted:
                record = await self._storage.get(CHAIN_NAMESPACE, self._stream)
                tip_seq, tip_hash, version = -1, "", record.version if record else 0
            report = _walk(links, None)
            if report is None and tip_seq >= 0:
                report = _against_tip(links, tip_seq, tip_hash)
            elif report is None:
                report = _bad(n, n + 1, "changed", "the chain head record is damaged")
            if report is None:
                return None
            first_bad = report.first_bad if report.first_bad is not None else n + 1
            kept = max(0, min(first_bad - 1, n))
            report = _as_torn(report, links, tip_seq if tip_seq >= 0 else None)
            details: dict[str, Any] = {
                "kept": kept,
                "skipped": n - kept,
                "found": report.kind,
                "message": report.message[:500],
                "chain_head_was": {"seq": tip_seq, "hash": tip_hash},
            }
            if reason:
                details["reason"] = reason[:500]
            prev = GENESIS if kept == 0 else links[kept - 1].hash
            time_us = int(self._clock() * 1_000_000)
            body: dict[str, Any] = {
                "format": AUDIT_FORMAT,
                "seq": n + 1,
                "time_us": time_us,
                "actor": actor,
                "action": REPAIR_ACTION,
                "subject": self._stream,
                "details": details,
                "prev": prev,
            }
            payload = bytes(rfc8785.dumps(body))
            digest = hashlib.sha256(payload).hexdigest()
            head_value = b'{"hash":"%s","seq":%d}' % (digest.encode("ascii"), n + 1)
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
            if result.entries[0].seq != n + 1:
                raise SecurityError(
                    f"audit stream {self._stream!r} changed while it was being repaired "
                    "(another writer?): run `taskloom audit verify` and repair again"
                )
            self._cached_tip = (n + 1, digest, result.records[0].version)
            return AuditEntry(
                seq=n + 1,
                time=time_us / 1_000_000,
                actor=actor,
                action=REPAIR_ACTION,
                subject=self._stream,
                details=details,
                prev=prev,
                hash=digest,
            )
