"""CLI commands of the security layer: keys, sign, verify, trust, plugins, audit.

A plugin to sign is a directory with a ``plugin.toml`` describing it and its
code under ``src/``::

    [plugin]
    name = "textkit"
    version = 1
    entry_point = "textkit:plugin"
    publisher = "Example Corp"
    description = "text helpers"
    valid_days = 365

    [capabilities]
    steps = ["word_count"]
    secrets = []
    storage_namespaces = []
    network_hosts = []
    executors = []

``taskloom sign DIR --key NAME`` writes ``DIR/taskloom-plugin.json``, the signed
envelope the plugin host verifies before it imports anything.
"""

from __future__ import annotations

import argparse
import getpass
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskloom.contracts import Capabilities, UsageError
from taskloom.sdk._cli.context import CliContext, passphrase
from taskloom.sdk._plugins.host import CODE_DIR, ENVELOPE_NAME, PluginHost, PluginSource, discover

KEY_PASSPHRASE_ENV = "TASKLOOM_KEY_PASSPHRASE"
AUDIT_STREAM = "audit"


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def audit(ctx: CliContext, action: str, subject: str, **details: Any) -> None:
    """Record what a command did in the tamper-evident audit log."""
    from taskloom.security import AuditLog

    log = AuditLog(await ctx.storage(), AUDIT_STREAM)
    await log.append(actor=actor(), action=action, subject=subject, details=details)


# --- keys --------------------------------------------------------------------


def _key_paths(ctx: CliContext, name: str) -> tuple[Path, Path]:
    candidate = Path(name)
    if candidate.suffix in (".key", ".pub") or candidate.parent != Path("."):
        stem = candidate.with_suffix("")
        return stem.with_suffix(".key"), stem.with_suffix(".pub")
    return ctx.config.keys_dir / f"{name}.key", ctx.config.keys_dir / f"{name}.pub"


def load_signing_key(ctx: CliContext, name: str) -> Any:
    from taskloom.security import load_private_key

    private_path, _ = _key_paths(ctx, name)
    if not private_path.is_file():
        raise UsageError(
            f"no private key {private_path}: create one with 'taskloom keys generate {name}'"
        )
    return load_private_key(private_path, passphrase(KEY_PASSPHRASE_ENV, "key passphrase: "))


async def keys_generate(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import generate_key, save_private_key, save_public_key

    private_path, public_path = _key_paths(ctx, args.name)
    if private_path.exists() and not args.force:
        raise UsageError(f"{private_path} exists; choose another name or pass --force")
    secret = passphrase(KEY_PASSPHRASE_ENV, "new key passphrase: ", confirm=True)
    key = generate_key()
    private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_private_key(key, private_path, secret, overwrite=args.force)
    save_public_key(key.public_key, public_path, overwrite=args.force)
    await audit(ctx, "keys.generate", key.key_id, name=args.name)
    ctx.out.data(
        {
            "name": args.name,
            "key_id": key.key_id,
            "private": str(private_path),
            "public": str(public_path),
        },
        lambda: ctx.out.console.print(
            f"key {args.name}: id {key.key_id}\n  private (encrypted): {private_path}\n"
            f"  public: {public_path}",
            markup=False,
        ),
    )
    return 0


async def keys_list(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import load_public_key

    rows = []
    directory = ctx.config.keys_dir
    for public in sorted(directory.glob("*.pub")) if directory.is_dir() else []:
        key = load_public_key(public)
        rows.append(
            {
                "name": public.stem,
                "key_id": key.key_id,
                "private": public.with_suffix(".key").is_file(),
                "public": str(public),
            }
        )
    ctx.out.data(
        rows,
        lambda: ctx.out.table(
            f"keys in {directory}",
            ["name", "key id", "private key"],
            [[r["name"], r["key_id"], "yes" if r["private"] else "no"] for r in rows],
        ),
    )
    return 0


# --- sign and verify -------------------------------------------------------


def _plugin_description(root: Path) -> tuple[dict[str, Any], Capabilities]:
    desc_path = root / "plugin.toml"
    try:
        data = tomllib.loads(desc_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{desc_path} not found: describe the plugin there (see --help)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {desc_path}: {exc}") from exc
    plugin = data.get("plugin")
    if not isinstance(plugin, dict):
        raise UsageError(f"{desc_path}: missing the [plugin] table")
    for field in ("name", "version", "entry_point", "publisher"):
        if field not in plugin:
            raise UsageError(f"{desc_path}: [plugin] needs '{field}'")
    caps = data.get("capabilities", {})
    try:
        capabilities = Capabilities(**caps)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{desc_path}: bad [capabilities]: {exc}") from exc
    return plugin, capabilities


async def sign(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.security import build_manifest, sign_manifest

    root = Path(args.plugin_dir)
    plugin, capabilities = _plugin_description(root)
    caches = sorted((root / CODE_DIR).rglob("__pycache__"))
    if caches:
        raise UsageError(
            f"{caches[0]} holds compiled bytecode, which would be signed as part of the plugin "
            "(and never run: the host loads only .py sources): delete it and sign again"
        )
    now = int(time.time())
    try:
        valid_days = int(plugin.get("valid_days", 365))
        manifest = build_manifest(
            root / CODE_DIR,
            name=plugin["name"],
            version=int(plugin["version"]),
            entry_point=plugin["entry_point"],
            publisher=plugin["publisher"],
            capabilities=capabilities,
            issued_at=now,
            expires_at=now + valid_days * 86400,
            min_sdk_version=str(plugin.get("min_sdk_version", "0.1.0")),
            description=str(plugin.get("description", "")),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{root}/plugin.toml: {exc}") from exc
    keys = [load_signing_key(ctx, name) for name in args.key]
    envelope = sign_manifest(manifest, keys)
    out_path = root / ENVELOPE_NAME
    out_path.write_bytes(envelope)
    await audit(
        ctx, "plugin.sign", manifest.name, version=manifest.version, keys=[k.key_id for k in keys]
    )
    ctx.out.data(
        {
            "plugin": manifest.name,
            "version": manifest.version,
            "files": len(manifest.files),
            "signers": [k.key_id for k in keys],
            "envelope": str(out_path),
        },
        lambda: ctx.out.console.print(
            f"signed {manifest.name} v{manifest.version} ({len(manifest.files)} files) "
            f"with {len(keys)} key(s) -> {out_path}",
            markup=False,
        ),
    )
    return 0


async def _host(ctx: CliContext, *, dev_mode: bool | None = None) -> PluginHost:
    from taskloom.sdk._registry import ExecutorRegistry

    storage = await ctx.storage()
    return PluginHost(
        storage=storage,
        executors=ExecutorRegistry(),
        trust=ctx.trust(),
        rollback=ctx.marks(),
        secrets=None,
        dev_mode=ctx.config.dev_mode if dev_mode is None else dev_mode,
    )


async def verify(args: argparse.Namespace, ctx: CliContext) -> int:
    root = Path(args.plugin_dir)
    if not (root / ENVELOPE_NAME).is_file():
        raise UsageError(f"{root} has no {ENVELOPE_NAME}: sign it first with 'taskloom sign'")
    host = await _host(ctx, dev_mode=False)
    manifest, files, signers = await host.verify(PluginSource(root=root, origin="directory"))
    await audit(ctx, "plugin.verify", manifest.name, version=manifest.version, ok=True)
    ctx.out.data(
        {
            "plugin": manifest.name,
            "version": manifest.version,
            "publisher": manifest.publisher,
            "signers": sorted(signers),
            "files": len(files),
            "expires_at": manifest.expires_at,
            "ok": True,
        },
        lambda: ctx.out.console.print(
            f"OK: {manifest.name} v{manifest.version} by {manifest.publisher}, "
            f"{len(files)} files, signed by {', '.join(s[:16] for s in sorted(signers))}",
            markup=False,
        ),
    )
    return 0


# --- plugins -----------------------------------------------------------------


async def plugins_list(args: argparse.Namespace, ctx: CliContext) -> int:
    sources = discover(ctx.config.plugin_dirs)
    host = await _host(ctx)
    try:
        reports = await host.load(sources)
    finally:
        await host.aclose()
    rows: list[dict[str, Any]] = [
        {
            "name": r.name,
            "version": r.version,
            "loaded": r.loaded,
            "verified": r.verified,
            "steps": list(r.steps),
            "executors": list(r.executors),
            "error": r.error,
            "error_type": r.error_type,
            "source": r.source,
        }
        for r in reports
    ]
    ctx.out.data(
        rows,
        lambda: ctx.out.table(
            "plugins",
            ["name", "version", "status", "steps", "error"],
            [
                [
                    r["name"],
                    r["version"],
                    ("ok" if r["verified"] else "UNSIGNED (dev mode)")
                    if r["loaded"]
                    else "refused",
                    ", ".join(r["steps"]),
                    r["error"],
                ]
                for r in rows
            ],
        ),
    )
    return 0 if all(r.loaded for r in reports) else 1


async def plugins_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    sources = discover(ctx.config.plugin_dirs)
    host = await _host(ctx, dev_mode=False)
    results = []
    for source in sources:
        try:
            manifest, _files, _signers = await host.verify(source)
            results.append({"plugin": manifest.name, "source": str(source.root), "ok": True})
        except Exception as exc:
            results.append(
                {
                    "plugin": source.root.name,
                    "source": str(source.root),
                    "ok": False,
                    "error": str(exc),
                }
            )
    ctx.out.data(
        results,
        lambda: ctx.out.table(
            "plugin verification",
            ["plugin", "result"],
            [[r["plugin"], "OK" if r["ok"] else f"REFUSED: {r['error']}"] for r in results],
        ),
    )
    return 0 if all(r["ok"] for r in results) else 1


def register(
    add: Callable[..., Any], group: Callable[..., Any], add_to: Callable[..., Any]
) -> None:
    keys = group("keys", "manage Ed25519 signing keys")
    cmd = add_to(
        keys,
        "generate",
        "generate a key pair (private key encrypted with a passphrase)",
        keys_generate,
    )
    cmd.add_argument("name", help="key name (files NAME.key and NAME.pub in the key directory)")
    cmd.add_argument("--force", action="store_true", help="overwrite an existing key")
    add_to(keys, "list", "list the keys in the key directory", keys_list)

    cmd = add("sign", "sign a plugin directory (writes its taskloom-plugin.json)", sign)
    cmd.add_argument("plugin_dir", help="the plugin directory (plugin.toml and src/)")
    cmd.add_argument(
        "--key", action="append", required=True, help="key name or path; repeat for more signers"
    )

    cmd = add("verify", "verify a signed plugin directory against the trust store", verify)
    cmd.add_argument("plugin_dir")

    from taskloom.sdk._cli import trust as _cli_trust

    _cli_trust.register(group, add_to)

    plugins = group("plugins", "discover and check plugins")
    add_to(plugins, "list", "load the configured plugins and show what each provides", plugins_list)
    add_to(plugins, "verify", "verify every configured plugin without loading it", plugins_verify)

    from taskloom.sdk._cli import audit as _cli_audit

    _cli_audit.register(group, add_to)
