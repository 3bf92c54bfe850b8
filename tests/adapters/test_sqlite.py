"""SQLiteStorage: behaviour, group commit, schema checks, foreign files, errors, retention."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import sqlite3
import stat
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.adapters.sqlite._args import check_key, choose_victims, prefix_end
from taskloom.adapters.sqlite._errors import CLASS_MAP, map_sqlite_errors, translate
from taskloom.adapters.sqlite._schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    open_writer_connection,
)
from taskloom.contracts import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Append,
    Check,
    ConflictError,
    Delete,
    InvalidKey,
    Put,
    StorageAdapter,
    StorageCorrupted,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageReadOnly,
    StorageUnavailable,
    TaskloomError,
    UsageError,
    ValueTooLarge,
    check_name,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def storage(tmp_path: Path) -> SQLiteStorage:
    store = await SQLiteStorage.open(tmp_path / "t.db", purge_interval_s=None)
    yield store  # type: ignore[misc]
    await store.aclose()


# --- behaviour ----------------------------------------------------------------


async def test_is_a_storage_adapter(storage: SQLiteStorage) -> None:
    """SQLiteStorage satisfies the StorageAdapter protocol and says it is durable."""
    assert isinstance(storage, StorageAdapter)
    assert storage.durable is True


async def test_put_get_versions_and_delete(storage: SQLiteStorage) -> None:
    """Versions start at 1, grow by one per put, and restart at 1 after a delete."""
    assert (await storage.put("ns", "k", b"a")).version == 1
    second = await storage.put("ns", "k", b"b")
    assert second.version == 2
    assert await storage.get("ns", "k") == second
    assert await storage.delete("ns", "k") is True
    assert await storage.delete("ns", "k") is False
    assert await storage.get("ns", "k") is None
    assert (await storage.put("ns", "k", b"c")).version == 1


async def test_if_version_conflict_changes_nothing(storage: SQLiteStorage) -> None:
    """A put or delete with the wrong if_version raises ConflictError and writes nothing."""
    await storage.put("ns", "k", b"a")
    with pytest.raises(ConflictError) as caught:
        await storage.put("ns", "k", b"b", if_version=0)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    with pytest.raises(ConflictError):
        await storage.delete("ns", "k", if_version=2)
    record = await storage.get("ns", "k")
    assert record is not None and (record.value, record.version) == (b"a", 1)
    assert (await storage.put("ns", "k", b"c", if_version=1)).version == 2
    assert await storage.delete("ns", "k", if_version=2) is True


async def test_ttl_hides_restarts_and_purges(tmp_path: Path) -> None:
    """An expired record is invisible, counts as missing for CAS, restarts at v1, is purged."""
    clock = FakeClock()
    async with SQLiteStorage(tmp_path / "ttl.db", clock=clock, purge_interval_s=None) as store:
        record = await store.put("ns", "k", b"v", ttl=10)
        assert record.expires_at == clock.now + 10
        await store.put("ns", "other", b"v")
        clock.now += 10
        assert await store.get("ns", "k") is None
        assert [r.key for r in await store.scan("ns")] == ["other"]
        assert await store.delete("ns", "k") is False
        await store.put("ns", "k2", b"v", ttl=5)
        clock.now += 6
        assert (await store.put("ns", "k2", b"w", if_version=0)).version == 1
        await store.put("ns", "k3", b"v", ttl=1)
        clock.now += 2
        assert await store.purge_expired() == 1
        assert await store.purge_expired() == 0


async def test_background_purge_deletes_expired_rows(tmp_path: Path) -> None:
    """The background task deletes expired rows from the file without being asked."""
    db = tmp_path / "purge.db"
    async with SQLiteStorage(db, purge_interval_s=0.01) as store:
        await store.put("ns", "gone", b"v", ttl=0.001)
        await store.put("ns", "kept", b"v")
        for _ in range(2000):
            with sqlite3.connect(db) as conn:
                (rows,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
            if rows == 1:
                break
            await asyncio.sleep(0.01)
        assert rows == 1


async def test_scan_prefix_paging_and_order(storage: SQLiteStorage) -> None:
    """Scan returns keys in code point order under a prefix; paging visits each once."""
    keys = [
        "a",
        "ab",
        "abc",
        "ab\U0010ffff",
        "ab\U0010ffffz",
        "abd",
        "b",
        "é",
        "\U0001f600",
        "a\x7f",
    ]
    for key in keys:
        await storage.put("ns", key, key.encode())
    await storage.put("other", "ab", b"x")
    assert [r.key for r in await storage.scan("ns")] == sorted(keys)
    assert [r.key for r in await storage.scan("ns", prefix="ab")] == sorted(
        k for k in keys if k.startswith("ab")
    )
    seen: list[str] = []
    after = None
    while page := await storage.scan("ns", start_after=after, limit=3):
        seen.extend(r.key for r in page)
        after = page[-1].key
    assert seen == sorted(keys)
    assert await storage.scan("ns", limit=0) == []


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=4))
def test_prefix_end_bounds_exactly_the_prefixed_keys(prefix: str) -> None:
    """prefix <= key < prefix_end(prefix) holds exactly for the keys starting with prefix."""
    end = prefix_end(prefix)
    probes = [prefix, prefix + "\x01", prefix + "\U0010ffff", prefix + "\U0010ffff\U0010ffff"]
    if prefix:
        probes += [prefix[:-1], prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))]
    for key in probes:
        inside = key >= prefix and (end is None or key < end)
        assert inside == key.startswith(prefix), (prefix, key, end)


async def test_streams_gapless_and_isolated(storage: SQLiteStorage) -> None:
    """Appends number from 1 per stream; read honours after and limit."""
    entries = await asyncio.gather(*(storage.append("s1", bytes([i])) for i in range(50)))
    assert sorted(e.seq for e in entries) == list(range(1, 51))
    assert (await storage.append("s2", b"x")).seq == 1
    assert [e.seq for e in await storage.read("s1", after=47)] == [48, 49, 50]
    assert [e.seq for e in await storage.read("s1", after=10, limit=2)] == [11, 12]
    assert await storage.get("s1", "1") is None


async def test_commit_all_or_nothing(storage: SQLiteStorage) -> None:
    """A commit with a failing check applies nothing; a good one applies all in order."""
    await storage.put("ns", "x", b"1")
    bad = [
        Put(namespace="ns", key="y", value=b"v"),
        Append(stream="s", payload=b"p"),
        Delete(namespace="ns", key="x"),
        Check(namespace="ns", key="x", version=7),
    ]
    with pytest.raises(ConflictError):
        await storage.commit(bad)
    assert await storage.get("ns", "y") is None
    assert await storage.read("s") == []
    assert await storage.get("ns", "x") is not None
    result = await storage.commit(
        [
            Check(namespace="ns", key="x", version=1),
            Put(namespace="ns", key="y", value=b"v", ttl=60),
            Put(namespace="ns", key="y", value=b"w"),
            Append(stream="s", payload=b"p"),
            Delete(namespace="ns", key="x"),
            Delete(namespace="ns", key="missing"),
        ]
    )
    assert [r.version for r in result.records] == [1, 2]
    assert [e.seq for e in result.entries] == [1]
    assert result.deleted == (True, False)
    assert (await storage.commit([])).records == ()


async def test_failed_member_does_not_fail_its_batch(storage: SQLiteStorage) -> None:
    """In one group-committed batch, a conflicting put or commit fails alone."""
    await storage.put("ns", "taken", b"v")
    results = await asyncio.gather(
        *(storage.put("ns", f"k{i}", b"v") for i in range(20)),
        storage.put("ns", "taken", b"w", if_version=0),
        storage.commit(
            [
                Put(namespace="ns", key="c", value=b"v"),
                Check(namespace="ns", key="taken", version=9),
            ]
        ),
        storage.append("s", b"p"),
        return_exceptions=True,
    )
    assert all(not isinstance(r, BaseException) for r in results[:20])
    assert isinstance(results[20], ConflictError)
    assert isinstance(results[21], ConflictError)
    assert not isinstance(results[22], BaseException)
    assert len(await storage.scan("ns")) == 21
    assert await storage.get("ns", "c") is None


async def test_concurrent_puts_to_one_key_number_every_version(storage: SQLiteStorage) -> None:
    """200 concurrent puts of one key get the versions 1..200, each exactly once."""
    records = await asyncio.gather(*(storage.put("ns", "k", str(i).encode()) for i in range(200)))
    assert sorted(r.version for r in records) == list(range(1, 201))
    last = max(records, key=lambda r: r.version)
    assert await storage.get("ns", "k") == last


async def test_invalid_input_is_refused_before_writing(storage: SQLiteStorage) -> None:
    """Bad names, big values and bad arguments raise typed errors and store nothing."""
    with pytest.raises(InvalidKey):
        await storage.put("ns", "", b"v")
    with pytest.raises(InvalidKey):
        await storage.put("n\x00s", "k", b"v")
    with pytest.raises(ValueTooLarge):
        await storage.put("ns", "k", b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(ValueTooLarge):
        await storage.commit(
            [
                Put(namespace="ns", key="ok", value=b"v"),
                Append(stream="s", payload=b"x" * (MAX_VALUE_BYTES + 1)),
            ]
        )
    with pytest.raises(UsageError):
        await storage.put("ns", "k", "text")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        await storage.scan("ns", limit=-1)
    with pytest.raises(UsageError):
        await storage.commit(["nope"])  # type: ignore[list-item]
    assert await storage.scan("ns") == []
    assert await storage.get("ns", "ok") is None


async def test_large_value_round_trips(storage: SQLiteStorage) -> None:
    """A value of exactly MAX_VALUE_BYTES is stored and read back whole."""
    value = os.urandom(1024) * (MAX_VALUE_BYTES // 1024)
    await storage.put("ns", "big", value)
    record = await storage.get("ns", "big")
    assert record is not None and record.value == value


# --- lifecycle ------------------------------------------------------------------


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    """A new adapter on the same file sees records, versions, TTLs and streams (ST11)."""
    db = tmp_path / "re.db"
    async with SQLiteStorage(db) as store:
        await store.put("ns", "k", b"v")
        await store.put("ns", "k", b"w", ttl=3600)
        await store.append("s", b"p")
    async with SQLiteStorage(str(db)) as store:
        record = await store.get("ns", "k")
        assert record is not None and record.version == 2 and record.expires_at is not None
        assert (await store.append("s", b"q")).seq == 2


async def test_use_after_close_is_usage_error(tmp_path: Path) -> None:
    """After aclose every method raises UsageError and aclose may be called again (ST12)."""
    store = await SQLiteStorage.open(tmp_path / "c.db")
    await store.aclose()
    await store.aclose()
    calls = [
        store.get("ns", "k"),
        store.put("ns", "k", b"v"),
        store.delete("ns", "k"),
        store.scan("ns"),
        store.append("s", b"p"),
        store.read("s"),
        store.commit([]),
        store.purge_expired(),
        store.prune("ns", keep_last=1),
        store.vacuum(),
    ]
    for call in calls:
        with pytest.raises(UsageError):
            await call
    async with SQLiteStorage(tmp_path / "c.db") as store2:
        pass
    with pytest.raises(UsageError):
        await store2.get("ns", "k")


async def test_first_call_opens_lazily(tmp_path: Path) -> None:
    """A method called on an adapter not yet opened opens it, once, even when racing."""
    store = SQLiteStorage(tmp_path / "lazy.db", purge_interval_s=None)
    try:
        results = await asyncio.gather(*(store.put("ns", f"k{i}", b"v") for i in range(10)))
        assert len(results) == 10
        assert len(await store.scan("ns")) == 10
    finally:
        await store.aclose()


async def test_never_closed_warns(tmp_path: Path) -> None:
    """An adapter dropped while open emits a ResourceWarning."""
    store = await SQLiteStorage.open(tmp_path / "w.db", purge_interval_s=None)
    await store.put("ns", "k", b"v")
    assert store._readers is not None
    threads = [reader._thread for reader in store._readers.connections]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del store
        gc.collect()
        # Let the readers' own threads finish while this loop still runs.
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
    assert any(
        issubclass(w.category, ResourceWarning) and "SQLiteStorage" in str(w.message)
        for w in caught
    )


def test_constructor_checks_arguments(tmp_path: Path) -> None:
    """Bad constructor arguments raise UsageError at once."""
    for kwargs in (
        {"synchronous": "OFF"},
        {"busy_timeout_s": 0},
        {"purge_interval_s": -1},
        {"readers": 0},
    ):
        with pytest.raises(UsageError):
            SQLiteStorage(tmp_path / "x.db", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        SQLiteStorage(":memory:")


# --- the file: schema, pragmas, foreign and corrupt files -----------------------


async def test_new_database_settings(tmp_path: Path) -> None:
    """A new file is WAL, auto_vacuum INCREMENTAL, carries taskloom's id and schema version."""
    db = tmp_path / "new" / "sub" / "n.db"
    async with SQLiteStorage(db, synchronous="FULL"):
        pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("SELECT MAX(version) FROM taskloom_schema").fetchone()[0] == (
            SCHEMA_VERSION
        )


async def test_old_schema_is_migrated_forward(tmp_path: Path) -> None:
    """A database at schema 1 is migrated to the current schema on open, data intact."""
    db = str(tmp_path / "old.db")
    conn = open_writer_connection(db, synchronous="NORMAL", busy_timeout_s=5, target_version=1)
    conn.execute(
        "INSERT INTO records VALUES ('ns', 'k', x'76', 3, 1.0, NULL)",
    )
    conn.close()
    async with SQLiteStorage(db) as store:
        record = await store.get("ns", "k")
        assert record is not None and (record.value, record.version) == (b"v", 3)
    with sqlite3.connect(db) as check:
        versions = [row[0] for row in check.execute("SELECT version FROM taskloom_schema")]
        indexes = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert "records_expiry" in indexes


async def test_newer_schema_asks_to_upgrade(tmp_path: Path) -> None:
    """A database written by a newer taskloom is refused with a message to upgrade."""
    db = tmp_path / "newer.db"
    async with SQLiteStorage(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO taskloom_schema VALUES (?, 0)", (SCHEMA_VERSION + 5,))
    before = db.read_bytes()
    with pytest.raises(StorageCorrupted) as caught:
        await SQLiteStorage.open(db)
    assert "upgrade taskloom" in str(caught.value)
    assert caught.value.path == str(db)
    assert db.read_bytes() == before


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(4096)), id="random-bytes"),
        pytest.param(lambda p: p.write_bytes(b"hello, world\n"), id="text"),
        pytest.param(_foreign_sqlite, id="other-app-sqlite"),
        pytest.param(
            lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(8192)),
            id="sqlite-header-garbage",
        ),
    ],
)
async def test_foreign_or_corrupt_file_is_refused_untouched(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    """Random bytes or another app's database: StorageCorrupted naming the path, bytes unchanged."""
    db = tmp_path / "foreign.db"
    make(db)
    before = db.read_bytes()
    with pytest.raises(StorageCorrupted) as caught:
        await SQLiteStorage.open(db)
    assert caught.value.path == str(db)
    assert str(db) in str(caught.value)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db"]


async def test_directory_at_location_is_refused(tmp_path: Path) -> None:
    """A directory where the database should be gives StorageCorrupted naming it."""
    with pytest.raises(StorageCorrupted) as caught:
        await SQLiteStorage.open(tmp_path)
    assert caught.value.path == str(tmp_path)


async def test_an_empty_file_is_refused_as_corrupted(tmp_path: Path) -> None:
    """A zero-byte file is no taskloom database (ours are created whole): StorageCorrupted."""
    db = tmp_path / "empty.db"
    db.touch()
    with pytest.raises(StorageCorrupted) as caught:
        await SQLiteStorage.open(db)
    assert caught.value.path == str(db)
    assert "empty" in str(caught.value)
    assert db.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


async def test_a_new_database_is_created_whole_and_private(tmp_path: Path) -> None:
    """A new database and its directory are private to the user; no temp file is left."""
    db = tmp_path / "new" / "store.db"
    async with SQLiteStorage(db, purge_interval_s=None) as store:
        await store.put("ns", "k", b"v")
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in db.parent.iterdir() if not p.name.startswith("store.db-")) == [
        "store.db"
    ]


async def test_two_openers_of_a_new_path_share_one_database(tmp_path: Path) -> None:
    """Opening a new path twice at once creates one database both use."""
    db = tmp_path / "race.db"
    first, second = await asyncio.gather(SQLiteStorage.open(db), SQLiteStorage.open(db))
    try:
        await first.put("ns", "k", b"one")
        assert (await second.get("ns", "k")).value == b"one"  # type: ignore[union-attr]
    finally:
        await first.aclose()
        await second.aclose()


async def test_tables_dropped_behind_our_back_is_corrupted(tmp_path: Path) -> None:
    """If someone drops our tables, reads and writes raise StorageCorrupted, not sqlite3 errors."""
    db = tmp_path / "d.db"
    async with SQLiteStorage(db, purge_interval_s=None) as store:
        await store.put("ns", "k", b"v")
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE records")
        with pytest.raises(StorageCorrupted):
            await store.get("ns", "k")
        with pytest.raises(StorageCorrupted):
            await store.put("ns", "k", b"w")


# --- the error boundary ---------------------------------------------------------


def _sqlite_exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(sqlite3).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]


def test_mapping_covers_every_sqlite3_exception_class() -> None:
    """Every exception class sqlite3 defines is mapped to a taskloom StorageError."""
    classes = _sqlite_exception_classes()
    assert len(classes) >= 10
    for cls in classes:
        assert any(issubclass(cls, known) for known in CLASS_MAP), cls
        error = translate(cls("boom"), "/db")
        assert isinstance(error, StorageError), (cls, error)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (sqlite3.SQLITE_BUSY, StorageUnavailable),
        (sqlite3.SQLITE_LOCKED, StorageUnavailable),
        (sqlite3.SQLITE_FULL, StorageFull),
        (sqlite3.SQLITE_IOERR, StorageUnavailable),
        (sqlite3.SQLITE_READONLY, StorageReadOnly),
        (sqlite3.SQLITE_PERM, StoragePermissionDenied),
        (sqlite3.SQLITE_AUTH, StoragePermissionDenied),
        (sqlite3.SQLITE_CANTOPEN, StorageUnavailable),
        (sqlite3.SQLITE_CORRUPT, StorageCorrupted),
        (sqlite3.SQLITE_NOTADB, StorageCorrupted),
        (sqlite3.SQLITE_TOOBIG, ValueTooLarge),
    ],
)
def test_result_codes_map_to_typed_errors(code: int, expected: type[TaskloomError]) -> None:
    """SQLite's result code decides the error type, whatever the exception class."""
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    error = translate(exc, "/db", busy_timeout_s=1)
    assert type(error) is expected
    assert "/db" in str(error)


def test_a_real_read_only_database_is_storage_read_only(tmp_path: Path) -> None:
    """A write refused by SQLite itself (a database opened read-only) is StorageReadOnly,
    a StorageUnavailable, naming the file."""
    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            readonly.execute("INSERT INTO t VALUES (1)")
    finally:
        readonly.close()
    error = translate(caught.value, str(path))
    assert type(error) is StorageReadOnly and isinstance(error, StorageUnavailable)
    assert str(path) in str(error) and "read-only" in str(error)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (errno.EROFS, StorageReadOnly),
        (errno.EACCES, StoragePermissionDenied),
        (errno.EPERM, StoragePermissionDenied),
        (errno.ENOENT, StorageUnavailable),
    ],
)
def test_os_errors_map_to_their_kind(number: int, expected: type[TaskloomError]) -> None:
    """An OSError around the database (a read-only mount, a file of another user) is
    the specific StorageUnavailable kind, naming the path."""
    error = translate(OSError(number, os.strerror(number), "/db"), "/db")
    assert type(error) is expected and "/db" in str(error)


def test_boundary_chains_the_cause() -> None:
    """map_sqlite_errors raises the taskloom error from the backend exception."""
    original = sqlite3.DatabaseError("file is not a database")
    with pytest.raises(StorageCorrupted) as caught, map_sqlite_errors("/db"):
        raise original
    assert caught.value.__cause__ is original


# --- retention ------------------------------------------------------------------


async def test_prune_keep_last_and_older_than(tmp_path: Path) -> None:
    """prune deletes old records under a prefix, keeps the newest N and other prefixes."""
    clock = FakeClock()
    async with SQLiteStorage(tmp_path / "p.db", clock=clock, purge_interval_s=None) as store:
        for i in range(10):
            await store.put("runs", f"r{i:02}", b"v")
            clock.now += 10
        await store.put("runs", "x", b"v")
        with pytest.raises(UsageError):
            await store.prune("runs")
        assert await store.prune("runs", prefix="r", keep_last=8) == 2
        assert await store.prune("runs", prefix="r", older_than=45) == 4
        assert [r.key for r in await store.scan("runs")] == ["r06", "r07", "r08", "r09", "x"]
        assert await store.prune("runs", prefix="r", older_than=0, keep_last=1) == 3


def test_choose_victims_spares_rows_seen_fresh() -> None:
    """Victims are older than the cutoff and outside the newest keep_last, both at once."""
    rows = [("a", 1, 1.0), ("b", 1, 2.0), ("c", 1, 3.0), ("d", 1, 4.0)]
    assert [r[0] for r in choose_victims(rows, 10.0, 7.5, None)] == ["a", "b"]
    assert [r[0] for r in choose_victims(rows, 10.0, None, 3)] == ["a"]
    assert [r[0] for r in choose_victims(rows, 10.0, 8.5, 0)] == ["a"]


async def test_vacuum_returns_pages_to_the_file_system(tmp_path: Path) -> None:
    """After deleting much data, vacuum(pages=N) frees at most N pages and the file shrinks."""
    db = tmp_path / "v.db"
    async with SQLiteStorage(db, purge_interval_s=None) as store:
        await store.commit(
            [Put(namespace="ns", key=f"k{i}", value=os.urandom(4000)) for i in range(200)]
        )
        await store.commit([Delete(namespace="ns", key=f"k{i}") for i in range(200)])
        freed = await store.vacuum(pages=10)
        assert freed == 10
        assert await store.vacuum() > 100
        assert await store.vacuum() == 0
        with pytest.raises(UsageError):
            await store.vacuum(pages=0)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert db.stat().st_size < 200 * 4000


async def test_batched_puts_keep_submission_order(tmp_path: Path) -> None:
    """Plain and CAS puts queued together apply in call order; expiry restarts at v1."""
    clock = FakeClock()
    async with SQLiteStorage(tmp_path / "o.db", clock=clock, purge_interval_s=None) as store:
        await store.put("ns", "k", b"0", ttl=1)
        clock.now += 2
        results = await asyncio.gather(
            store.put("ns", "k", b"1"),
            store.put("ns", "k", b"2", if_version=1),
            store.put("ns", "other", b"x"),
            store.put("ns", "k", b"3"),
            store.put("ns", "k", b"4"),
            store.delete("ns", "other"),
            store.put("ns", "other", b"y"),
        )
        assert [r.version for r in results if not isinstance(r, bool)] == [1, 2, 1, 3, 4, 1]
        record = await store.get("ns", "k")
        assert record is not None and (record.value, record.version) == (b"4", 4)


@given(st.one_of(st.text(max_size=8), st.text(alphabet="ab\x00", max_size=3), st.none()))
def test_check_key_agrees_with_check_name(name: object) -> None:
    """The hot-path key check accepts and refuses exactly what the contract's check_name does."""
    try:
        check_name(name)
    except TaskloomError as expected:
        with pytest.raises(type(expected)):
            check_key(name)
    else:
        check_key(name)


def test_check_key_length_limit() -> None:
    """ASCII keys at the byte limit pass; one byte more is InvalidKey, as in check_name."""
    check_key("k" * MAX_KEY_BYTES)
    with pytest.raises(InvalidKey):
        check_key("k" * (MAX_KEY_BYTES + 1))
