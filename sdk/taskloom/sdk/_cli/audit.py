"""CLI commands of the audit log: verify, show, anchor, repair.

``taskloom audit anchor --key NAME --out FILE`` signs the log's current head and
writes it to FILE: keep that file (and the public key) where the people who can
write the data directory cannot. ``taskloom audit verify --anchor FILE --key KEY``
then proves that nothing up to the anchored entry was removed or rewritten -- also
by someone who rewrote the whole log and signed its head with another key. Without
an anchor, ``verify`` checks the hash chain and the chain head the store keeps.
``taskloom audit repair`` makes a log whose tail was torn (a crash while writing)
usable again, keeping the intact entries and recording the repair in the log.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskloom.contracts import UsageError
from taskloom.sdk._cli.context import CliContext, positive_int
from taskloom.sdk._cli.security import AUDIT_STREAM, _key_paths, actor, load_signing_key


def _public_key(ctx: CliContext, name: str) -> Any:
    from taskloom.security import check_public_key, load_public_key

    path = Path(name)
    if not path.is_file():
        path = _key_paths(ctx, name)[1]
    if not path.is_file():
        raise UsageError(
            f"no public key {name!r} (neither a file nor {path}): give the .pub file of the "
            "key that signed the anchor"
        )
    key = load_public_key(path)
    check_public_key(key)
    return key


def _anchor(path_text: str) -> Any:
    from taskloom.security import SignedHead

    path = Path(path_text)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read anchor {path}: {exc.strerror or exc}") from exc
    return SignedHead.from_bytes(data)


async def audit_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import AuditLog

    if args.anchor and not args.key:
        raise UsageError(
            "an anchor proves nothing without the key that signed it: add --key KEY "
            "(the signer's .pub file or key name)"
        )
    log = AuditLog(await ctx.storage(), AUDIT_STREAM)
    public_key = _public_key(ctx, args.key) if args.key else None
    head = _anchor(args.anchor) if args.anchor else None
    if public_key is not None and head is None and await log.stored_head() is None:
        raise UsageError(
            "--key given but no signed head is stored: pass the anchor you kept "
            "(--anchor FILE) or make one with 'taskloom audit anchor'"
        )
    report = await log.verify(head=head, public_key=public_key)
    data = {
        "ok": report.ok,
        "entries": report.entries,
        "first_bad": report.first_bad,
        "kind": report.kind,
        "message": report.message,
        "head_checked": report.head_checked,
        "anchor": args.anchor,
    }

    def human() -> None:
        if report.ok:
            signed = ", signed head checked" if report.head_checked else ""
            text = f"audit log OK: {report.entries} entries, chain intact{signed}"
        elif report.kind == "torn":
            text = f"audit log has a TORN TAIL at entry {report.first_bad}: {report.message}"
        else:
            where = f" at entry {report.first_bad}" if report.first_bad is not None else ""
            text = f"audit log BROKEN{where} ({report.kind}): {report.message}"
        ctx.out.console.print(text, markup=False)

    ctx.out.data(data, human)
    return 0 if report.ok else 1


async def audit_anchor(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import AuditLog
    from taskloom.security._keys import _write_atomic

    key = load_signing_key(ctx, args.key)
    log = AuditLog(await ctx.storage(), AUDIT_STREAM)
    report = await log.verify()
    if not report.ok:
        raise UsageError(
            f"the audit log does not verify ({report.kind}: {report.message}); an anchor "
            "would vouch for it: fix it first ('taskloom audit repair')"
        )
    head = await log.sign_head(key)
    if args.out:
        _write_atomic(Path(args.out), head.to_bytes(), mode=0o644, overwrite=True)
    data = {
        "stream": head.stream,
        "seq": head.seq,
        "hash": head.hash,
        "key_id": head.key_id,
        "anchor": args.out,
        "signed_head": head.to_bytes().decode("ascii"),
    }
    ctx.out.data(
        data,
        lambda: ctx.out.console.print(
            f"anchored the audit log at entry {head.seq} ({head.hash[:16]}...) with key "
            f"{head.key_id[:16]}..."
            + (f" -> {args.out}" if args.out else "")
            + "\n  keep the anchor and the public key away from this machine's writers",
            markup=False,
        ),
    )
    return 0


async def audit_repair(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import AuditLog

    log = AuditLog(await ctx.storage(), AUDIT_STREAM)
    entry = await log.repair(actor=actor(), reason=args.reason or "")
    if entry is None:
        ctx.out.data(
            {"repaired": False},
            lambda: ctx.out.console.print("audit log OK: nothing to repair", markup=False),
        )
        return 0
    details = dict(entry.details)
    ctx.out.data(
        {"repaired": True, "seq": entry.seq, **details},
        lambda: ctx.out.console.print(
            f"repaired: kept entries 1 to {details['kept']}, left {details['skipped']} "
            f"damaged entr{'y' if details['skipped'] == 1 else 'ies'} out of the chain "
            f"({details['found']}); the repair is entry {entry.seq} of the log",
            markup=False,
        ),
    )
    return 0


async def audit_show(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import AuditLog

    log = AuditLog(await ctx.storage(), AUDIT_STREAM)
    entries = (await log.entries())[-args.limit :]
    rows: list[dict[str, Any]] = [
        {
            "seq": e.seq,
            "time": e.time,
            "actor": e.actor,
            "action": e.action,
            "subject": e.subject,
            "details": e.details,
        }
        for e in entries
    ]
    ctx.out.data(
        rows,
        lambda: ctx.out.table(
            "audit log",
            ["seq", "time", "actor", "action", "subject"],
            [
                [
                    r["seq"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])),
                    r["actor"],
                    r["action"],
                    r["subject"],
                ]
                for r in rows
            ],
        ),
    )
    return 0


def register(group: Callable[..., Any], add_to: Callable[..., Any]) -> None:
    audit_cmd = group("audit", "the tamper-evident audit log")
    cmd = add_to(audit_cmd, "verify", "check the audit log's hash chain and head", audit_verify)
    cmd.add_argument("--anchor", help="a signed head kept elsewhere ('taskloom audit anchor')")
    cmd.add_argument("--key", help="the public key (file or key name) that signed the head")
    cmd = add_to(audit_cmd, "show", "show the latest audit entries", audit_show)
    cmd.add_argument("--limit", type=positive_int, default=50, help="at most this many entries")
    cmd = add_to(
        audit_cmd, "anchor", "sign the log's head and export it (keep it elsewhere)", audit_anchor
    )
    cmd.add_argument("--key", required=True, help="signing key name or path")
    cmd.add_argument("--out", help="write the signed head to this file")
    cmd = add_to(
        audit_cmd,
        "repair",
        "keep the intact entries of a damaged log and record the repair in it",
        audit_repair,
    )
    cmd.add_argument("--reason", help="why (recorded in the repair entry)")
