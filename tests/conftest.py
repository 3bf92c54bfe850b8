"""Test-wide settings: hypothesis profiles, the order tests are handed to xdist's
workers in, and the PostgreSQL server fixture.

``default`` for everyday runs, ``fast`` for quick local loops
(``HYPOTHESIS_PROFILE=fast``), ``ci`` for CI (chosen when ``CI`` is set).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pg_cluster
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fast",
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
)


# --- the suite in several processes (pytest-xdist) ----------------------------------

WORKERS = 3
"""Worker processes for a run of the suite or of a directory (``-n auto`` in addopts).

Most of the suite's wall time is spent waiting (worker subprocesses, leases running
out, SIGKILL loops, servers starting), not computing: three processes on two cores
keep both busy without making the waits themselves longer."""


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many processes ``-n auto`` starts: ``PYTEST_XDIST_AUTO_NUM_WORKERS`` if set;
    none (one process, the tests' own) when every argument names a test file or a test,
    as in a focused loop on one module; ``WORKERS`` for the suite or a directory."""
    given = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if given:
        return int(given)
    named = [config.invocation_params.dir / arg.split("::")[0] for arg in config.args]
    if named and all(path.is_file() for path in named):
        return 0
    return WORKERS


# --- the order of tests across xdist's worker processes ---------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In xdist's worker processes, the slow stress tests go first.

    The suite runs in several processes (``-n auto --maxschedchunk 1`` in pyproject's
    addopts): xdist hands the tests out in this order, one at a time, to whichever process
    is free. A long test collected last would start when the others are done and the run
    would wait for it alone; started first, the long tests run beside each other and the
    many short ones fill the gaps. (With xdist's default chunks the first process got
    every slow test: 690 s against 485 s for the other two.) Every worker sorts the same
    way (xdist requires the same order in all of them); a run in one process keeps the
    collection order.
    """
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# --- a real PostgreSQL server for the PostgreSQL adapter's tests ----------------------

REQUIRE_POSTGRES = "TASKLOOM_REQUIRE_POSTGRES"
"""Set (by .ci/run) to make a missing PostgreSQL server fail the tests instead of skip."""


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN of a PostgreSQL server to test against.

    ``TASKLOOM_TEST_POSTGRES_DSN`` if set; otherwise a throwaway cluster started
    here (``tests/pg_cluster.py``) when PostgreSQL's binaries exist; otherwise the
    test is skipped, or fails when ``TASKLOOM_REQUIRE_POSTGRES`` is set. A cluster
    started here is exported in ``TASKLOOM_TEST_POSTGRES_DSN`` while it runs, so that
    child processes of the tests (crash tests, workers) reach it too.
    """
    given = os.environ.get("TASKLOOM_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    if not pg_cluster.available():
        message = (
            "no PostgreSQL server: set TASKLOOM_TEST_POSTGRES_DSN or install PostgreSQL's "
            "server (Debian: apt-get install postgresql)"
        )
        if os.environ.get(REQUIRE_POSTGRES):
            pytest.fail(message)
        pytest.skip(message)
    directory = Path(tempfile.mkdtemp(prefix="taskloom-pg-"))
    try:
        dsn = pg_cluster.start(directory)
        os.environ["TASKLOOM_TEST_POSTGRES_DSN"] = dsn
        yield dsn
    finally:
        os.environ.pop("TASKLOOM_TEST_POSTGRES_DSN", None)
        pg_cluster.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)
