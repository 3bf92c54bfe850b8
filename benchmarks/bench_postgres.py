"""PostgresStorage beside raw psycopg on the same server, measured in the same run.

``python -m benchmarks.bench_postgres [--quick]`` prints a table and writes
``benchmarks/results/bench_postgres.json``; ``run(quick)`` returns the rows.

The server is ``TASKLOOM_TEST_POSTGRES_DSN`` when set (``.ci/run`` sets it), else a
throwaway cluster started for the run (``tests/pg_cluster.py``: initdb on a free
port on 127.0.0.1, fsync and synchronous_commit on), else the group reports that
no server is available and returns no rows.

- ``sequential get``   one awaited get at a time; baseline: one raw psycopg
  ``execute`` + ``fetchone`` of the same SELECT on one autocommit connection.
- ``sequential put``   one awaited put at a time; baseline: raw psycopg, the same
  upsert in autocommit (one transaction, one WAL flush per row).
- ``100 concurrent writers``  100 tasks each doing puts; baseline: raw psycopg
  ``executemany`` of the same upserts in one transaction. Target: >= 0.5x.
- ``scan 1,000``       one scan returning 1,000 records; baseline: the same SELECT.
- ``transactions per put``  of the concurrent writers: group commit at work.
- ``durable chain``    a chain of steps through the engine on PostgresStorage, per
  step, with ``durability="async"`` and ``"sync"`` (each step waits for its
  checkpoint); baselines: the same chain on SQLiteStorage in this run, and DBOS
  Transact's durable step (``@DBOS.step`` in a ``@DBOS.workflow``) on the same server
  when ``dbos`` is installed (the ``bench`` extra; peer rows).
- ``workers``          runs of two 50 ms steps submitted to the queue and taken by 1, 2
  and 4 workers (engines on one PostgreSQL, 4 runs at once each), the time until all
  succeeded beside the ideal (total latency / runs in parallel); ratio = time / ideal.

Values and baselines are taken in turns (see ``bench_storage._paired``); ``ratio``
is the median of the per-turn ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import _timing
from benchmarks._timing import make_row, median_spread
from benchmarks.bench_storage import VALUE, WRITERS, _paired, _row
from taskloom.adapters.postgres import PostgresStorage
from taskloom.contracts import Put

Batch = Callable[[], Awaitable[int]]
SCHEMA = "taskloom_bench"
RAW_SCHEMA = "taskloom_bench_raw"


@contextlib.contextmanager
def server() -> Iterator[str | None]:
    """The DSN of a PostgreSQL server for the run (see the module docstring), or None."""
    given = os.environ.get("TASKLOOM_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    path = Path(__file__).resolve().parents[1] / "tests" / "pg_cluster.py"
    spec = importlib.util.spec_from_file_location("taskloom_pg_cluster", path)
    if spec is None or spec.loader is None:
        yield None
        return
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    if not cluster.available():
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="taskloom-bench-pg-"))
    try:
        yield cluster.start(directory)
    finally:
        cluster.stop(directory)


class Raw:
    """The same table as PostgresStorage's, used with raw psycopg on one connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        t = f"{RAW_SCHEMA}.records"
        self.upsert = (
            f"INSERT INTO {t} AS r (namespace, key, value, version, updated_at, expires_at) "
            "VALUES (%s, %s, %s, 1, %s, NULL) ON CONFLICT (namespace, key) DO UPDATE SET "
            "value = excluded.value, version = r.version + 1, updated_at = excluded.updated_at "
            "RETURNING version"
        )
        self.get = (
            f"SELECT value, version, updated_at, expires_at FROM {t} WHERE namespace = %s "
            "AND key = %s AND (expires_at IS NULL OR expires_at > %s)"
        )
        self.scan = (
            f"SELECT key, value, version, updated_at, expires_at FROM {t} WHERE namespace = %s "
            "AND key > %s AND (expires_at IS NULL OR expires_at > %s) ORDER BY key LIMIT %s"
        )

    @classmethod
    async def open(cls, dsn: str) -> Raw:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute(f"DROP SCHEMA IF EXISTS {RAW_SCHEMA} CASCADE")  # type: ignore[arg-type]
        await conn.execute(f"CREATE SCHEMA {RAW_SCHEMA}")  # type: ignore[arg-type]
        await conn.execute(
            f"""CREATE TABLE {RAW_SCHEMA}.records (
                namespace text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
                value bytea NOT NULL, version bigint NOT NULL,
                updated_at double precision NOT NULL, expires_at double precision,
                PRIMARY KEY (namespace, key))"""  # type: ignore[arg-type]
        )
        raw = cls(conn)
        async with conn.transaction(), conn.cursor() as cur:
            for ns in ("get", "scan"):
                await cur.executemany(
                    raw.upsert, [(ns, f"k{i:07}", VALUE, 0.0) for i in range(1000)]
                )
        return raw

    def batches(self, per_writer: int) -> dict[str, Batch]:
        conn = self.conn
        counter = iter(range(10**12))

        async def get() -> int:
            for i in range(200):
                cur = await conn.execute(self.get, ("get", f"k{i:07}", 1.0))  # type: ignore[arg-type]
                await cur.fetchone()
            return 200

        async def put() -> int:
            for _ in range(100):
                cur = await conn.execute(  # type: ignore[arg-type]
                    self.upsert, ("seq", f"k{next(counter) % 1000}", VALUE, 1.0)
                )
                await cur.fetchone()
            return 100

        async def concurrent() -> int:
            rows = [
                ("conc", f"w{w}-{i}", VALUE, 1.0) for w in range(WRITERS) for i in range(per_writer)
            ]
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(self.upsert, rows)  # type: ignore[arg-type]
            return len(rows)

        async def scan() -> int:
            for _ in range(5):
                cur = await conn.execute(self.scan, ("scan", "", 1.0, 1000))  # type: ignore[arg-type]
                assert len(await cur.fetchall()) == 1000
            return 5

        return {"get": get, "put": put, "concurrent": concurrent, "scan": scan}


async def _storage_batches(store: PostgresStorage, per_writer: int) -> dict[str, Batch]:
    for ns in ("get", "scan"):
        await store.commit([Put(namespace=ns, key=f"k{i:07}", value=VALUE) for i in range(1000)])
    counter = iter(range(10**12))

    async def get() -> int:
        for i in range(200):
            await store.get("get", f"k{i:07}")
        return 200

    async def put() -> int:
        for _ in range(100):
            await store.put("seq", f"k{next(counter) % 1000}", VALUE)
        return 100

    async def writer(w: int) -> None:
        for i in range(per_writer):
            await store.put("conc", f"w{w}-{i}", VALUE)

    async def concurrent() -> int:
        await asyncio.gather(*(writer(w) for w in range(WRITERS)))
        return WRITERS * per_writer

    async def scan() -> int:
        for _ in range(5):
            assert len(await store.scan("scan", limit=1000)) == 1000
        return 5

    return {"get": get, "put": put, "concurrent": concurrent, "scan": scan}


async def _bench(quick: bool, dsn: str) -> list[dict[str, Any]]:
    budget = 0.15 if quick else 0.5
    repeats = 3 if quick else 7
    per_writer = 10 if quick else 30
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")  # type: ignore[arg-type]
    raw = await Raw.open(dsn)
    try:
        async with PostgresStorage(dsn, schema=SCHEMA, max_size=4, purge_interval_s=None) as store:
            mine = await _storage_batches(store, per_writer)
            base = raw.batches(per_writer)
            found = {op: await _paired(mine[op], base[op], budget, repeats) for op in mine}
            before_tx = store.write_transactions
            await mine["concurrent"]()
            per_put = (store.write_transactions - before_tx) / (WRITERS * per_writer)
    finally:
        await raw.conn.close()
    return [
        _row(
            "postgres sequential get",
            *found["get"],
            baseline_unit="ops/s, raw psycopg SELECT",
            group="postgres",
        ),
        _row(
            "postgres sequential put",
            *found["put"],
            baseline_unit="ops/s, raw upsert autocommit",
            group="postgres",
        ),
        _row(
            f"postgres {WRITERS} concurrent writers",
            *found["concurrent"],
            baseline_unit="ops/s, raw executemany in 1 tx",
            target=">= 0.50x",
            floor=0.5,
            group="postgres",
        ),
        _row(
            "postgres scan 1,000 records",
            *found["scan"],
            unit="scans/s",
            baseline_unit="scans/s, raw SELECT",
            group="postgres",
        ),
        make_row(
            "postgres",
            f"postgres transactions per put ({WRITERS} writers)",
            per_put,
            "tx/put",
            1.0,
            "tx/put without group commit",
            digits=4,
        ),
    ]


async def _chain_rows(quick: bool, dsn: str) -> list[dict[str, Any]]:
    """taskloom's durable chain per step on PostgreSQL beside SQLite (and DBOS, if there)."""
    from benchmarks.bench_durable import _chain, _run_engine
    from taskloom.adapters.sqlite import SQLiteStorage

    steps = 200 if quick else 1000
    repeats = 3 if quick else 5
    chain = _chain(steps)
    samples: dict[str, list[float]] = {"pg": [], "pg_sync": [], "sqlite": []}
    with tempfile.TemporaryDirectory(prefix="taskloom-bench-pg-chain-") as directory:
        for rep in range(repeats + 1):  # the first round warms up
            async with PostgresStorage(dsn, schema=f"{SCHEMA}_chain", purge_interval_s=None) as pg:
                pg_t = await _run_engine(pg, chain, {}, 0.0)
                sync_t = await _run_engine(pg, chain, {}, 0.0, durability="sync")
            async with SQLiteStorage(os.path.join(directory, f"c{rep}.db")) as lite:
                lite_t = await _run_engine(lite, chain, {}, 0.0)
            if rep:
                samples["pg"].append(pg_t / steps * 1e6)
                samples["pg_sync"].append(sync_t / steps * 1e6)
                samples["sqlite"].append(lite_t / steps * 1e6)
    pg_us, pg_spread = median_spread(samples["pg"])
    sync_us, sync_spread = median_spread(samples["pg_sync"])
    lite_us, _ = median_spread(samples["sqlite"])
    rows = [
        make_row(
            "postgres",
            f"postgres durable chain {steps} steps",
            pg_us,
            "us/step",
            lite_us,
            "us/step taskloom on SQLite",
            spread=pg_spread,
            digits=1,
            ratio_digits=2,
        ),
        make_row(
            "postgres",
            f'postgres durable chain {steps} steps, durability="sync"',
            sync_us,
            "us/step",
            lite_us,
            "us/step taskloom on SQLite (async)",
            spread=sync_spread,
            digits=1,
            ratio_digits=2,
        ),
    ]
    dbos_us = await _dbos_step_us(dsn, steps, repeats)
    if dbos_us is None:
        print(
            "bench_postgres: dbos is not installed; no DBOS peer rows (pip install taskloom[bench])"
        )
        return rows
    for name, value in (("", pg_us), (', durability="sync"', sync_us)):
        rows.append(
            make_row(
                "peer",
                f"postgres durable chain {steps} steps{name} vs DBOS",
                value,
                "us/step",
                dbos_us,
                "us/step DBOS Transact step, same server",
                digits=1,
                ratio_digits=2,
            )
        )
    return rows


async def _dbos_step_us(dsn: str, steps: int, repeats: int) -> float | None:
    """DBOS Transact's durable step on the same server, per step (median), or None."""
    try:
        from dbos import DBOS
    except ImportError:
        return None
    DBOS(
        config={
            "name": "taskloom-bench",
            "system_database_url": dsn,
            "dbos_system_schema": "taskloom_bench_dbos",
            "log_level": "WARNING",
            "console_log_level": "WARNING",
        }
    )

    @DBOS.step()
    async def step(i: int) -> str:
        return "ok"

    @DBOS.workflow()
    async def chain(n: int) -> int:
        for i in range(n):
            await step(i)
        return n

    DBOS.launch()
    try:
        samples = []
        for rep in range(repeats + 1):
            start = time.perf_counter()
            await chain(steps)
            if rep:
                samples.append((time.perf_counter() - start) / steps * 1e6)
    finally:
        DBOS.destroy()
    value, _ = median_spread(samples)
    return value


async def _worker_rows(quick: bool, dsn: str) -> list[dict[str, Any]]:
    """Latency-bound runs through the queue with 1, 2 and 4 workers, beside the ideal."""
    from benchmarks.bench_durable import _chain, _Executor
    from taskloom.sdk import Engine, ExecutorRegistry, Worker

    runs = 48 if quick else 192
    per_worker, latency, steps = 4, 0.05, 2
    rows = []
    for count in (1, 2, 4):
        schema = f"{SCHEMA}_w{count}"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # type: ignore[arg-type]
        engines = []
        for n in range(count):
            registry = ExecutorRegistry()
            registry.register("bench", _Executor(latency))
            engines.append(
                Engine(
                    storage=PostgresStorage(dsn, schema=schema, purge_interval_s=None),
                    registry=registry,
                    holder=f"bench-{count}-{n}",
                )
            )
        async with contextlib.AsyncExitStack() as stack:
            for engine in engines:
                await stack.enter_async_context(engine)
            for _ in range(runs):
                await engines[0].submit(_chain(steps), {})
            workers = [Worker(e, concurrency=per_worker, poll_s=0.05) for e in engines]
            start = time.perf_counter()
            for worker in workers:
                await stack.enter_async_context(worker)
            while sum(w.stats.succeeded for w in workers) < runs:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
        ideal = runs * steps * latency / (count * per_worker)
        rows.append(
            make_row(
                "postgres",
                f"postgres {count} worker(s), {runs} runs of {steps} x 50 ms",
                elapsed,
                "s",
                ideal,
                "s ideal",
                digits=3,
                ratio_digits=2,
            )
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure against a real server; no rows when none can be had."""
    with server() as dsn:
        if dsn is None:
            print("bench_postgres: no PostgreSQL server (set TASKLOOM_TEST_POSTGRES_DSN)")
            return []
        rows = asyncio.run(_bench(quick, dsn))
        rows += asyncio.run(_chain_rows(quick, dsn))
        rows += asyncio.run(_worker_rows(quick, dsn))
        return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_postgres.json``."""
    return _timing.main("bench_postgres", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
