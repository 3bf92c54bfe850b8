"""The audit log: the hash chain names the first changed, removed, moved or inserted entry."""

from __future__ import annotations

import asyncio
import hashlib
import json

import attrs
import pytest
import rfc8785
from _sec_support import DictStorage, keys
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.contracts import SecurityError
from taskloom.security import AuditLog, AuditReport, SignedHead, generate_key

GENESIS = "0" * 64


async def _build(n: int) -> tuple[DictStorage, AuditLog, list[bytes], SignedHead]:
    storage = DictStorage()
    log = AuditLog(storage, clock=lambda: 1_700_000_000.25)
    for i in range(n):
        await log.append(
            actor=f"user{i % 3}", action="plugin.load", subject=f"p{i}", details={"i": i, "t": 0.5}
        )
    head = await log.sign_head(keys(1)[0])
    return storage, log, [e.payload for e in storage.streams["audit"]], head


def _verify(payloads: list[bytes], head: SignedHead | None) -> AuditReport:
    async def go() -> AuditReport:
        log = AuditLog(DictStorage())
        return await log.verify(entries=payloads, head=head, public_key=keys(1)[0].public_key)

    return asyncio.run(go())


def _forged(seq: int, prev: str, subject: str = "forged") -> bytes:
    return bytes(
        rfc8785.dumps(
            {
                "format": "taskloom.audit/v1",
                "seq": seq,
                "time_us": 1,
                "actor": "mallory",
                "action": "plugin.load",
                "subject": subject,
                "details": {},
                "prev": prev,
            }
        )
    )


def test_an_untouched_log_verifies_with_and_without_a_head() -> None:
    """A log as written is ok, against its signed head and against none."""
    _, log, payloads, head = asyncio.run(_build(5))
    assert _verify(payloads, head) == AuditReport(ok=True, entries=5, head_checked=True)
    assert _verify(payloads, None).ok
    report = asyncio.run(log.verify(public_key=keys(1)[0].public_key))
    assert report.ok and report.head_checked and report.entries == 5


def test_entries_chain_by_sha256_of_the_previous_entry() -> None:
    """Each entry's prev is the SHA-256 of the previous entry's bytes; the first's is zeros."""
    _, log, payloads, _ = asyncio.run(_build(4))
    entries = asyncio.run(log.entries())
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert entries[0].prev == GENESIS
    for before, entry in zip(payloads, entries[1:], strict=False):
        assert entry.prev == hashlib.sha256(before).hexdigest()
    assert entries[2].details == {"i": 2, "t": 0.5}
    assert entries[0].time == 1_700_000_000.25


def test_append_returns_the_entry_it_wrote() -> None:
    """The returned entry's hash is the SHA-256 of the stored bytes."""

    async def go() -> None:
        storage = DictStorage()
        entry = await AuditLog(storage).append(actor="a", action="b", subject="c")
        assert entry.seq == 1
        assert entry.hash == hashlib.sha256(storage.streams["audit"][0].payload).hexdigest()

    asyncio.run(go())


def test_concurrent_appends_keep_one_chain() -> None:
    """Two AuditLog objects on one storage, appending concurrently, never fork the chain."""

    async def go() -> AuditReport:
        storage = DictStorage()
        first, second = AuditLog(storage), AuditLog(storage)
        await asyncio.gather(
            *(
                log.append(actor="a", action="x", subject=str(i))
                for i in range(20)
                for log in (first, second)
            )
        )
        return await first.verify()

    report = asyncio.run(go())
    assert report.ok and report.entries == 40


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_reported_at_that_entry(data: st.DataObject) -> None:
    """Changing one byte of entry k makes verify report entry k as the first bad one."""
    n = data.draw(st.integers(1, 8), label="n")
    _, _, payloads, head = asyncio.run(_build(n))
    k = data.draw(st.integers(1, n), label="k")
    original = payloads[k - 1]
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[position]), label="v")
    payloads[k - 1] = original[:position] + bytes([value]) + original[position + 1 :]
    report = _verify(payloads, head)
    assert not report.ok
    assert report.first_bad == k, report


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_field_change_is_reported_at_that_entry(data: st.DataObject) -> None:
    """Rewriting a field of entry k (re-serialized canonically) is reported at entry k."""
    n = data.draw(st.integers(1, 8), label="n")
    _, _, payloads, head = asyncio.run(_build(n))
    k = data.draw(st.integers(1, n), label="k")
    body = json.loads(payloads[k - 1])
    field = data.draw(st.sampled_from(sorted(body)), label="field")
    replacement = data.draw(
        st.one_of(st.integers(0, 20), st.text(max_size=5), st.just(GENESIS)).filter(
            lambda v: v != body[field]
        ),
        label="value",
    )
    body[field] = replacement
    payloads[k - 1] = bytes(rfc8785.dumps(body))
    report = _verify(payloads, head)
    assert (report.ok, report.first_bad) == (False, k), report


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_a_removed_entry_is_reported(data: st.DataObject) -> None:
    """Deleting entry k is reported at k: 'removed' inside the log, 'truncated' at its end."""
    n = data.draw(st.integers(1, 8), label="n")
    _, _, payloads, head = asyncio.run(_build(n))
    k = data.draw(st.integers(1, n), label="k")
    del payloads[k - 1]
    report = _verify(payloads, head)
    assert (report.ok, report.first_bad) == (False, k), report
    assert report.kind == ("truncated" if k == n else "removed")


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_reordered_entries_are_reported_at_the_first_moved_one(data: st.DataObject) -> None:
    """Swapping entries i < j is reported at i as 'reordered'."""
    n = data.draw(st.integers(2, 8), label="n")
    _, _, payloads, head = asyncio.run(_build(n))
    i = data.draw(st.integers(1, n - 1), label="i")
    j = data.draw(st.integers(i + 1, n), label="j")
    payloads[i - 1], payloads[j - 1] = payloads[j - 1], payloads[i - 1]
    report = _verify(payloads, head)
    assert (report.ok, report.first_bad, report.kind) == (False, i, "reordered"), report


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_an_inserted_entry_is_reported_at_its_position(data: st.DataObject) -> None:
    """Inserting a forged entry before entry k is reported at k, however it is forged."""
    n = data.draw(st.integers(1, 8), label="n")
    _, _, payloads, head = asyncio.run(_build(n))
    k = data.draw(st.integers(1, n), label="k")
    hashes = [GENESIS] + [hashlib.sha256(p).hexdigest() for p in payloads]
    style = data.draw(
        st.sampled_from(["linked", "sibling", "duplicate", "garbage", "random"]), label="style"
    )
    if style == "linked":  # claims seq k and links correctly to entry k-1
        forged = _forged(k, hashes[k - 1])
    elif style == "sibling" and k > 1:  # a second entry k-1, linked to k-2
        forged = _forged(k - 1, hashes[k - 2])
    elif style == "duplicate" and k > 1:  # an exact copy of entry k-1
        forged = payloads[k - 2]
    elif style == "garbage":
        forged = data.draw(st.binary(max_size=40), label="bytes")
    else:
        forged = _forged(data.draw(st.integers(0, 20)), data.draw(st.sampled_from(hashes)))
    payloads.insert(k - 1, forged)
    report = _verify(payloads, head)
    assert (report.ok, report.first_bad) == (False, k), report
    if style in ("linked", "sibling", "duplicate") and (style == "linked" or k > 1):
        assert report.kind == "inserted"


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_truncation_is_detected_against_the_signed_head(data: st.DataObject) -> None:
    """Cutting m entries off the end is reported as truncated at the first missing seq."""
    n = data.draw(st.integers(1, 8), label="n")
    _, _, payloads, head = asyncio.run(_build(n))
    m = data.draw(st.integers(1, n), label="m")
    report = _verify(payloads[: n - m], head)
    assert (report.ok, report.first_bad, report.kind) == (False, n - m + 1, "truncated")
    assert _verify(payloads[: n - m], None).ok  # without a head, truncation is invisible


def test_a_forged_head_is_refused() -> None:
    """A head whose signature does not verify (or by another key) is reported as 'head'."""
    _, _, payloads, head = asyncio.run(_build(3))
    report = _verify(payloads, attrs.evolve(head, seq=2))
    assert (report.ok, report.kind) == (False, "head")
    other = generate_key()
    forged = attrs.evolve(head, key_id=other.key_id)
    forged = attrs.evolve(forged, signature=other.sign(forged.signed_bytes()))
    assert _verify(payloads, forged).kind == "head"


def test_a_head_for_another_stream_is_refused() -> None:
    """A head signed for stream 'other' cannot vouch for 'audit'."""
    _, _, payloads, head = asyncio.run(_build(2))
    other = attrs.evolve(head, stream="other")
    other = attrs.evolve(other, signature=keys(1)[0].sign(other.signed_bytes()))
    assert _verify(payloads, other).kind == "head"


def test_signed_heads_round_trip_as_bytes() -> None:
    """A head kept outside the storage (to_bytes) loads back equal and still verifies."""
    _, _, _, head = asyncio.run(_build(2))
    again = SignedHead.from_bytes(head.to_bytes())
    assert again == head and again.verify(keys(1)[0].public_key)


def test_entries_appended_after_the_head_are_still_chain_checked() -> None:
    """Entries after the signed head verify by the chain; a change there is still found."""

    async def go() -> tuple[AuditReport, AuditReport]:
        storage = DictStorage()
        log = AuditLog(storage)
        for i in range(3):
            await log.append(actor="a", action="x", subject=str(i))
        head = await log.sign_head(keys(1)[0])
        for i in range(3):
            await log.append(actor="a", action="x", subject=str(i))
        payloads = [e.payload for e in storage.streams["audit"]]
        good = await log.verify(head=head)
        payloads[3] = payloads[3].replace(b'"subject":"0"', b'"subject":"9"')
        bad = await log.verify(head=head, entries=payloads)
        return good, bad

    good, bad = asyncio.run(go())
    assert good.ok and good.entries == 6
    assert (bad.ok, bad.first_bad) == (False, 4)


def test_appending_to_a_stream_changed_behind_the_logs_back_is_refused() -> None:
    """If the stream holds entries the chain head does not know, append refuses."""

    async def go() -> None:
        storage = DictStorage()
        log = AuditLog(storage)
        await log.append(actor="a", action="x", subject="1")
        await storage.append("audit", b"smuggled")
        with pytest.raises(SecurityError):
            await log.append(actor="a", action="x", subject="2")
        with pytest.raises(SecurityError):
            await log.sign_head(keys(1)[0])

    asyncio.run(go())


def test_a_consistent_rewrite_of_the_chain_is_caught_by_the_head() -> None:
    """Rewriting entry 2 and recomputing every later link is invisible but to the head."""
    _, _, payloads, head = asyncio.run(_build(4))
    forged = [payloads[0]]
    prev = hashlib.sha256(payloads[0]).hexdigest()
    for seq in range(2, 5):
        forged.append(_forged(seq, prev, subject=f"rewritten {seq}"))
        prev = hashlib.sha256(forged[-1]).hexdigest()
    assert _verify(forged, None).ok
    report = _verify(forged, head)
    assert (report.ok, report.first_bad, report.kind) == (False, 4, "changed")


def test_the_log_runs_on_the_memory_adapter() -> None:
    """AuditLog works over taskloom's own MemoryStorage, head stored and checked."""
    from taskloom.adapters import memory

    async def go() -> AuditReport:
        log = AuditLog(memory.MemoryStorage(), stream="ops")
        for i in range(5):
            await log.append(actor="ci", action="deploy", subject=f"svc{i}", details={"n": i})
        await log.sign_head(keys(1)[0])
        return await log.verify(public_key=keys(1)[0].public_key)

    report = asyncio.run(go())
    assert report.ok and report.entries == 5 and report.head_checked
