"""The HTTP API: what it costs over the same work done in process, each beside its baseline.

The server is a real ``taskloom serve`` process (uvicorn, SQLite store, the scripted
executor). The load comes from this process through a minimal keep-alive HTTP/1.1
client on asyncio streams (``_Raw``): httpx costs more CPU per request than the
server does (on this machine a trivial Starlette app answered ~50 req/s to httpx at
50 in flight and ~1,400 to the raw client), and a benchmark of the server must not
measure its client. The fan-out row uses httpx streams (each client reads lines).

Rows (``run(quick)`` returns them; ``python -m benchmarks.bench_api [--quick]`` prints
them and writes ``benchmarks/results/bench_api.json``):

- ``api submit -> first event``: POST /api/tasks, then GET its event stream, until the
  first event arrives (median ms), beside ``engine.submit`` in process until the run's
  first event reaches a bus subscriber (a Worker in the same process runs it).
- ``api submissions``: N submissions through POST /api/tasks (50 in flight), beside the
  same N ``engine.submit`` calls made in process on the same kind of store (50 at
  once); the ratio is API time / in-process time (target <= 1.5x). No worker runs
  during either, so both measure submitting.
- ``sse fan-out 100``: 100 clients follow one run's event stream; the median delay from
  an event's time to its arrival at each client, beside the same with 1 client.
- ``chain with 1,000 idle streams``: a chain's duration (the server's own record) while
  1,000 event streams sit on 1,000 queued runs nobody executes, beside the same chain
  with those streams closed (target <= 1.1x).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import _timing
from benchmarks._timing import make_row, median_spread

GROUP = "api"
CONCURRENCY = 50


def _pipeline(steps: int = 1) -> dict[str, Any]:
    body = [{"id": f"s{i}", "prompt": f"step {i} for {{{{inputs.who}}}}"} for i in range(steps)]
    return {
        "taskloom": "pipeline/v1",
        "name": "bench",
        "inputs": {"who": {"type": "string", "default": "world"}},
        "steps": body,
    }


def _config(directory: Path, *, latency_s: float) -> Path:
    path = directory / "taskloom.toml"
    path.write_text(
        '[storage]\nkind = "sqlite"\npath = "runs.db"\n\n'
        f'[executors.scripted]\ntype = "scripted"\nlatency_s = {latency_s}\n'
    )
    return path


def _cli(config: Path, *args: str) -> str:
    """Run `taskloom --config CONFIG ARGS`; its stdout (RuntimeError with stderr if it fails)."""
    command = [
        sys.executable,
        "-c",
        "from taskloom.sdk._cli.main import main; raise SystemExit(main())",
        "--config",
        str(config),
        *args,
    ]
    env = {**os.environ, "TASKLOOM_HOME": str(config.parent / "home")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"taskloom {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server(config: Path, *, workers: int) -> Iterator[tuple[str, str]]:
    """A `taskloom serve` process on ``config``; yields (base URL, admin token)."""
    import httpx

    token = json.loads(_cli(config, "tokens", "create", "--scope", "admin", "--json"))["token"]
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from taskloom.sdk._cli.main import main; raise SystemExit(main())",
            "--config",
            str(config),
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env={**os.environ, "TASKLOOM_HOME": str(config.parent / "home")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"taskloom serve did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.05)
        yield base, token
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Raw:
    """One keep-alive HTTP/1.1 connection: requests with Content-Length bodies, and the
    first event of an event stream."""

    def __init__(self, base: str, token: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self._address = (host, int(port))
        self._auth = f"Authorization: Bearer {token}\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(*self._address)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        try:
            return await self._request(method, path, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            # the server closed an idle keep-alive connection: reconnect once
            self.close()
            self._reader = self._writer = None
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        reader, writer = await self._connect()
        data = b"" if body is None else json.dumps(body).encode()
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n".encode()
            + self._auth
            + b"\r\n"
            + data
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await reader.readexactly(length)

    async def first_event(self, path: str) -> bytes:
        """Open the event stream at ``path`` on a fresh connection; its first event."""
        reader, writer = await asyncio.open_connection(*self._address)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n".encode()
            writer.write(request + self._auth + b"\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await reader.readuntil(b"data:")
            return await reader.readuntil(b"\n")
        finally:
            writer.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def _api_first_event(base: str, token: str, samples: int) -> list[float]:
    client = _Raw(base, token)
    found = []
    try:
        for index in range(samples + 2):
            start = time.perf_counter()
            status, body = await client.request(
                "POST", "/api/tasks", {"pipeline": _pipeline(), "inputs": {"who": str(index)}}
            )
            if status != 202:
                raise RuntimeError(f"submission answered {status}: {body[:300]!r}")
            await client.first_event(json.loads(body)["events_url"])
            if index >= 2:  # two warm-ups
                found.append(time.perf_counter() - start)
    finally:
        client.close()
    return found


async def _inprocess_first_event(directory: Path, samples: int) -> list[float]:
    from taskloom.adapters.scripted import ScriptedExecutor
    from taskloom.adapters.sqlite import SQLiteStorage
    from taskloom.sdk import Engine, ExecutorRegistry, Worker

    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor())
    found = []
    async with (
        await SQLiteStorage.open(directory / "first.db") as storage,
        Engine(storage=storage, registry=registry) as engine,
        Worker(engine, concurrency=4),
    ):
        for index in range(samples + 2):
            run_id = uuid.uuid4().hex
            arrived = asyncio.get_running_loop().create_future()
            subscription = engine.bus.subscribe(
                lambda event, f=arrived: f.done() or f.set_result(None), run_id=run_id
            )
            start = time.perf_counter()
            await engine.submit(_pipeline(), {"who": str(index)}, run_id=run_id)
            await arrived
            elapsed = time.perf_counter() - start
            subscription.unsubscribe()
            if index >= 2:
                found.append(elapsed)
    return found


async def _api_submissions(base: str, token: str, count: int) -> float:
    clients = [_Raw(base, token) for _ in range(CONCURRENCY)]

    async def one(client: _Raw, indices: range) -> None:
        for index in indices:
            status, body = await client.request(
                "POST", "/api/tasks", {"pipeline": _pipeline(), "inputs": {"who": f"w{index}"}}
            )
            if status != 202:
                raise RuntimeError(f"submission answered {status}: {body[:300]!r}")

    try:
        await asyncio.gather(*[one(c, range(-i - 1, -i)) for i, c in enumerate(clients)])
        start = time.perf_counter()
        share = count // CONCURRENCY
        await asyncio.gather(
            *[one(c, range(i * share, (i + 1) * share)) for i, c in enumerate(clients)]
        )
        return time.perf_counter() - start
    finally:
        for client in clients:
            client.close()


async def _inprocess_submissions(directory: Path, count: int) -> float:
    from taskloom.adapters.scripted import ScriptedExecutor
    from taskloom.adapters.sqlite import SQLiteStorage
    from taskloom.sdk import Engine, ExecutorRegistry

    registry = ExecutorRegistry()
    registry.register("scripted", ScriptedExecutor())
    gate = asyncio.Semaphore(CONCURRENCY)
    path = directory / f"submit-{uuid.uuid4().hex}.db"
    async with (
        await SQLiteStorage.open(path) as storage,
        Engine(storage=storage, registry=registry) as engine,
    ):

        async def one(index: int) -> None:
            async with gate:
                await engine.submit(_pipeline(), {"who": f"w{index}"})

        await asyncio.gather(*[one(-i - 1) for i in range(CONCURRENCY)])  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(count)])
        return time.perf_counter() - start


async def _follow(
    base: str, token: str, path: str, ready: Any, go: asyncio.Event, delays: list[float]
) -> None:
    """Read one event stream on its own connection; record each live event's delay."""
    client = _Raw(base, token)
    reader, writer = await asyncio.open_connection(*client._address)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n".encode() + client._auth + b"\r\n")
        await reader.readuntil(b"\r\n\r\n")
        ready()
        await go.wait()
        joined = time.time()
        while True:
            line = await reader.readline()
            if not line:
                return
            if not line.startswith(b"data:"):
                continue
            now = time.time()
            event = json.loads(line[5:])
            if event["at"] >= joined:
                delays.append(now - event["at"])
            if event["type"] in ("run.succeeded", "run.failed", "run.cancelled"):
                return
    finally:
        writer.close()


async def _fan_out(base: str, token: str, clients: int, steps: int) -> list[float]:
    """Delays (s) from each live event's time to its arrival, over every client."""
    submitter = _Raw(base, token)
    try:
        status, body = await submitter.request("POST", "/api/tasks", {"pipeline": _pipeline(steps)})
    finally:
        submitter.close()
    if status != 202:
        raise RuntimeError(f"submission answered {status}: {body[:300]!r}")
    url = json.loads(body)["events_url"]
    go = asyncio.Event()
    count = 0

    def ready() -> None:
        nonlocal count
        count += 1
        if count == clients:
            go.set()

    delays: list[float] = []
    await asyncio.gather(*[_follow(base, token, url, ready, go, delays) for _ in range(clients)])
    return delays


async def _chain_duration(client: _Raw, steps: int) -> float:
    """Submit a chain of ``steps`` and return its duration as the server recorded it."""
    status, body = await client.request("POST", "/api/tasks", {"pipeline": _pipeline(steps)})
    if status != 202:
        raise RuntimeError(f"submission answered {status}: {body[:300]!r}")
    url = json.loads(body)["url"]
    while True:
        status, body = await client.request("GET", url)
        detail = json.loads(body)
        if detail["status"] in ("succeeded", "failed", "cancelled"):
            return float(detail["duration_s"])
        await asyncio.sleep(0.02)


async def _idle_streams(
    base: str, token: str, idle: int, steps: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Chain durations with ``idle`` open streams on queued runs, then with none."""
    client = _Raw(base, token)
    submitters = [_Raw(base, token) for _ in range(CONCURRENCY)]
    streams: list[asyncio.StreamWriter] = []
    try:

        async def submit_idle(raw: _Raw, share: int) -> list[str]:
            found = []
            for _ in range(share):
                status, body = await raw.request(
                    "POST", "/api/tasks", {"pipeline": _pipeline(), "queue": "idle"}
                )
                if status != 202:
                    raise RuntimeError(f"submission answered {status}: {body[:300]!r}")
                found.append(json.loads(body)["events_url"])
            return found

        shares = await asyncio.gather(
            *[submit_idle(raw, idle // CONCURRENCY) for raw in submitters]
        )
        await _chain_duration(client, steps)  # warm-up
        quiet = [await _chain_duration(client, steps) for _ in range(repeats)]
        for url in [u for share in shares for u in share]:
            reader, writer = await asyncio.open_connection(*client._address)
            writer.write(f"GET {url} HTTP/1.1\r\nHost: bench\r\n".encode() + client._auth + b"\r\n")
            await reader.readuntil(b"\r\n\r\n")
            streams.append(writer)
        await asyncio.sleep(1.0)  # let every feed settle into its idle polling
        busy = [await _chain_duration(client, steps) for _ in range(repeats)]
        return busy, quiet
    finally:
        for writer in streams:
            writer.close()
        client.close()
        for raw in submitters:
            raw.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure; each row carries its baseline from this same run."""
    rows: list[dict[str, Any]] = []
    samples = 10 if quick else 40
    count = 200 if quick else 1000
    steps = 20 if quick else 60
    with tempfile.TemporaryDirectory(prefix="bench-api-") as name:
        directory = Path(name)
        fast = directory / "fast"
        fast.mkdir()
        config = _config(fast, latency_s=0.0)
        with _server(config, workers=1) as (base, token):
            api = asyncio.run(_api_first_event(base, token, samples))
        local = asyncio.run(_inprocess_first_event(directory, samples))
        api_ms, api_spread = median_spread([s * 1000 for s in api])
        local_ms, _ = median_spread([s * 1000 for s in local])
        rows.append(
            make_row(
                GROUP,
                "api submit -> first event",
                api_ms,
                "ms",
                local_ms,
                "ms in process",
                spread=api_spread,
            )
        )
        queue_only = directory / "queue"
        queue_only.mkdir()
        config = _config(queue_only, latency_s=0.0)
        ratios, api_rates, local_rates = [], [], []
        with _server(config, workers=0) as (base, token):
            for _ in range(1 if quick else 3):
                api_s = asyncio.run(_api_submissions(base, token, count))
                local_s = asyncio.run(_inprocess_submissions(directory, count))
                ratios.append(api_s / local_s)
                api_rates.append(count / api_s)
                local_rates.append(count / local_s)
        ratio, spread = median_spread(ratios)
        rows.append(
            make_row(
                GROUP,
                f"api submissions ({count})",
                statistics.median(api_rates),
                "runs/s",
                statistics.median(local_rates),
                "runs/s in process",
                ratio=ratio,
                target="<= 1.5x time",
                holds=ratio <= 1.5,
                spread=spread,
            )
        )
        slow = directory / "slow"
        slow.mkdir()
        config = _config(slow, latency_s=0.05)
        with _server(config, workers=2) as (base, token):
            one = asyncio.run(_fan_out(base, token, 1, steps))
            many = asyncio.run(_fan_out(base, token, 100, steps))
        one_ms = statistics.median(one) * 1000
        many_ms = statistics.median(many) * 1000
        rows.append(
            make_row(
                GROUP,
                "sse fan-out 100 (median delay)",
                many_ms,
                "ms",
                one_ms,
                "ms with 1 client",
                spread=None,
            )
        )
        rows.append(
            make_row(
                GROUP,
                "sse fan-out 100 (p99 delay)",
                _pct(many, 0.99) * 1000,
                "ms",
                _pct(one, 0.99) * 1000,
                "ms with 1 client",
                spread=None,
            )
        )
        idle_dir = directory / "idle"
        idle_dir.mkdir()
        config = _config(idle_dir, latency_s=0.0)
        _cli(config, "queue", "--define", "idle")
        with _server(config, workers=1) as (base, token):
            busy, quiet = asyncio.run(_idle_streams(base, token, 1000, 400, 3 if quick else 7))
        busy_ms, busy_spread = median_spread([d * 1000 for d in busy])
        quiet_ms, _ = median_spread([d * 1000 for d in quiet])
        rows.append(
            make_row(
                GROUP,
                "chain of 400 with 1,000 idle streams",
                busy_ms,
                "ms",
                quiet_ms,
                "ms with none",
                target="<= 1.1x",
                holds=busy_ms <= 1.1 * quiet_ms,
                spread=busy_spread,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_api.json``."""
    return _timing.main("bench_api", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
