"""Test-wide settings: hypothesis profiles, and the PostgreSQL server fixture.

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
