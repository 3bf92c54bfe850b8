"""The conformance suites can fail: each deliberately broken adapter is caught, by a
test named after the invariant it breaks, while the working adapters pass."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from pathlib import Path

import pytest
from broken_adapters import (
    BROKEN_DURABLE_STORAGE,
    BROKEN_EXECUTORS,
    BROKEN_SECRETS,
    BROKEN_STORAGE,
    WrappedSecrets,
    WrappedStorage,
    codes_of,
    executor_suite,
    file_storage_suite,
    run_tests,
    secrets_suite,
    storage_suite,
)

from taskloom.adapters.scripted import ScriptedExecutor


def _failures(outcomes: Mapping[str, BaseException | None]) -> dict[str, BaseException]:
    return {name: exc for name, exc in outcomes.items() if exc is not None}


def _assert_caught(outcomes: Mapping[str, BaseException | None], code: str, what: str) -> None:
    failed = _failures(outcomes)
    assert failed, f"every test passed against the broken adapter ({what})"
    naming = [name for name in failed if code in codes_of(name)]
    assert naming, f"{what} was caught only by {sorted(failed)}, none of which names {code.upper()}"
    examples = [name for name in naming if not name.endswith("_against_model")]
    assert examples, f"only the state machine caught {what}; no {code} example test did"
    for name, exc in failed.items():
        text = str(exc)
        assert "violated in" in text.splitlines()[0], f"{name} failed without a headline: {text!r}"
        assert "the last calls to the adapter" in text, f"{name} names no operation: {text!r}"
    for name in naming:
        text = str(failed[name])
        assert text.startswith(code.upper()) or f" {code.upper()}" in text.splitlines()[0], (
            f"the failure of {name} against {what} does not name {code.upper()}: {text[:300]!r}"
        )


@pytest.mark.parametrize("name", sorted(BROKEN_STORAGE))
def test_storage_suite_catches(name: str, tmp_path: Path) -> None:
    """StorageConformance fails on each broken storage adapter, in a test naming its invariant."""
    wrapper, code = BROKEN_STORAGE[name]
    _assert_caught(run_tests(storage_suite(wrapper), tmp_path, machines=False), code, name)


@pytest.mark.parametrize("name", sorted(BROKEN_DURABLE_STORAGE))
def test_storage_suite_catches_lost_writes_in_a_killed_process(name: str, tmp_path: Path) -> None:
    """Only the SIGKILL tests catch a file store that writes late, and they name ST11."""
    cls, factory, code = BROKEN_DURABLE_STORAGE[name]
    outcomes = run_tests(file_storage_suite(cls, factory), tmp_path, machines=False)
    failed = _failures(outcomes)
    assert failed and all("sigkill" in n for n in failed), {
        n: repr(e)[:200] for n, e in failed.items()
    }
    _assert_caught(outcomes, code, name)
    assert any("ST11" in str(e) for e in failed.values()), failed


@pytest.mark.parametrize("name", sorted(BROKEN_SECRETS))
def test_secrets_suite_catches(name: str, tmp_path: Path) -> None:
    """SecretStoreConformance fails on each broken store, in a test naming its invariant."""
    wrapper, code = BROKEN_SECRETS[name]
    _assert_caught(run_tests(secrets_suite(wrapper), tmp_path, machines=False), code, name)


@pytest.mark.parametrize("name", sorted(BROKEN_EXECUTORS))
def test_executor_suite_catches(name: str, tmp_path: Path) -> None:
    """ExecutorConformance fails on each broken executor, in a test naming its invariant."""
    cls, code = BROKEN_EXECUTORS[name]
    _assert_caught(run_tests(executor_suite(cls), tmp_path), code, name)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("scan out of order", "st6"),
        ("missed CAS check", "st3"),
        ("partly applied commit", "st9"),
        ("namespace leak", "st7"),
        ("stream with a gap", "st8"),
        ("lost write after reopen", "st11"),
        ("deletes applied last", "st9"),
        ("checks see the state before the batch", "st9"),
    ],
)
def test_storage_state_machine_catches(name: str, code: str, tmp_path: Path) -> None:
    """The model-based state machine on its own also finds these bugs."""
    wrapper, _ = BROKEN_STORAGE[name]
    suite = storage_suite(wrapper)
    machine = next(n for n in dir(suite) if n.endswith("_against_model"))
    assert code in codes_of(machine)
    with pytest.raises(AssertionError):
        getattr(suite, machine)(tmp_path)


def test_the_suites_asserts_are_rewritten_by_pytest() -> None:
    """The suites' modules are assert-rewritten, so a bare ``assert a == b`` shows a and b."""
    import taskloom.contracts.testing as testing

    for info in pkgutil.iter_modules(testing.__path__):
        module = importlib.import_module(f"{testing.__name__}.{info.name}")
        if "assert " in inspect.getsource(module):
            assert "@py_builtins" in vars(module), f"{module.__name__} is not assert-rewritten"


def test_a_failure_shows_the_values_compared(tmp_path: Path) -> None:
    """A failing example test reports the invariant, the test and both values compared."""
    wrapper, _ = BROKEN_STORAGE["scan out of order"]
    suite = storage_suite(wrapper)
    with pytest.raises(AssertionError) as caught:
        suite.test_st6_start_after_and_limit(tmp_path)
    text = str(caught.value)
    first = text.splitlines()[0]
    assert first.startswith("ST6 (") and "test_st6_start_after_and_limit" in first, first
    assert "['e', 'd', 'c']" in text and "['c', 'd', 'e']" in text, text
    assert "scan('ns', start_after='b')" in text, text


def test_every_invariant_has_broken_adapters() -> None:
    """Each invariant of the three protocols is broken by at least one kept adapter."""
    from taskloom.contracts import LLMExecutor, SecretStore, StorageAdapter
    from taskloom.contracts.testing._naming import statements

    wanted = {
        code.lower()
        for protocol in (StorageAdapter, SecretStore, LLMExecutor)
        for code in statements(protocol)
    }
    broken = [code for _, code in BROKEN_STORAGE.values()]
    broken += [code for _, code in BROKEN_SECRETS.values()]
    broken += [code for _, code in BROKEN_EXECUTORS.values()]
    broken += [code for _, _, code in BROKEN_DURABLE_STORAGE.values()]
    assert len(wanted) == 27, sorted(wanted)
    assert not wanted - set(broken), f"no broken adapter for {sorted(wanted - set(broken))}"
    assert len(broken) >= 98, len(broken)


def test_the_harness_passes_working_adapters(tmp_path: Path) -> None:
    """The same harness, wrappers and factories with no bug pass every suite test."""
    outcomes = {
        **run_tests(storage_suite(WrappedStorage), tmp_path / "storage"),
        **run_tests(secrets_suite(WrappedSecrets), tmp_path / "secrets"),
        **run_tests(executor_suite(ScriptedExecutor), tmp_path / "executor"),
    }
    assert len(outcomes) > 60
    assert not _failures(outcomes), {n: repr(e)[:300] for n, e in _failures(outcomes).items()}
