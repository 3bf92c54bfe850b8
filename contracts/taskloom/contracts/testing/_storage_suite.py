"""``StorageConformance``: the test suite every ``StorageAdapter`` must pass.

Subclass it in a test module and supply the factory::

    class TestMyStorage(StorageConformance):
        durable = True

        @asynccontextmanager
        async def open_storage(self, location):
            store = await MyStorage.open(location)
            try:
                yield store
            finally:
                await store.aclose()

``open_storage`` returns an async context manager, not a coroutine; an adapter
that is its own context manager may be returned as it is
(``return MyStorage(location)``).

Then ``pytest`` runs every check. Each test is named after the invariant of
``StorageAdapter``'s docstring it checks (``test_st6_...`` checks ST6). The tests
are plain synchronous pytest tests that run their own event loop, so the suite
needs no pytest-asyncio configuration in the adapter's project.

The state machine drives the adapter and ``StorageModel`` (a few dicts and
lists) side by side and compares everything after every step. The clock belongs
to the adapter, so the model adopts the timestamps the adapter reports and
checks everything else; TTLs in the machine are an hour (nothing expires while it
runs) and expiry itself is checked by example tests with short real TTLs.

The example tests live in one module per group of invariants
(``_storage_records_suite`` ST1-ST5, ``_storage_scan_suite`` ST6-ST7,
``_storage_batch_suite`` ST8-ST9, ``_storage_input_suite`` ST10,
``_storage_lifetime_suite`` ST11-ST12, ``_storage_crash_suite`` ST11 across a
SIGKILL); the knobs and the hook are in
``_storage_base`` and the machine in ``_storage_machine``. This module combines
them into the one class an adapter author subclasses.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis.stateful import run_state_machine_as_test

from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing._naming import current_test, naming_invariant
from taskloom.contracts.testing._storage_batch_suite import StreamAndCommitTests
from taskloom.contracts.testing._storage_crash_suite import CrashTests
from taskloom.contracts.testing._storage_input_suite import InputTests
from taskloom.contracts.testing._storage_lifetime_suite import LifetimeTests
from taskloom.contracts.testing._storage_machine import _StorageMachine
from taskloom.contracts.testing._storage_model import StorageModel
from taskloom.contracts.testing._storage_records_suite import RecordTests
from taskloom.contracts.testing._storage_scan_suite import ScanTests

__all__ = ["StorageConformance", "StorageModel"]


class StorageConformance(
    RecordTests, ScanTests, StreamAndCommitTests, InputTests, LifetimeTests, CrashTests
):
    """Subclass, implement ``open_storage``, and pytest checks every invariant ST1-ST12.

    ``durable``: True if a second ``open_storage`` on the same location sees what
    the first wrote, also after the writing process was killed (ST11); False
    skips the durability tests. ``crash_factory`` (``"module:function"``) tells
    the killed child process how to open the adapter when this class cannot be
    imported and built without arguments there (see ``_storage_crash_suite``).
    ``max_examples`` and ``stateful_step_count`` size the state machine: lower
    them for slow adapters (the whole suite should stay well under a minute).
    """

    # the model-based state machine ---------------------------------------------------

    def test_st1_st2_st3_st4_st6_st7_st8_st9_st10_st11_against_model(self, tmp_path: Path) -> None:
        """Random sequences of every operation give the same results as the plain model."""
        counter = itertools.count()

        def locations() -> Path:
            return tmp_path / f"machine-{next(counter)}"

        machine = type(
            "StorageMachine",
            (_StorageMachine,),
            {"suite": self, "locations": staticmethod(locations)},
        )
        with naming_invariant(StorageAdapter, current_test()):
            run_state_machine_as_test(machine, settings=self.hypothesis_settings())
