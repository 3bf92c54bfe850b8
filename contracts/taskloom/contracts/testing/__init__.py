"""Conformance suites for taskloom's protocols, and hypothesis strategies for its data.

Needs the ``testing`` extra (pytest and hypothesis are imported only here).
An adapter author subclasses one suite and supplies a factory::

    from contextlib import asynccontextmanager
    from taskloom.contracts.testing import StorageConformance

    class TestMyStorage(StorageConformance):
        durable = True

        @asynccontextmanager
        async def open_storage(self, location):
            store = await MyStorage.open(location)
            try:
                yield store
            finally:
                await store.aclose()

``open_storage`` returns an async context manager (an adapter that is its own
context manager may simply be returned: ``return MyStorage(location)``).

Every test is named after the numbered invariant it checks (``test_st6_...``).
Strategies for every contract data type are in
``taskloom.contracts.testing.strategies``.
"""

from __future__ import annotations

import pkgutil

import pytest

# Before the suites are imported: pytest rewrites their asserts, so that a failure
# shows the values compared instead of a bare AssertionError. (Each submodule is
# named: this package itself is already being imported and cannot be rewritten.)
pytest.register_assert_rewrite(*(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)))

from taskloom.contracts.testing import strategies as strategies  # noqa: E402
from taskloom.contracts.testing._executor_suite import ExecutorConformance  # noqa: E402
from taskloom.contracts.testing._secrets_suite import SecretStoreConformance  # noqa: E402
from taskloom.contracts.testing._storage_suite import (  # noqa: E402
    StorageConformance,
    StorageModel,
)

__all__ = [
    "ExecutorConformance",
    "SecretStoreConformance",
    "StorageConformance",
    "StorageModel",
]
