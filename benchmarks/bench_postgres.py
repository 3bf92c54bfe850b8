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

Values and baselines are taken in turns (see ``bench_storage._paired``); ``ratio``
is the median of the per-turn ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import _timing
from benchmarks._timing import make_row
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


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure against a real server; no rows when none can be had."""
    with server() as dsn:
        if dsn is None:
            print("bench_postgres: no PostgreSQL server (set TASKLOOM_TEST_POSTGRES_DSN)")
            return []
        return asyncio.run(_bench(quick, dsn))


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_postgres.json``."""
    return _timing.main("bench_postgres", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
