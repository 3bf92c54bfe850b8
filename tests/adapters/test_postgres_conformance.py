"""PostgresStorage passes the StorageAdapter conformance suite on a real server, durable
across reopening; each location is a PostgreSQL schema of its own."""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from taskloom.adapters.postgres import PostgresStorage
from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing import StorageConformance


def schema_for(location: Path) -> str:
    """A schema name of its own for each test location."""
    return "tl_test_" + hashlib.sha256(str(location).encode()).hexdigest()[:20]


class TestPostgresStorage(StorageConformance):
    """A PostgresStorage per location, in the default configuration."""

    durable = True
    max_examples = 25
    stateful_step_count = 30

    @pytest.fixture(autouse=True)
    def _server(self, postgres_dsn: str) -> None:
        """Every test of the suite talks to the session's PostgreSQL server."""

    @property
    def dsn(self) -> str:
        """The server's DSN, as the session fixture exported it (the crash tests' child
        process builds this class without any fixture and finds it the same way)."""
        return os.environ.get("TASKLOOM_TEST_POSTGRES_DSN", "")

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return PostgresStorage(self.dsn, schema=schema_for(location), min_size=1, max_size=4)


class TestPostgresStoragePgBouncer(TestPostgresStorage):
    """The suite again without server-side prepared statements (pgbouncer=True), smaller."""

    max_examples = 8
    stateful_step_count = 15

    def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
        return PostgresStorage(
            self.dsn, schema=schema_for(location), min_size=0, max_size=2, pgbouncer=True
        )
