"""Storage adapters beside raw sqlite3, measured in the same run on the same machine.

``python -m benchmarks.bench_storage [--quick]`` prints a table and writes
``benchmarks/results/bench_storage.json``; ``run(quick)`` returns the rows.

Operations, for SQLiteStorage, MemoryStorage and FileStorage:

- ``sequential get``   one awaited get at a time; baseline: one aiosqlite round trip
  (``execute_fetchall`` of the same SELECT). The target for SQLite, "a get costs no
  more than one aiosqlite round trip", is checked by counting: the row ``round
  trips per get`` counts the calls queued to aiosqlite's worker threads. The
  timed ratio shows what checking the arguments and building the Record add.
- ``sequential put``   one awaited put at a time; baseline: raw sqlite3, one upsert
  and COMMIT per row.
- ``100 concurrent writers``  100 tasks each doing puts; baseline: raw sqlite3
  ``executemany`` of the same upserts in one transaction. Target for SQLite: >= 40%.
- ``scan 1,000``       one scan returning 1,000 records; baseline: the same SELECT
  with raw sqlite3.
- ``sequential append`` one awaited append at a time; baseline: raw sqlite3, one
  INSERT and COMMIT per entry.
- ``scaling``          get and put rates with 10^3, 10^4 (and, in full mode, 10^5)
  records stored, beside raw sqlite3 gets and upserts at the same size; and the peak of
  Python memory (tracemalloc) while loading and using them, beside the bytes of
  keys and values loaded. SQLite's own page cache is C memory that tracemalloc
  does not see; it is bounded by SQLite's cache_size. FileStorage's scaling rows
  (fsync per commit, slow to load) run in full mode only, up to 10^4.

Every raw baseline uses the same pragmas as SQLiteStorage (WAL, synchronous=NORMAL)
and the same table layout. After a warm-up, each figure and its baseline are
measured in turns, several times; ``value`` and ``baseline`` are the medians,
``ratio`` the median of the per-turn ratios (so a burst of load on a shared
machine does not land on one side only), ``spread`` (max - min) / median of the
values. ``transactions per put`` shows group commit at work: 0.01 means 100
puts shared each transaction.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from benchmarks import _timing
from benchmarks._timing import make_row, median_spread
from taskloom.adapters.filesystem import FileStorage
from taskloom.adapters.memory import MemoryStorage
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import Put, StorageAdapter

VALUE = b"v" * 200
WRITERS = 100

_SCHEMA = """CREATE TABLE IF NOT EXISTS records (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    version INTEGER NOT NULL, updated_at REAL NOT NULL, expires_at REAL,
    PRIMARY KEY (namespace, key));
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL,
    appended_at REAL NOT NULL, PRIMARY KEY (stream, seq));"""
_UPSERT = """INSERT INTO records (namespace, key, value, version, updated_at, expires_at)
VALUES (?, ?, ?, 1, ?, NULL) ON CONFLICT (namespace, key) DO UPDATE SET
value = excluded.value, version = records.version + 1, updated_at = excluded.updated_at,
expires_at = excluded.expires_at"""
_GET = (
    "SELECT value, version, updated_at, expires_at FROM records WHERE namespace = ? "
    "AND key = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_SCAN = (
    "SELECT key, value, version, updated_at, expires_at FROM records WHERE namespace = ? "
    "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT ?"
)
_APPEND = """INSERT INTO streams (stream, seq, payload, appended_at)
SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3 FROM streams WHERE stream = ?1"""

Factory = Callable[[Path], Awaitable[StorageAdapter]]


# --- adapters ----------------------------------------------------------------------


async def _sqlite(directory: Path) -> StorageAdapter:
    return await SQLiteStorage.open(directory / "taskloom.db", purge_interval_s=None)


async def _memory(directory: Path) -> StorageAdapter:
    return MemoryStorage()


async def _filesystem(directory: Path) -> StorageAdapter:
    store: StorageAdapter = await FileStorage.open(directory / "fs")
    return store


FACTORIES: dict[str, Factory] = {"sqlite": _sqlite, "memory": _memory, "filesystem": _filesystem}
"""Every adapter the rows measure (all ship in this distribution)."""


# --- measuring ---------------------------------------------------------------------


async def _rate(batch: Callable[[], Awaitable[int]], budget: float, repeats: int) -> list[float]:
    """Operations per second of ``batch`` (which returns how many it did), per repeat."""
    await batch()  # warm-up
    rates = []
    for _ in range(repeats):
        done = 0
        start = time.perf_counter()
        while True:
            done += await batch()
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
        rates.append(done / elapsed)
    return rates


def _row(
    name: str,
    samples: list[float],
    baseline: list[float],
    ratios: list[float],
    *,
    baseline_unit: str,
    unit: str = "ops/s",
    target: str = "-",
    floor: float | None = None,
    group: str = "storage",
) -> dict[str, Any]:
    """One figure: medians of value and baseline, the median of the paired ratios."""
    value, spread = median_spread(samples)
    base, _ = median_spread(baseline)
    ratio = statistics.median(ratios) if ratios else 0.0
    return make_row(
        group,
        name,
        value,
        unit,
        base,
        baseline_unit,
        ratio=ratio,
        target=target,
        holds=None if floor is None else ratio >= floor,
        spread=spread,
        digits=2,
        ratio_digits=3,
    )


# --- raw sqlite3 baselines -----------------------------------------------------------


def _raw_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_SCHEMA)
    return conn


def _raw_load(conn: sqlite3.Connection, namespace: str, count: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_UPSERT, ((namespace, f"k{i:07}", VALUE, time.time()) for i in range(count)))
    conn.execute("COMMIT")


Batch = Callable[[], Awaitable[int]]


class Raw:
    """raw sqlite3 (and one aiosqlite connection) on a database of the same layout."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "raw.db"
        self.conn = _raw_connect(self.path)
        _raw_load(self.conn, "get", 1000)
        _raw_load(self.conn, "scan", 1000)
        self.aconn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.aconn = await aiosqlite.connect(self.path, isolation_level=None)
        await self.aconn.execute("PRAGMA synchronous = NORMAL")

    async def get_round_trip(self) -> int:
        assert self.aconn is not None
        now = time.time()
        for i in range(200):
            await self.aconn.execute_fetchall(_GET, ("get", f"k{i:07}", now))
        return 200

    def batches(self, per_writer: int) -> dict[str, Batch]:
        conn = self.conn
        counter = iter(range(10**12))
        rows = [(f"w{w}-{i}", VALUE) for i in range(per_writer) for w in range(WRITERS)]

        async def put() -> int:
            for _ in range(200):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_UPSERT, ("seq", f"k{next(counter) % 1000}", VALUE, time.time()))
                conn.execute("COMMIT")
            return 200

        async def concurrent() -> int:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_UPSERT, [("conc", key, value, now) for key, value in rows])
            conn.execute("COMMIT")
            return len(rows)

        async def scan() -> int:
            for _ in range(5):
                assert len(conn.execute(_SCAN, ("scan", time.time(), 1000)).fetchall()) == 1000
            return 5

        async def append() -> int:
            for _ in range(200):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_APPEND, ("s", VALUE, time.time()))
                conn.execute("COMMIT")
            return 200

        return {
            "get": self.get_round_trip,
            "put": put,
            "concurrent": concurrent,
            "scan": scan,
            "append": append,
        }

    def at_size(self, count: int) -> tuple[Batch, Batch]:
        """Raw get and raw put (upsert + COMMIT) batches on ``count`` stored records."""
        namespace = f"scale{count}"
        _raw_load(self.conn, namespace, count)
        keys = [f"k{random.randrange(count):07}" for _ in range(100)]

        async def gets() -> int:
            now = time.time()
            for key in keys:
                self.conn.execute(_GET, (namespace, key, now)).fetchall()
            return 100

        async def puts() -> int:
            for key in keys:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(_UPSERT, (namespace, key, VALUE, time.time()))
                self.conn.execute("COMMIT")
            return 100

        return gets, puts

    async def close(self) -> None:
        if self.aconn is not None:
            await self.aconn.close()
        self.conn.close()


# --- adapter measurements --------------------------------------------------------------


async def _load(store: StorageAdapter, namespace: str, count: int) -> None:
    for start in range(0, count, 500):
        await store.commit(
            [
                Put(namespace=namespace, key=f"k{i:07}", value=VALUE)
                for i in range(start, min(count, start + 500))
            ]
        )


async def _adapter_batches(store: StorageAdapter, per_writer: int) -> dict[str, Batch]:
    await _load(store, "get", 1000)
    await _load(store, "scan", 1000)
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

    async def append() -> int:
        for _ in range(100):
            await store.append("s", VALUE)
        return 100

    return {"get": get, "put": put, "concurrent": concurrent, "scan": scan, "append": append}


async def _paired(
    measured: Batch, baseline: Batch, budget: float, repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """Rates of ``measured`` and ``baseline`` taken in turns, and the ratio of each pair.

    The machine may be shared: alternating the two and taking the median of the
    per-pair ratios keeps a burst of outside load from landing on one side only.
    """
    await measured()
    await baseline()
    values: list[float] = []
    bases: list[float] = []
    for _ in range(repeats):
        bases += await _rate(baseline, budget, 1)
        values += await _rate(measured, budget, 1)
    return values, bases, [v / b for v, b in zip(values, bases, strict=True)]


class _HopCounter:
    """Counts aiosqlite round trips (calls queued to a connection's worker thread)."""

    def __init__(self, connections: list[aiosqlite.Connection]) -> None:
        self.count = 0
        self._restore: list[tuple[aiosqlite.Connection, Any]] = []
        for conn in connections:
            original = conn._execute

            async def counted(fn: Any, *args: Any, _orig: Any = original, **kw: Any) -> Any:
                self.count += 1
                return await _orig(fn, *args, **kw)

            self._restore.append((conn, original))
            conn._execute = counted  # type: ignore[method-assign]

    def close(self) -> None:
        for conn, original in self._restore:
            conn._execute = original  # type: ignore[method-assign]


async def _sqlite_structure_rows(directory: Path, per_writer: int) -> list[dict[str, Any]]:
    """Round trips per get and write transactions per concurrent put: counted, not timed."""
    store = await SQLiteStorage.open(directory / "count.db", purge_interval_s=None)
    try:
        await _load(store, "get", 200)
        assert store._readers is not None
        counter = _HopCounter(store._readers.connections)
        try:
            for i in range(200):
                await store.get("get", f"k{i:07}")
        finally:
            counter.close()
        trips = counter.count / 200

        async def writer(w: int) -> None:
            for i in range(per_writer):
                await store.put("conc", f"w{w}-{i}", VALUE)

        before = store.write_transactions
        await asyncio.gather(*(writer(w) for w in range(WRITERS)))
        per_put = (store.write_transactions - before) / (WRITERS * per_writer)
    finally:
        await store.aclose()
    return [
        _row(
            "sqlite round trips per get",
            [trips],
            [1.0],
            [trips],
            unit="trips",
            baseline_unit="trips, one aiosqlite call",
            target="<= 1.0 (counted)",
        )
        | {"holds": trips <= 1.0},
        _row(
            f"sqlite transactions per put, {WRITERS} writers",
            [per_put],
            [1.0],
            [per_put],
            unit="txn/put",
            baseline_unit="txn/put without group commit",
        ),
    ]


async def _bench(quick: bool, directory: Path) -> list[dict[str, Any]]:
    budget = 0.08 if quick else 0.4
    repeats = 3 if quick else 7
    per_writer = 20 if quick else 50
    raw = Raw(directory)
    await raw.open()
    try:
        base = raw.batches(per_writer)
        rows: list[dict[str, Any]] = []
        for name, factory in FACTORIES.items():
            folder = directory / name
            folder.mkdir()
            store = await factory(folder)
            try:
                # FileStorage fsyncs every commit: fewer puts per round keep the
                # quick run under a minute (rates are per operation either way).
                ops = await _adapter_batches(
                    store, max(2, per_writer // 10) if name == "filesystem" else per_writer
                )
                # The headline row gets more pairs: it is the one with a target.
                found = {
                    op: await _paired(
                        ops[op], base[op], budget, repeats * 2 if op == "concurrent" else repeats
                    )
                    for op in ops
                }
            finally:
                await store.aclose()
            is_sqlite = name == "sqlite"
            rows += [
                _row(
                    f"{name} sequential get",
                    *found["get"],
                    baseline_unit="ops/s, one aiosqlite round trip",
                    target="~1x (one round trip)" if is_sqlite else "-",
                ),
                _row(
                    f"{name} sequential put",
                    *found["put"],
                    baseline_unit="ops/s, raw upsert+COMMIT",
                ),
                _row(
                    f"{name} {WRITERS} concurrent writers",
                    *found["concurrent"],
                    baseline_unit="ops/s, raw executemany",
                    target=">= 0.40x" if is_sqlite else "-",
                    floor=0.40 if is_sqlite else None,
                ),
                _row(
                    f"{name} scan 1,000 records",
                    *found["scan"],
                    unit="scans/s",
                    baseline_unit="scans/s, raw SELECT",
                ),
                _row(
                    f"{name} sequential append",
                    *found["append"],
                    baseline_unit="ops/s, raw INSERT+COMMIT",
                ),
            ]
            if is_sqlite:
                rows += await _sqlite_structure_rows(folder, per_writer)
        rows += await _scaling_rows(quick, directory, raw, FACTORIES, budget, repeats)
        return rows
    finally:
        await raw.close()


async def _scaling_rows(
    quick: bool,
    directory: Path,
    raw: Raw,
    factories: dict[str, Factory],
    budget: float,
    repeats: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    counts = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    for count in counts:
        raw_get, raw_put = raw.at_size(count)
        for name, factory in factories.items():
            if name == "filesystem" and (quick or count > 10_000):
                continue
            folder = directory / f"{name}-{count}"
            folder.mkdir()
            store = await factory(folder)
            try:
                await _load(store, "scale", count)
                keys = [f"k{random.randrange(count):07}" for _ in range(100)]

                async def gets(store: StorageAdapter = store, keys: list[str] = keys) -> int:
                    for key in keys:
                        await store.get("scale", key)
                    return 100

                async def puts(store: StorageAdapter = store, keys: list[str] = keys) -> int:
                    for key in keys:
                        await store.put("scale", key, VALUE)
                    return 100

                get_found = await _paired(gets, raw_get, budget / 2, repeats)
                put_found = await _paired(puts, raw_put, budget / 2, repeats)
            finally:
                await store.aclose()
            memory_folder = directory / f"{name}-{count}-mem"
            memory_folder.mkdir()
            peak = await _peak_memory(factory, memory_folder, count)
            payload = count * (len(VALUE) + 8) / 2**20
            rows += [
                _row(
                    f"{name} get @ {count:,} records",
                    *get_found,
                    baseline_unit="ops/s, raw sqlite3 get",
                    group="storage scaling",
                ),
                _row(
                    f"{name} put @ {count:,} records",
                    *put_found,
                    baseline_unit="ops/s, raw upsert+COMMIT",
                    group="storage scaling",
                ),
                _row(
                    f"{name} peak Python memory @ {count:,}",
                    [peak],
                    [payload],
                    [peak / payload],
                    unit="MiB",
                    baseline_unit="MiB of keys+values",
                    group="storage scaling",
                ),
            ]
    return rows


async def _peak_memory(factory: Factory, directory: Path, count: int) -> float:
    """Peak MiB of Python memory while loading ``count`` records and reading them back."""
    tracemalloc.start()
    try:
        store = await factory(directory)
        await _load(store, "mem", count)
        for i in range(0, count, max(1, count // 200)):
            await store.get("mem", f"k{i:07}")
        await store.scan("mem", limit=1000)
        _, peak = tracemalloc.get_traced_memory()
        await store.aclose()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure; each row carries its baseline from this same run."""
    with tempfile.TemporaryDirectory(prefix="taskloom-bench-storage-") as directory:
        return asyncio.run(_bench(quick, Path(directory)))


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_storage.json``."""
    return _timing.main("bench_storage", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
