"""CLI commands of the trust store: add, remove, list, approve, rebaseline.

Every change saves the trust store as its next version (an older copy put back is
refused) and, when ``[plugins] root_key`` is configured, must be signed with the
root private key (``--sign-with NAME``): the CLI then loads only a trust store that
key signed. The rollback marks beside the trust store (``trust.marks.json`` next to
``trust.json``) hold each plugin's floor; when they are missing or damaged no plugin
loads until ``taskloom trust rebaseline`` records the plugins installed now.
``taskloom trust approve NAME`` lets the installed version of a plugin ask for the
capabilities it adds over the version accepted before.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskloom.contracts import UsageError
from taskloom.sdk._cli.context import CliContext
from taskloom.sdk._cli.security import _key_paths, audit, load_signing_key
from taskloom.sdk._plugins.host import PluginHost, discover


def _save_trust(ctx: CliContext, trust: Any, sign_with: str | None) -> None:
    """Save ``trust`` as its next version, signed if a root key is configured, and move
    the marks' trust version along (the first save creates the marks file)."""
    path = ctx.config.trust_path
    root = ctx.root_key()
    if root is not None and not sign_with:
        raise UsageError(
            f"the trust store must be signed by the root key {root.key_id[:16]}... "
            "([plugins] root_key): add --sign-with ROOT_KEY_NAME"
        )
    key = load_signing_key(ctx, sign_with) if sign_with else None
    if key is not None and root is not None and key.key_id != root.key_id:
        raise UsageError(
            f"--sign-with {sign_with} is key {key.key_id[:16]}..., not the configured root key "
            f"{root.key_id[:16]}...: the saved trust store would not load"
        )
    marks = ctx.marks()
    fresh = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    trust.save(path, sign_with=key)
    if fresh and not marks.exists():
        marks.create(trust_version=trust.version)
    else:
        marks.check_trust_version(trust.version, source=f"trust store {path}")


async def trust_add(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import load_public_key

    path = Path(args.public_key)
    if not path.is_file():
        path = _key_paths(ctx, args.public_key)[1]
    if not path.is_file():
        raise UsageError(
            f"no public key {args.public_key!r} (neither a file nor {path}): give the "
            "publisher's .pub file, or a key name from 'taskloom keys list'"
        )
    key = load_public_key(path)
    trust = ctx.trust()
    trust.add_key(key, plugins=args.plugins, label=args.label or path.stem)
    _save_trust(ctx, trust, args.sign_with)
    await audit(ctx, "trust.add", key.key_id, plugins=list(args.plugins))
    ctx.out.data(
        {"key_id": key.key_id, "plugins": args.plugins, "trust": str(ctx.config.trust_path)},
        lambda: ctx.out.console.print(
            f"trusted {key.key_id} for {', '.join(args.plugins)} in {ctx.config.trust_path}",
            markup=False,
        ),
    )
    return 0


async def trust_remove(args: argparse.Namespace, ctx: CliContext) -> int:
    trust = ctx.trust()
    matches = [k for k in trust.keys if k.startswith(args.key_id)]
    if len(matches) != 1:
        raise UsageError(
            f"{'no' if not matches else 'more than one'} trusted key matches {args.key_id!r}; "
            "'taskloom trust list' shows the ids"
        )
    if args.revoke:
        trust.revoke(matches[0])
    else:
        trust.remove_key(matches[0])
    _save_trust(ctx, trust, args.sign_with)
    await audit(ctx, "trust.revoke" if args.revoke else "trust.remove", matches[0])
    ctx.out.data(
        {"key_id": matches[0], "revoked": bool(args.revoke), "version": trust.version},
        lambda: ctx.out.console.print(
            f"{'revoked' if args.revoke else 'removed'} {matches[0]} (trust store version "
            f"{trust.version})",
            markup=False,
        ),
    )
    return 0


async def trust_list(args: argparse.Namespace, ctx: CliContext) -> int:
    trust = ctx.trust(check_marks=False)  # reading only: shown even when the marks are gone
    rows = [
        {"key_id": kid, "label": tk.label, "plugins": list(tk.plugins)}
        for kid, tk in sorted(trust.keys.items())
    ]
    data = {
        "keys": rows,
        "revoked": sorted(trust.revoked),
        "path": str(ctx.config.trust_path),
        "version": trust.version,
    }
    ctx.out.data(
        data,
        lambda: ctx.out.table(
            f"trusted keys ({ctx.config.trust_path}, version {trust.version})",
            ["key id", "label", "may sign"],
            [[r["key_id"], r["label"], ", ".join(r["plugins"])] for r in rows],
        ),
    )
    return 0


async def _verified_now(ctx: CliContext, trust: Any) -> dict[str, Any]:
    """Every configured plugin that verifies now, as the mark it would set, by name.

    Verified against a throw-away floor (nothing recorded in the real marks)."""
    from taskloom.adapters.memory import MemoryStorage
    from taskloom.sdk._registry import ExecutorRegistry
    from taskloom.security import RollbackGuard

    scratch = MemoryStorage()
    guard = RollbackGuard(scratch)
    host = PluginHost(
        storage=scratch,
        executors=ExecutorRegistry(),
        trust=trust,
        rollback=guard,
        secrets=None,
        dev_mode=False,
    )
    found: dict[str, Any] = {}
    for source in discover(ctx.config.plugin_dirs):
        try:
            manifest, _files, _signers = await host.verify(source)
        except Exception as exc:  # reported, and left out of the new floor
            ctx.out.note(f"plugin at {source.root} does not verify, left out: {exc}")
            continue
        mark = await guard.mark(manifest.name)
        if mark is not None:
            found[manifest.name] = (manifest, mark)
    return found


async def trust_rebaseline(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import RollbackMarksUnavailable

    marks = ctx.marks()
    try:
        marks.marks()
        intact = True
    except RollbackMarksUnavailable:
        intact = False
    if intact and not args.force:
        raise UsageError(
            f"the rollback marks {marks.path} are intact: nothing to re-baseline (--force "
            "resets them to the plugins installed now, lowering any floor above them)"
        )
    trust = ctx.trust(check_marks=False)
    found = await _verified_now(ctx, trust)
    marks.rebaseline({name: mark for name, (_, mark) in found.items()}, trust_version=trust.version)
    floors = {name: mark.version for name, (_, mark) in found.items()}
    await audit(ctx, "trust.rebaseline", str(marks.path), plugins=floors, forced=bool(args.force))
    ctx.out.data(
        {"marks": str(marks.path), "plugins": floors, "trust_version": trust.version},
        lambda: ctx.out.console.print(
            f"rollback marks {marks.path} re-baselined: "
            + (", ".join(f"{n} v{v}" for n, v in sorted(floors.items())) or "no plugins"),
            markup=False,
        ),
    )
    return 0


async def trust_approve(args: argparse.Namespace, ctx: CliContext) -> int:
    trust = ctx.trust()
    found = await _verified_now(ctx, trust)
    if args.plugin not in found:
        raise UsageError(
            f"no configured plugin named {args.plugin!r} verifies now: 'taskloom plugins "
            "verify' shows why"
        )
    manifest, _ = found[args.plugin]
    added = ctx.marks().approve(args.plugin, manifest.capabilities)
    await audit(ctx, "trust.approve", args.plugin, version=manifest.version, capabilities=added)
    ctx.out.data(
        {"plugin": args.plugin, "version": manifest.version, "approved": added},
        lambda: ctx.out.console.print(
            f"approved for {args.plugin} v{manifest.version}: "
            + ("; ".join(f"{k}: {', '.join(v)}" for k, v in added.items()) or "nothing new"),
            markup=False,
        ),
    )
    return 0


def register(group: Callable[..., Any], add_to: Callable[..., Any]) -> None:
    trust = group("trust", "manage the trust store of plugin publisher keys")
    cmd = add_to(trust, "add", "trust a publisher's public key for some plugin names", trust_add)
    cmd.add_argument("public_key", help="public key file, or a key name in the key directory")
    cmd.add_argument(
        "--plugins", nargs="+", required=True, help="plugin names or patterns (fnmatch)"
    )
    cmd.add_argument("--label", help="a label for the key")
    cmd.add_argument("--sign-with", help="the root key to sign the trust store with")
    cmd = add_to(
        trust, "remove", "stop trusting a key (--revoke: never trust it again)", trust_remove
    )
    cmd.add_argument("key_id", help="key id or a unique prefix of it")
    cmd.add_argument("--revoke", action="store_true")
    cmd.add_argument("--sign-with", help="the root key to sign the trust store with")
    add_to(trust, "list", "list trusted keys and revoked ids", trust_list)
    cmd = add_to(
        trust,
        "approve",
        "let the installed version of a plugin use the capabilities it adds",
        trust_approve,
    )
    cmd.add_argument("plugin", help="the plugin's name")
    cmd = add_to(
        trust,
        "rebaseline",
        "record the plugins installed now as the rollback floor (missing or damaged marks)",
        trust_rebaseline,
    )
    cmd.add_argument("--force", action="store_true", help="also when the marks are intact")
