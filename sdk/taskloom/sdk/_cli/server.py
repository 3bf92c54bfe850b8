"""CLI commands of the HTTP API: ``serve`` and ``tokens create|list|revoke``.

``serve`` builds the configured engine (store, executors, verified plugins), wraps it
in ``taskloom.sdk.server.create_app`` and runs it under uvicorn. It refuses to listen
on anything but a loopback address unless the store holds at least one unexpired
token: the API denies every request without one, and a server open to the network
that nobody can use is a misconfiguration worth stopping at. Tokens live in the
configured store, where ``serve`` finds them.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskloom.contracts import UsageError
from taskloom.sdk._cli.context import CliContext

if TYPE_CHECKING:
    from taskloom.sdk.server import TokenStore

__all__ = ["is_loopback", "register"]

SCOPES = ("read", "submit", "admin")
"""The token scopes (``taskloom.sdk.server.SCOPES``; not imported so that the CLI
starts without the ``server`` extra)."""


def _server() -> Any:
    """``taskloom.sdk.server``, or a UsageError saying how to install it."""
    try:
        import taskloom.sdk.server as server
    except ImportError as exc:
        raise UsageError(
            f"the HTTP API needs the server extra ({exc.name} is missing): "
            "pip install 'taskloom[server]'"
        ) from None
    return server


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1 or localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(
    add: Callable[..., Any], group: Callable[..., Any], add_to: Callable[..., Any]
) -> None:
    cmd = add("serve", "serve the HTTP API (/api/tasks) and the run viewer (/ui)", serve)
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    cmd.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    cmd.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="runs this process executes at once (0: none, separate workers do the work)",
    )
    tokens = group("tokens", "manage API tokens (shown once, stored only as a hash)")
    cmd = add_to(
        tokens, "create", "create a token and print it (the only time it is shown)", tokens_create
    )
    cmd.add_argument(
        "--scope",
        required=True,
        choices=list(SCOPES),
        help="read: list and watch runs; submit: also submit, cancel, resume; admin: also delete",
    )
    cmd.add_argument("--name", help="a name to list and revoke it by (default: token-<id>)")
    cmd.add_argument(
        "--expires", metavar="DURATION", help="lifetime, for example 30d, 12h, 90m (default: never)"
    )
    add_to(tokens, "list", "list tokens (never their secrets)", tokens_list)
    cmd = add_to(tokens, "revoke", "revoke a token by name (or id)", tokens_revoke)
    cmd.add_argument("name")


async def _token_store(ctx: CliContext) -> TokenStore:
    store: TokenStore = _server().TokenStore(await ctx.storage())
    return store


async def tokens_create(args: argparse.Namespace, ctx: CliContext) -> int:
    expires = _server().parse_duration(args.expires) if args.expires else None
    store = await _token_store(ctx)
    token, info = await store.create(scope=args.scope, name=args.name, expires_in_s=expires)
    until = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.expires_at))
        if info.expires_at
        else "never"
    )

    def human() -> None:
        ctx.out.console.print(token, markup=False, highlight=False)
        ctx.out.note(
            f"token {info.name!r} (scope {info.scope}, expires {until}); it is shown only "
            "now: store it safely, send it as 'Authorization: Bearer <token>'"
        )

    ctx.out.data({"token": token, "name": info.name, "scope": info.scope}, human)
    return 0


async def tokens_list(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _token_store(ctx)
    found = await store.list()
    now = time.time()
    rows: list[dict[str, Any]] = [
        {
            "id": info.id,
            "name": info.name,
            "scope": info.scope,
            "created_at": info.created_at,
            "expires_at": info.expires_at,
            "expired": info.expired(now),
        }
        for info in found
    ]

    def when(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "never"

    ctx.out.data(
        rows,
        lambda: ctx.out.table(
            "API tokens",
            ["name", "scope", "created", "expires", ""],
            [
                [
                    r["name"],
                    r["scope"],
                    when(r["created_at"]),
                    when(r["expires_at"]),
                    "expired" if r["expired"] else "",
                ]
                for r in rows
            ],
        ),
    )
    return 0


async def tokens_revoke(args: argparse.Namespace, ctx: CliContext) -> int:
    store = await _token_store(ctx)
    info = await store.revoke(args.name)
    if info is None:
        raise UsageError(f"no token named {args.name!r}; `taskloom tokens list` shows them")
    ctx.out.data(
        {"name": info.name, "scope": info.scope, "revoked": True},
        lambda: ctx.out.note(f"token {info.name!r} revoked"),
    )
    return 0


async def serve(args: argparse.Namespace, ctx: CliContext) -> int:
    server_api = _server()
    import uvicorn

    from taskloom.sdk._cli.drive import build_engine

    settings = server_api.ServerSettings.from_table(
        ctx.config.server, base=ctx.config.base_dir, source=ctx.config.source or "defaults"
    )
    engine, host = await build_engine(ctx)
    try:
        app = server_api.create_app(engine, settings=settings)
        api = app.state.taskloom
        await api.ready()
        if not is_loopback(args.host) and (api.tokens is None or not await api.tokens.has_active()):
            raise UsageError(
                f"refusing to listen on {args.host}: no token store holds an unexpired "
                "token, so the API would be open to the network yet deny everyone; create "
                "one with `taskloom tokens create --scope read`, or listen on 127.0.0.1"
            )
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="info" if ctx.debug else "warning",
            lifespan="on",
        )
        server = uvicorn.Server(config)
        ctx.out.note(
            f"taskloom API on http://{args.host}:{args.port}/api/tasks, viewer on /ui; "
            + (
                f"up to {args.workers} run(s) at once in this process"
                if args.workers
                else "no runs in this process (start `taskloom worker` processes)"
            )
            + "; Ctrl-C stops"
        )
        if args.workers:
            from taskloom.sdk._workers.worker import Worker

            async with Worker(engine, concurrency=args.workers):
                await server.serve()
        else:
            await server.serve()
    finally:
        await engine.aclose()
        await host.aclose()
    return 0
