"""CLI commands for secrets. A value is read from a hidden prompt or stdin, never argv."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from taskloom.contracts import MASK
from taskloom.sdk._cli.context import CliContext, read_secret_value
from taskloom.sdk._cli.security import audit


async def secrets_set(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await ctx.secrets()
    value = read_secret_value(f"value of {args.name}: ")
    await store.set(args.name, value)
    await audit(ctx, "secrets.set", args.name)
    ctx.out.data({"name": args.name, "set": True}, lambda: ctx.out.note(f"secret {args.name} set"))
    return 0


async def secrets_list(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await ctx.secrets()
    names = await store.names()
    ctx.out.data(names, lambda: ctx.out.table("secrets", ["name"], [[n] for n in names]))
    return 0


async def secrets_delete(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await ctx.secrets()
    existed = await store.delete(args.name)
    await audit(ctx, "secrets.delete", args.name, existed=existed)
    ctx.out.data(
        {"name": args.name, "deleted": existed},
        lambda: ctx.out.note(
            f"secret {args.name} deleted" if existed else f"no secret named {args.name}"
        ),
    )
    return 0 if existed else 1


async def secrets_get(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await ctx.secrets()
    secret = await store.get(args.name)
    if args.reveal:
        await audit(ctx, "secrets.reveal", args.name)
    shown = secret.reveal() if args.reveal else MASK
    ctx.out.data(
        {"name": args.name, "value": shown}, lambda: ctx.out.console.print(shown, markup=False)
    )
    return 0


def register(group: Callable[..., Any], add_to: Callable[..., Any]) -> None:
    secrets = group("secrets", "manage secrets (API keys and the like)")
    cmd = add_to(
        secrets, "set", "set a secret; the value comes from a hidden prompt or stdin", secrets_set
    )
    cmd.add_argument("name")
    add_to(secrets, "list", "list secret names (never values)", secrets_list)
    cmd = add_to(secrets, "delete", "delete a secret", secrets_delete)
    cmd.add_argument("name")
    cmd = add_to(secrets, "get", "show a secret (masked unless --reveal)", secrets_get)
    cmd.add_argument("name")
    cmd.add_argument("--reveal", action="store_true", help="print the value itself")
