"""PostgresStorage beyond the conformance suite: errors typed and free of the password,
schemas created once and refused when newer or foreign, group commit, retries of
concurrent writers, lost connections, PgBouncer mode."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pg_cluster
import psycopg
import psycopg.errors
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskloom.adapters.postgres import SCHEMA_VERSION, PostgresStorage
from taskloom.adapters.postgres._dsn import Dsn
from taskloom.adapters.postgres._errors import translate
from taskloom.contracts import (
    Append,
    Check,
    ConflictError,
    Delete,
    Put,
    Secret,
    StorageCorrupted,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    StorageReadOnly,
    StorageUnavailable,
    StreamDropping,
    TaskloomError,
    UsageError,
)


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return "tl_t_" + uuid.uuid4().hex[:16]


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_params(dsn: str, **params: object) -> str:
    """``dsn`` with some connection parameters replaced."""
    return make_conninfo(dsn, **params)


def chain_text(error: BaseException) -> str:
    """Every message in an error's chain of causes and contexts."""
    texts = []
    seen: BaseException | None = error
    while seen is not None:
        texts.append(f"{type(seen).__name__}: {seen} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


async def admin(dsn: str, *statements: str) -> None:
    """Run statements as the test server's superuser."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
async def storage(postgres_dsn: str) -> AsyncIterator[PostgresStorage]:
    """An open store in a schema of its own."""
    async with PostgresStorage(postgres_dsn, schema=fresh_schema(), max_size=4) as opened:
        yield opened


# --- the password never shows -------------------------------------------------------


async def test_refused_connection_is_unavailable_and_hides_the_password(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listening: StorageUnavailable saying to retry; no password in error or logs."""
    password = str(conninfo_to_dict(postgres_dsn)["password"])
    dsn = with_params(postgres_dsn, port=closed_port(), connect_timeout=2)
    caplog.set_level(logging.DEBUG)
    storage = PostgresStorage(dsn, schema=fresh_schema(), connect_timeout_s=2)
    with pytest.raises(StorageUnavailable, match="retry") as caught:
        await storage.put("ns", "k", b"v")
    await storage.aclose()
    assert password not in chain_text(caught.value)
    assert password not in caplog.text
    assert password not in repr(storage)


async def test_wrong_password_is_permission_denied_without_the_password(
    postgres_dsn: str,
) -> None:
    """A refused login is StoragePermissionDenied; neither password appears."""
    real = str(conninfo_to_dict(postgres_dsn)["password"])
    wrong = "wrong-" + uuid.uuid4().hex
    storage = PostgresStorage(with_params(postgres_dsn, password=wrong), schema=fresh_schema())
    with pytest.raises(StoragePermissionDenied, match="password") as caught:
        await storage.get("ns", "k")
    await storage.aclose()
    text = chain_text(caught.value)
    assert wrong not in text and real not in text


async def test_a_malformed_dsn_is_refused_without_quoting_it() -> None:
    """libpq's parse error quotes the string; ours says what to check, not the password."""
    with pytest.raises(UsageError, match="not a valid") as caught:
        PostgresStorage("host=db password=hunter2 broken")
    assert "hunter2" not in chain_text(caught.value)


async def test_repr_and_where_never_show_the_password(postgres_dsn: str) -> None:
    """repr, where and the Dsn itself name user, host, port and database only."""
    password = str(conninfo_to_dict(postgres_dsn)["password"])
    storage = PostgresStorage(Secret(postgres_dsn), schema=fresh_schema())
    for text in (repr(storage), storage.where, repr(Dsn(postgres_dsn))):
        assert password not in text
        assert "127.0.0.1" in text
    await storage.aclose()


async def test_scrub_removes_percent_encoded_passwords() -> None:
    """A password with URL-special characters is removed in every spelling."""
    dsn = Dsn("postgresql://u:p%40ss%2Fw0rd@h/db")
    text = dsn.scrub("failed for p@ss/w0rd and p%40ss%2Fw0rd in postgresql://u:p%40ss%2Fw0rd@h/db")
    assert "p@ss/w0rd" not in text and "p%40ss%2Fw0rd" not in text


# --- error mapping ------------------------------------------------------------------


def test_every_psycopg_error_class_maps_to_a_taskloom_error() -> None:
    """Each SQLSTATE class psycopg knows becomes a TaskloomError, the key ones typed."""
    dsn = Dsn("postgresql://u:pw-never-shown@h/db")
    classes = {psycopg.Error, psycopg.OperationalError, psycopg.InterfaceError}
    classes |= {
        cls
        for cls in vars(psycopg.errors).values()
        if isinstance(cls, type) and issubclass(cls, psycopg.Error)
    }
    for cls in classes:
        error = translate(cls("pw-never-shown went wrong"), dsn)
        assert isinstance(error, TaskloomError), cls
        assert "pw-never-shown" not in str(error), cls
    assert isinstance(translate(psycopg.errors.DiskFull("no space"), dsn), StorageFull)
    assert isinstance(translate(psycopg.errors.ReadOnlySqlTransaction("ro"), dsn), StorageReadOnly)
    assert isinstance(
        translate(psycopg.errors.InsufficientPrivilege("no"), dsn), StoragePermissionDenied
    )
    assert isinstance(translate(psycopg.OperationalError("gone"), dsn), StorageUnavailable)
    assert isinstance(translate(psycopg.errors.UndefinedTable("x"), dsn), StorageCorrupted)
    assert type(translate(psycopg.errors.SyntaxError("x"), dsn)) is StorageError


async def test_read_only_server_is_storage_read_only(postgres_dsn: str) -> None:
    """A user whose transactions are read-only gets StorageReadOnly with a hint."""
    schema, role = fresh_schema(), "tl_ro_" + uuid.uuid4().hex[:8]
    async with PostgresStorage(postgres_dsn, schema=schema) as owner:
        await owner.put("ns", "k", b"v")
    await admin(
        postgres_dsn,
        f"CREATE ROLE {role} LOGIN PASSWORD 'ro-pw'",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"ALTER ROLE {role} SET default_transaction_read_only = on",
    )
    dsn = with_params(postgres_dsn, user=role, password="ro-pw")
    async with PostgresStorage(dsn, schema=schema) as reader:
        assert (await reader.get("ns", "k")) is not None
        with pytest.raises(StorageReadOnly, match="primary"):
            await reader.put("ns", "k", b"w")


async def test_missing_grant_is_permission_denied(postgres_dsn: str) -> None:
    """A user without INSERT gets StoragePermissionDenied; what was stored stays."""
    schema, role = fresh_schema(), "tl_np_" + uuid.uuid4().hex[:8]
    async with PostgresStorage(postgres_dsn, schema=schema) as owner:
        await owner.put("ns", "k", b"v")
    await admin(
        postgres_dsn,
        f"CREATE ROLE {role} LOGIN PASSWORD 'np-pw'",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
    )
    dsn = with_params(postgres_dsn, user=role, password="np-pw")
    async with PostgresStorage(dsn, schema=schema) as user:
        with pytest.raises(StoragePermissionDenied, match="grant"):
            await user.put("ns", "k", b"w")
        assert (await user.get("ns", "k")).value == b"v"  # type: ignore[union-attr]


# --- schema ---------------------------------------------------------------------------


async def test_a_newer_schema_is_refused_with_upgrade_taskloom(postgres_dsn: str) -> None:
    """A store written by a newer taskloom is refused, untouched."""
    schema = fresh_schema()
    async with PostgresStorage(postgres_dsn, schema=schema) as storage:
        await storage.put("ns", "k", b"v")
    await admin(
        postgres_dsn,
        f"INSERT INTO {schema}.taskloom_schema VALUES ({SCHEMA_VERSION + 5}, 0)",
    )
    with pytest.raises(StorageCorrupted, match="upgrade taskloom"):
        async with PostgresStorage(postgres_dsn, schema=schema):
            pass


async def test_a_foreign_schema_is_refused(postgres_dsn: str) -> None:
    """A schema of that name holding someone else's tables is refused, not written."""
    schema = fresh_schema()
    await admin(postgres_dsn, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.users (id int)")
    with pytest.raises(StorageCorrupted, match="another application"):
        async with PostgresStorage(postgres_dsn, schema=schema):
            pass


async def test_concurrent_first_opens_create_the_schema_once(postgres_dsn: str) -> None:
    """Eight adapters opening a new schema at once: one creation, each migration once."""
    schema = fresh_schema()
    stores = [PostgresStorage(postgres_dsn, schema=schema, min_size=0) for _ in range(8)]
    await asyncio.gather(*(s._ensure_open() for s in stores))
    await asyncio.gather(*(s.put("ns", f"k{i}", b"v") for i, s in enumerate(stores)))
    await asyncio.gather(*(s.aclose() for s in stores))
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        cur = await conn.execute(f"SELECT version FROM {schema}.taskloom_schema ORDER BY 1")
        assert [row[0] for row in await cur.fetchall()] == list(range(1, SCHEMA_VERSION + 1))


async def test_an_older_schema_is_migrated_forward(postgres_dsn: str) -> None:
    """A store at schema 0 (the table of versions only) is brought to SCHEMA_VERSION."""
    schema = fresh_schema()
    storage = PostgresStorage(postgres_dsn, schema=schema)
    await storage._open(target_version=0)
    await storage.aclose()
    async with PostgresStorage(postgres_dsn, schema=schema) as migrated:
        await migrated.put("ns", "k", b"v")
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        cur = await conn.execute(f"SELECT max(version) FROM {schema}.taskloom_schema")
        assert (await cur.fetchone()) == (SCHEMA_VERSION,)


# --- group commit and concurrency -----------------------------------------------------


async def test_concurrent_writes_share_transactions(storage: PostgresStorage) -> None:
    """A hundred concurrent puts are committed in far fewer transactions, each correct."""
    records = await asyncio.gather(*(storage.put("ns", f"k{i}", b"v") for i in range(100)))
    assert [r.version for r in records] == [1] * 100
    assert storage.write_transactions <= 10
    again = await asyncio.gather(*(storage.put("ns", "same", bytes([i])) for i in range(20)))
    assert sorted(r.version for r in again) == list(range(1, 21))
    assert (await storage.get("ns", "same")).version == 20  # type: ignore[union-attr]


async def test_one_conflict_in_a_batch_fails_only_its_member(storage: PostgresStorage) -> None:
    """A failed check inside a group commit leaves the other members' writes standing."""
    await storage.put("ns", "held", b"v")
    results = await asyncio.gather(
        storage.put("ns", "a", b"1"),
        storage.commit(
            [Check(namespace="ns", key="held", version=7), Put(namespace="ns", key="x", value=b"")]
        ),
        storage.put("ns", "b", b"2", if_version=0),
        return_exceptions=True,
    )
    assert isinstance(results[1], ConflictError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert await storage.get("ns", "x") is None
    assert [r.key for r in await storage.scan("ns")] == ["a", "b", "held"]


async def test_two_adapters_appending_to_one_stream_stay_gapless(postgres_dsn: str) -> None:
    """Two adapters (two hosts) appending at once: numbers 1..n, none lost or repeated."""
    schema = fresh_schema()
    async with (
        PostgresStorage(postgres_dsn, schema=schema) as one,
        PostgresStorage(postgres_dsn, schema=schema) as two,
    ):

        async def appends(s: PostgresStorage, tag: bytes) -> None:
            for i in range(40):
                await asyncio.gather(s.append("s", tag + bytes([i])), s.append("s", tag))

        await asyncio.gather(appends(one, b"1"), appends(two, b"2"))
        entries = await one.read("s")
    assert [e.seq for e in entries] == list(range(1, 161))


async def test_compare_and_set_from_two_adapters_never_loses_an_increment(
    postgres_dsn: str,
) -> None:
    """Counter increments by if_version from two adapters: each applied exactly once."""
    schema = fresh_schema()
    async with (
        PostgresStorage(postgres_dsn, schema=schema) as one,
        PostgresStorage(postgres_dsn, schema=schema) as two,
    ):
        await one.put("ns", "n", b"0")

        async def bump(s: PostgresStorage, times: int) -> None:
            done = 0
            while done < times:
                current = await s.get("ns", "n")
                assert current is not None
                try:
                    await s.put(
                        "ns", "n", str(int(current.value) + 1).encode(), if_version=current.version
                    )
                except ConflictError:
                    continue
                done += 1

        await asyncio.gather(bump(one, 30), bump(two, 30), bump(one, 30))
        final = await two.get("ns", "n")
    assert final is not None and final.value == b"90" and final.version == 91


async def test_a_serialization_failure_is_retried_inside(storage: PostgresStorage) -> None:
    """A transaction PostgreSQL aborts as a serialization failure is run again, not raised."""
    original = storage._writer._attempt  # type: ignore[union-attr]
    failures = [
        psycopg.errors.SerializationFailure("could not serialize"),
        psycopg.errors.DeadlockDetected("deadlock"),
    ]

    async def flaky(batch: list[object]) -> object:
        if failures:
            raise failures.pop(0)
        return await original(batch)  # type: ignore[arg-type]

    storage._writer._attempt = flaky  # type: ignore[union-attr, method-assign, assignment]
    record = await storage.put("ns", "k", b"v")
    assert record.version == 1 and storage.retried_transactions == 2


async def test_a_lost_connection_is_replaced(postgres_dsn: str) -> None:
    """Connections the server dropped (pg_terminate_backend) are replaced: calls still work."""
    name = "tl-lost-" + uuid.uuid4().hex[:8]
    async with PostgresStorage(
        postgres_dsn, schema=fresh_schema(), min_size=2, max_size=2, application_name=name
    ) as storage:
        await storage.put("ns", "k", b"v")
        await admin(
            postgres_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{name}'",
        )
        assert (await storage.get("ns", "k")) is not None
        assert (await storage.put("ns", "k", b"w")).version == 2


async def test_pgbouncer_mode_prepares_nothing_on_the_server(postgres_dsn: str) -> None:
    """pgbouncer=True: no server-side prepared statements; the default prepares hot ones."""
    for pgbouncer, expect_prepared in ((True, False), (False, True)):
        async with PostgresStorage(
            postgres_dsn, schema=fresh_schema(), min_size=1, max_size=1, pgbouncer=pgbouncer
        ) as storage:
            for _ in range(10):
                await storage.get("ns", "k")
            assert storage._pool is not None
            async with storage._pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
                row = await cur.fetchone()
            assert row is not None and (row[0] > 0) is expect_prepared


async def test_options_are_checked() -> None:
    """Bad pool sizes, timeouts and schema names are UsageErrors naming the option."""
    dsn = "host=h"
    for kwargs, name in (
        ({"max_size": 0}, "max_size"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"pool_timeout_s": 0}, "pool_timeout_s"),
        ({"connect_timeout_s": -1}, "connect_timeout_s"),
        ({"schema": "pg_catalog"}, "schema"),
        ({"retries": -1}, "retries"),
        ({"pgbouncer": "yes"}, "pgbouncer"),
    ):
        with pytest.raises(UsageError, match=name):
            PostgresStorage(dsn, **kwargs)  # type: ignore[arg-type]


async def test_must_not_exist_checks_hold_until_commit(postgres_dsn: str) -> None:
    """Write skew is impossible: two commits each requiring the key the other creates to be
    missing never both succeed (the check reserves the missing key until COMMIT)."""
    schema = fresh_schema()
    async with (
        PostgresStorage(postgres_dsn, schema=schema) as one,
        PostgresStorage(postgres_dsn, schema=schema) as two,
    ):
        for round_ in range(8):
            a, b = f"a{round_}", f"b{round_}"
            results = await asyncio.gather(
                one.commit(
                    [Check(namespace="ns", key=a, version=0), Put(namespace="ns", key=b, value=b"")]
                ),
                two.commit(
                    [Check(namespace="ns", key=b, version=0), Put(namespace="ns", key=a, value=b"")]
                ),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            assert failed and all(isinstance(r, ConflictError) for r in failed), results
        # The reservations left nothing behind: only the keys really written exist.
        keys = {r.key for r in await one.scan("ns")}
        assert all(r.version == 1 for r in await one.scan("ns"))
        assert len(keys) >= 8


async def test_one_statement_batches_skip_begin_and_commit(storage: PostgresStorage) -> None:
    """A lone put, or plain puts of distinct keys, commit as one autocommit statement; a
    commit of several operations still runs in a transaction."""
    writer = storage._writer
    assert writer is not None
    original = writer._attempt_one_statement
    fast: list[int] = []

    async def spy(batch: list[Any]) -> Any:
        fast.append(len(batch))
        return await original(batch)

    writer._attempt_one_statement = spy  # type: ignore[method-assign]
    await storage.put("ns", "a", b"1")
    await asyncio.gather(*(storage.put("ns", f"k{i}", b"v") for i in range(20)))
    assert fast == [1, 20]
    await storage.commit(
        [Put(namespace="ns", key="a", value=b"2"), Put(namespace="ns", key="b", value=b"")]
    )
    await asyncio.gather(storage.put("ns", "same", b"1"), storage.put("ns", "same", b"2"))
    assert fast == [1, 20]
    assert (await storage.get("ns", "same")).version == 2  # type: ignore[union-attr]


async def test_drop_stream_removes_it_and_restarts_numbering(storage: PostgresStorage) -> None:
    """SD1, SD2: a dropped stream reads empty, appends start at 1; others are untouched."""
    await storage.append("a", b"1")
    await storage.append("a", b"2")
    await storage.append("b", b"x")
    await storage.put("ns", "k", b"v")
    assert await storage.drop_stream("a") is True
    assert await storage.read("a") == []
    assert (await storage.append("a", b"again")).seq == 1
    assert [e.payload for e in await storage.read("b")] == [b"x"]
    assert await storage.get("ns", "k") is not None
    assert await storage.drop_stream("never") is False
    assert isinstance(storage, StreamDropping)


async def test_purge_and_prune_delete_what_they_should(storage: PostgresStorage) -> None:
    """purge_expired removes expired records only; prune keeps the newest and the young."""
    await storage.put("ns", "short", b"", ttl=0.05)
    await storage.put("ns", "long", b"", ttl=3600)
    await asyncio.sleep(0.1)
    assert await storage.purge_expired() == 1
    assert [r.key for r in await storage.scan("ns")] == ["long"]
    for i in range(5):
        await storage.put("old", f"k{i}", b"")
    assert await storage.prune("old", keep_last=2) == 3
    assert len(await storage.scan("old")) == 2
    assert await storage.prune("old", older_than=3600) == 0
    with pytest.raises(UsageError):
        await storage.prune("old")


async def test_an_unexpected_writer_error_fails_its_batch_only(storage: PostgresStorage) -> None:
    """A bug inside a batch fails that batch's writes; the writer keeps serving the next."""
    writer = storage._writer
    assert writer is not None
    original = writer._attempt
    calls = 0

    async def broken_once(batch: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return await original(batch)

    writer._attempt = broken_once  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="bug"):
        await storage.put("ns", "k", b"v")
    assert (await storage.put("ns", "k", b"v")).version == 1


async def test_batches_of_commits_go_in_one_pipeline(storage: PostgresStorage) -> None:
    """Commits with checks, appends and conditional puts of one batch are sent as one
    pipeline; a failed check inside it falls back to member-by-member outcomes."""
    writer = storage._writer
    assert writer is not None
    original = writer._attempt_pipelined
    sent: list[int] = []

    async def spy(batch: list[Any], plans: list[Any]) -> Any:
        sent.append(len(batch))
        return await original(batch, plans)

    writer._attempt_pipelined = spy  # type: ignore[method-assign]
    fence = await storage.put("fences", "run", b"1")
    results = await asyncio.gather(
        *(
            storage.commit(
                [
                    Check(namespace="fences", key="run", version=fence.version),
                    Put(namespace="steps", key=f"s{i}", value=b"x", if_version=0),
                    Append(stream="events", payload=str(i).encode()),
                ]
            )
            for i in range(10)
        )
    )
    assert sent == [10]
    assert sorted(r.entries[0].seq for r in results) == list(range(1, 11))
    assert all(r.records[0].version == 1 for r in results)
    assert [e.payload for e in await storage.read("events")] == [str(i).encode() for i in range(10)]
    mixed = await asyncio.gather(
        storage.commit(
            [Check(namespace="fences", key="run", version=9), Append(stream="x", payload=b"")]
        ),
        storage.commit([Put(namespace="steps", key="s0", value=b"y", if_version=1)]),
        storage.commit([Delete(namespace="steps", key="s1", if_version=1)]),
        return_exceptions=True,
    )
    assert sent == [10, 3]
    assert isinstance(mixed[0], ConflictError)
    assert not isinstance(mixed[1], BaseException) and mixed[1].records[0].version == 2
    assert not isinstance(mixed[2], BaseException) and mixed[2].deleted == (True,)
    assert await storage.read("x") == []


async def test_large_values_are_split_across_transactions(storage: PostgresStorage) -> None:
    """Concurrent writes of 3 MiB values are not all put into one transaction (about 16 MiB
    each at most), and every one is stored."""
    value = b"v" * (3 * 1024 * 1024)
    before = storage.write_transactions
    records = await asyncio.gather(*(storage.put("big", f"k{i}", value) for i in range(12)))
    assert all(r.version == 1 for r in records)
    assert storage.write_transactions - before >= 3
    for i in range(12):
        stored = await storage.get("big", f"k{i}")
        assert stored is not None and stored.value == value


async def test_a_stopped_server_is_unavailable_then_back() -> None:
    """A server that stops: StorageUnavailable saying to retry (no password); once it is
    back the same adapter works again, with what was written before."""
    if not pg_cluster.available():
        pytest.skip("PostgreSQL's server binaries are not installed")
    directory = Path(tempfile.mkdtemp(prefix="taskloom-pg-stop-"))  # the postgres user reaches it
    dsn = pg_cluster.start(directory)
    try:
        async with PostgresStorage(
            dsn, schema="tl_stop", pool_timeout_s=2, connect_timeout_s=2, max_size=2
        ) as storage:
            await storage.put("ns", "k", b"v")
            pg_cluster.stop(directory)
            for call in (lambda: storage.put("ns", "k", b"w"), lambda: storage.get("ns", "k")):
                with pytest.raises(StorageUnavailable, match="retry") as caught:
                    await call()
                assert pg_cluster.PASSWORD not in chain_text(caught.value)
            pg_cluster.restart(directory)
            for _ in range(50):
                try:
                    record = await storage.get("ns", "k")
                    break
                except StorageUnavailable:
                    await asyncio.sleep(0.2)
            assert record is not None and record.value == b"v"
            assert (await storage.put("ns", "k", b"w")).version == 2
    finally:
        pg_cluster.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


async def test_psycopg_log_records_are_scrubbed_while_open(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A psycopg or pool log line that quotes the password shows *** while a store is open."""
    password = str(conninfo_to_dict(postgres_dsn)["password"])
    caplog.set_level(logging.DEBUG)
    async with PostgresStorage(postgres_dsn, schema=fresh_schema()):
        logging.getLogger("psycopg.pool").warning("error connecting: %s", f"pw={password}")
        logging.getLogger("psycopg").warning(f"conninfo {postgres_dsn}")
    assert password not in caplog.text
    assert "pw=***" in caplog.text
