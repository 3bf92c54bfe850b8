"""Shared pieces of the HTTP API tests: an engine, a real uvicorn server, tokens.

``serving(app)`` runs the app under a real uvicorn server on 127.0.0.1 (an
ephemeral port) in the test's own event loop, so a test can talk HTTP to it with
httpx and still look at the engine behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk.server import TokenStore


def hello_pipeline(*, name: str = "hello", steps: int = 2) -> dict[str, Any]:
    """A small pipeline on the scripted executor with one optional input."""
    body = [{"id": "s0", "prompt": "Say hello to {{inputs.who}}."}]
    for index in range(1, steps):
        body.append(
            {"id": f"s{index}", "prompt": f"Step {index}: {{{{steps.s{index - 1}.output}}}}"}
        )
    return {
        "taskloom": "pipeline/v1",
        "name": name,
        "inputs": {"who": {"type": "string", "default": "world"}},
        "steps": body,
        "output": {"last": f"{{{{steps.s{steps - 1}.output}}}}"},
    }


def make_engine(
    *,
    latency_s: float = 0.0,
    storage: Any = None,
    redactor: Any = None,
    lease_ttl_s: float = 30.0,
) -> Engine:
    """An engine over memory storage with the scripted executor (echo replies)."""
    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor(latency_s=latency_s))
    return Engine(
        storage=storage if storage is not None else MemoryStorage(),
        registry=registry,
        redactor=redactor,
        lease_ttl_s=lease_ttl_s,
    )


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def tokens_for(store: TokenStore) -> dict[str, str]:
    """One token of each scope: {"read": ..., "submit": ..., "admin": ...}."""
    made = {}
    for scope in ("read", "submit", "admin"):
        token, _info = await store.create(scope=scope, name=f"test-{scope}")
        made[scope] = token
    return made


async def wait_until(predicate: Any, *, timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` (sync or async) until it is true; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.01)


class Served:
    """A running server and what a test needs around it."""

    def __init__(self, client: Any, tokens: dict[str, str], api: Any, engine: Engine) -> None:
        self.client = client
        self.tokens = tokens
        self.api = api
        self.engine = engine

    def auth(self, scope: str = "admin") -> dict[str, str]:
        """The Authorization header of the token of ``scope``."""
        return {"authorization": f"Bearer {self.tokens[scope]}"}

    async def submit(self, pipeline: Any = None, **body: Any) -> dict[str, Any]:
        """POST /api/tasks (a hello pipeline by default); the 202 body."""
        response = await self.client.post(
            "/api/tasks",
            json={"pipeline": pipeline or hello_pipeline(), **body},
            headers=self.auth("submit"),
        )
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def finished(self, run_id: str) -> dict[str, Any]:
        """Wait until the run is finished; its GET body."""
        found: dict[str, Any] = {}

        async def done() -> bool:
            response = await self.client.get(f"/api/tasks/{run_id}", headers=self.auth("read"))
            found.update(response.json())
            return found.get("status") in ("succeeded", "failed", "cancelled")

        await wait_until(done)
        return found


@contextlib.asynccontextmanager
async def served_app(
    engine: Engine | None = None, *, settings: Any = None, workers: int = 16
) -> AsyncIterator[Served]:
    """An engine behind create_app behind uvicorn, with an in-process worker running up
    to ``workers`` runs (none if 0), one token per scope, an httpx client."""
    import httpx

    from taskloom.sdk import Worker
    from taskloom.sdk.server import create_app

    engine = engine if engine is not None else make_engine()
    app = create_app(engine, settings=settings)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(engine)
        if workers:
            await stack.enter_async_context(
                Worker(engine, concurrency=workers, poll_s=0.05, grace_s=0)
            )
        base = await stack.enter_async_context(serving(app))
        api = app.state.taskloom
        await api.ready()
        tokens = await tokens_for(api.tokens)
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30))
        yield Served(client, tokens, api, engine)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_process(*args: str, timeout_s: float = 30.0) -> Iterator[str]:
    """Run `taskloom serve ARGS` in a subprocess (working directory and TASKLOOM_HOME as
    the caller set them); yield its base URL once /healthz answers; SIGINT at the end."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from taskloom.sdk._cli.main import main; raise SystemExit(main())",
            "serve",
            "--port",
            str(port),
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"taskloom serve exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("taskloom serve did not answer /healthz in time")
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
