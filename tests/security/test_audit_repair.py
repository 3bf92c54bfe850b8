"""The audit log against its chain head: torn tails apart from tampering, and repair."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _sec_support import DictStorage, keys

from taskloom.contracts import SecurityError
from taskloom.security import AuditLog, PublicKey, WeakKey
from taskloom.security._ed25519 import SMALL_ORDER_YS


async def _log(n: int) -> tuple[DictStorage, AuditLog, list[bytes]]:
    storage = DictStorage()
    log = AuditLog(storage, clock=lambda: 1_700_000_000.0)
    for i in range(n):
        await log.append(actor="ops", action="plugin.load", subject=f"p{i}")
    return storage, log, [e.payload for e in storage.streams["audit"]]


def test_a_lost_last_entry_is_a_torn_tail_without_any_signed_head() -> None:
    """The chain head counts one more entry than the stream holds: 'torn', at that entry."""

    async def go() -> None:
        storage, _, payloads = await _log(5)
        storage.load_stream("audit", payloads[:-1])
        report = await AuditLog(storage).verify()
        assert (report.ok, report.kind, report.first_bad) == (False, "torn", 5)
        assert "audit repair" in report.message

    asyncio.run(go())


def test_several_lost_entries_are_truncation_not_a_torn_tail() -> None:
    """Three entries cut off the end against the chain head: 'truncated'."""

    async def go() -> None:
        storage, _, payloads = await _log(6)
        storage.load_stream("audit", payloads[:3])
        report = await AuditLog(storage).verify()
        assert (report.ok, report.kind, report.first_bad) == (False, "truncated", 4)

    asyncio.run(go())


def test_an_unreadable_last_entry_is_torn_but_a_changed_one_is_tampering() -> None:
    """A cut-short last entry is 'torn'; a readable rewrite of it is 'changed'."""

    async def go() -> None:
        storage, _, payloads = await _log(4)
        storage.load_stream("audit", [*payloads[:-1], payloads[-1][:20]])
        torn = await AuditLog(storage).verify()
        assert (torn.kind, torn.first_bad) == ("torn", 4)
        rewritten = payloads[-1].replace(b'"p3"', b'"p9"')
        storage.load_stream("audit", [*payloads[:-1], rewritten])
        changed = await AuditLog(storage).verify()
        assert (changed.kind, changed.first_bad) == ("changed", 4)
        storage.load_stream("audit", [payloads[0], payloads[1][:20], *payloads[2:]])
        middle = await AuditLog(storage).verify()
        assert middle.kind == "changed" and middle.first_bad == 2

    asyncio.run(go())


def test_entries_written_past_the_chain_head_are_reported() -> None:
    """An entry appended to the stream behind the log's back is 'inserted'."""

    async def go() -> None:
        storage, _, payloads = await _log(3)
        await storage.append("audit", payloads[0])
        report = await AuditLog(storage).verify()
        assert (report.ok, report.first_bad) == (False, 4)

    asyncio.run(go())


@pytest.mark.parametrize("damage", ["lose_last", "cut_last", "change_middle", "smuggle"])
def test_repair_keeps_the_intact_prefix_records_itself_and_unblocks_appends(damage: str) -> None:
    """After damage appends fail; repair links to the last intact entry and says so."""

    async def go() -> None:
        storage, _, payloads = await _log(5)
        damaged = {
            "lose_last": payloads[:-1],
            "cut_last": [*payloads[:-1], payloads[-1][:30]],
            "change_middle": [payloads[0], payloads[1].replace(b'"p1"', b'"px"'), *payloads[2:]],
            "smuggle": [*payloads, b"smuggled"],
        }[damage]
        storage.load_stream("audit", damaged)
        log = AuditLog(storage)
        assert not (await log.verify()).ok
        if damage != "change_middle":  # a rewrite in place keeps the stream's length
            with pytest.raises(SecurityError, match="audit repair"):
                await log.append(actor="ops", action="x", subject="blocked")
        entry = await log.repair(actor="admin", reason="disk full")
        assert entry is not None and entry.action == "audit.repair"
        expected_kept = {"lose_last": 4, "cut_last": 4, "change_middle": 1, "smuggle": 5}[damage]
        assert entry.details["kept"] == expected_kept
        assert entry.details["skipped"] == len(damaged) - expected_kept
        assert entry.details["reason"] == "disk full"
        assert (await log.verify()).ok
        await log.append(actor="ops", action="x", subject="after")
        report = await AuditLog(storage).verify()
        assert report.ok and report.entries == len(damaged) + 2
        assert await log.repair(actor="admin") is None  # nothing left to repair
        actions = [e.action for e in await log.entries()]
        assert actions.count("audit.repair") == 1

    asyncio.run(go())


def test_a_repair_cannot_hide_what_an_earlier_anchor_covered() -> None:
    """A head signed before the loss still reports the lost entry after the repair."""

    async def go() -> None:
        storage, log, _ = await _log(4)
        anchor = await log.sign_head(keys(1)[0])
        payloads = [e.payload for e in storage.streams["audit"]]
        storage.load_stream("audit", payloads[:-1])
        await log.repair(actor="admin")
        report = await log.verify(head=anchor, public_key=keys(1)[0].public_key)
        assert not report.ok and report.first_bad == 4

    asyncio.run(go())


def test_a_weak_audit_key_is_refused() -> None:
    """Verifying a head with a small-order public key raises WeakKey."""

    async def go() -> None:
        _, log, _ = await _log(1)
        weak = PublicKey(sorted(SMALL_ORDER_YS)[0].to_bytes(32, "little"))
        with pytest.raises(WeakKey):
            await log.verify(public_key=weak)
        head = await log.sign_head(keys(1)[0])
        with pytest.raises(WeakKey):
            head.verify(weak)

    asyncio.run(go())


def test_a_file_store_that_drops_a_torn_last_entry_reports_torn_and_repairs(
    tmp_path: Path,
) -> None:
    """The file store hides a cut-short last entry; verify names it torn, repair fixes it."""
    from taskloom.adapters.filesystem import FileStorage

    async def go() -> None:
        storage = await FileStorage.open(tmp_path / "store")
        log = AuditLog(storage)
        for i in range(3):
            await log.append(actor="ops", action="x", subject=str(i))
        await storage.aclose()
        (segment,) = [p for p in (tmp_path / "store").rglob("*.seg")]
        segment.write_bytes(segment.read_bytes()[:-5])  # a crash mid-write of entry 3
        storage = await FileStorage.open(tmp_path / "store")
        try:
            log = AuditLog(storage)
            report = await log.verify()
            assert (report.ok, report.kind, report.first_bad, report.entries) == (
                False,
                "torn",
                3,
                2,
            )
            entry = await log.repair(actor="admin")
            assert entry is not None and entry.details["kept"] == 2
            assert (await log.verify()).ok
        finally:
            await storage.aclose()

    asyncio.run(go())


def test_a_damaged_chain_head_is_reported_and_repaired() -> None:
    """A chain head record that is not JSON: verify reports it; repair rebuilds it."""

    async def go() -> None:
        storage, _, _ = await _log(3)
        await storage.put("audit.chain", "audit", b"garbage")
        fresh = AuditLog(storage)
        report = await fresh.verify()
        assert (report.ok, report.kind) == (False, "head") and "audit repair" in report.message
        entry = await fresh.repair(actor="admin")
        assert entry is not None and entry.details["kept"] == 3
        assert (await AuditLog(storage).verify()).ok

    asyncio.run(go())
