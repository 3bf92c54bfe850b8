"""The SIGKILL durability hook (ST11) works the ways the README says, and fails with a
message that says what to do when it cannot."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from broken_adapters import file_storage_suite
from simple_storage import ChattyJsonFileStorage, JsonFileStorage

from taskloom.contracts import StorageAdapter
from taskloom.contracts.testing import StorageConformance

KILL_TESTS = (
    "test_st11_acknowledged_writes_survive_sigkill",
    "test_st11_sigkill_in_the_middle_of_writes_loses_nothing_acknowledged",
)


def _failure(suite: StorageConformance, test: str, tmp_path: Path) -> str:
    with pytest.raises((AssertionError, pytest.fail.Exception)) as caught:
        getattr(suite, test)(tmp_path)
    return str(caught.value)


@pytest.mark.parametrize("test", KILL_TESTS)
def test_st11_a_crash_factory_string_is_used(test: str, tmp_path: Path) -> None:
    """``crash_factory = "module:function"`` opens the adapter in the killed child."""
    suite = file_storage_suite(JsonFileStorage, "simple_storage:open_json_file")
    getattr(suite, test)(tmp_path)


def test_st11_an_adapter_printing_to_stdout_does_not_confuse_the_child(tmp_path: Path) -> None:
    """Output the adapter prints (even without a newline) is not taken for acknowledgements."""
    suite = file_storage_suite(ChattyJsonFileStorage, "simple_storage:open_chatty")
    suite.test_st11_acknowledged_writes_survive_sigkill(tmp_path)


def test_st11_a_local_test_class_without_a_factory_says_what_to_set(tmp_path: Path) -> None:
    """A test class the child cannot import fails naming ST11 and ``crash_factory``."""

    class Local(StorageConformance):
        durable = True

        def open_storage(self, location: Path) -> AbstractAsyncContextManager[StorageAdapter]:
            return JsonFileStorage(location)

    text = _failure(Local(), KILL_TESTS[0], tmp_path)
    assert "ST11" in text and "crash_factory" in text, text


@pytest.mark.parametrize("factory", ["simple_storage", "simple_storage:", ":open_json_file"])
def test_st11_a_malformed_crash_factory_is_refused(factory: str, tmp_path: Path) -> None:
    """A crash_factory that is not 'module:function' fails with the expected form."""
    suite = file_storage_suite(JsonFileStorage, factory)
    text = _failure(suite, KILL_TESTS[0], tmp_path)
    assert "module:function" in text and repr(factory) in text, text


@pytest.mark.parametrize(
    ("factory", "shown"),
    [
        ("no_such_module_xyz:open", "ModuleNotFoundError"),
        ("simple_storage:no_such_function", "AttributeError"),
        ("simple_storage:open_failing", "no database configured"),
    ],
)
def test_st11_a_child_that_cannot_open_shows_its_error(
    factory: str, shown: str, tmp_path: Path
) -> None:
    """When the child cannot open the adapter, the failure names ST11 and shows its error."""
    suite = file_storage_suite(JsonFileStorage, factory)
    text = _failure(suite, KILL_TESTS[0], tmp_path)
    assert "ST11" in text and shown in text and "exited with code" in text, text


def test_st11_a_line_cut_short_by_the_kill_is_not_an_acknowledgement() -> None:
    """Only whole acknowledgement lines count: the kill may cut the last one short."""
    from taskloom.contracts.testing._storage_crash_child import ACK
    from taskloom.contracts.testing._storage_crash_suite import _ack_of

    whole = ACK + '{"gone": ["ns", "k"]}\n'
    assert _ack_of(whole) == {"gone": ["ns", "k"]}
    assert _ack_of(whole[:-1]) is None
    assert _ack_of(ACK + '{"gone": ["ns", "k"\n') is None
    assert _ack_of("saved\n") is None
    assert _ack_of(ACK + "[1, 2]\n") is None
