"""Invariants and their tests stay in step: every numbered invariant in a protocol's
docstring has a test named after it, and no test names an invariant that does not exist.

A test checks invariant ST6 when its name starts ``test_st6_``; a test may name
several (``test_st1_st2_..._against_model``). Only the families that protocols
define (``st``, ``ss``, ``ex``, ``ev``, ``pl``) count as invariant codes, so a
name like ``test_sha256_...`` is not mistaken for one.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import taskloom.contracts as contracts

ROOT = Path(__file__).resolve().parents[2]
SEARCHED = (ROOT / "tests", ROOT / "contracts" / "taskloom" / "contracts" / "testing")
SUITES = sorted((ROOT / "contracts" / "taskloom" / "contracts" / "testing").glob("_*_suite.py"))
INVARIANT_LINE = re.compile(r"^\s*([A-Z]{2})(\d+)\s+\S", re.MULTILINE)
CODE = re.compile(r"([a-z]+)(\d+)")


def _protocols() -> list[type]:
    found = []
    for name in contracts.__all__:
        value = getattr(contracts, name)
        if inspect.isclass(value) and getattr(value, "_is_protocol", False):
            found.append(value)
    return found


def _invariants() -> dict[str, str]:
    """Invariant code (lower case, ``st6``) -> the protocol that states it."""
    codes: dict[str, str] = {}
    for protocol in _protocols():
        for family, number in INVARIANT_LINE.findall(protocol.__doc__ or ""):
            code = f"{family.lower()}{number}"
            assert code not in codes, f"{code} is stated by {codes[code]} and {protocol.__name__}"
            codes[code] = protocol.__name__
    return codes


def _family(code: str) -> str:
    return code.rstrip("0123456789")


INVARIANTS = _invariants()
FAMILIES = {_family(code) for code in INVARIANTS}


def _codes(test_name: str) -> list[str]:
    """The invariant codes a test name starts with (families of INVARIANTS only)."""
    codes = []
    for part in test_name.removeprefix("test_").split("_"):
        match = CODE.fullmatch(part)
        if match is None or match[1] not in FAMILIES:
            break
        codes.append(part)
    return codes


def _test_functions(paths: list[Path]) -> dict[str, list[str]]:
    """Test function name -> the files (relative) that define one of that name."""
    names: dict[str, list[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test_"
            ):
                names.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    return names


TESTS = _test_functions(sorted(p for base in SEARCHED for p in base.rglob("*.py")))
TESTED = {code for name in TESTS for code in _codes(name)}


def test_protocols_state_numbered_invariants() -> None:
    """The contracts define the expected invariant families, numbered from 1 without gaps."""
    assert {"st", "ss", "sd", "ex", "ev", "pl"} <= FAMILIES
    for family in FAMILIES:
        numbers = sorted(int(c[len(family) :]) for c in INVARIANTS if _family(c) == family)
        assert numbers == list(range(1, len(numbers) + 1)), f"{family}: {numbers}"


def test_every_adapter_invariant_has_a_test() -> None:
    """Each ST, SS, SD and EX invariant is checked by a test named after it."""
    wanted = {c for c in INVARIANTS if _family(c) in {"st", "ss", "sd", "ex"}}
    missing = sorted(wanted - TESTED)
    assert not missing, f"invariants without a test: {missing}"


def test_every_engine_and_plugin_invariant_has_a_test() -> None:
    """Each EV and PL invariant is checked by a test named after it (tests in tests/sdk)."""
    wanted = {c for c in INVARIANTS if _family(c) in {"ev", "pl"}}
    missing = sorted(wanted - TESTED)
    assert not missing, f"invariants without a test: {missing}"


def _unknown(names: list[str]) -> dict[str, list[str]]:
    """Test name -> the codes it names that no protocol states."""
    found = {name: [c for c in _codes(name) if c not in INVARIANTS] for name in names}
    return {name: codes for name, codes in found.items() if codes}


def test_no_test_names_an_unknown_invariant() -> None:
    """A test named ``test_st99_...`` (a family code that no protocol states) is an error."""
    unknown = _unknown(sorted(TESTS))
    assert not unknown, f"tests naming invariants that do not exist: {unknown}"


def test_every_suite_test_names_an_invariant() -> None:
    """Every test of a conformance suite is named after the invariant(s) it checks."""
    suite_tests = _test_functions(SUITES)
    assert len(suite_tests) > 50
    unnamed = sorted(name for name in suite_tests if not _codes(name))
    assert not unnamed, f"suite tests that name no invariant: {unnamed}"


def test_the_name_parser() -> None:
    """The parser reads leading codes only, and only from known families."""
    assert _codes("test_st1_st2_against_model") == ["st1", "st2"]
    assert _codes("test_st10_invalid_names") == ["st10"]
    assert _codes("test_sha256_of_files") == []
    assert _codes("test_round_trip_st1") == []


def test_the_checks_can_fail() -> None:
    """Unknown codes are reported, and a docstring's numbered lines are what is parsed."""
    assert _unknown(["test_st99_x", "test_st1_y", "test_ex1_ex42_z"]) == {
        "test_st99_x": ["st99"],
        "test_ex1_ex42_z": ["ex42"],
    }
    doc = "Invariants:\n\n    ST1  one thing\n         continued\n    ST2  another\n"
    assert INVARIANT_LINE.findall(doc) == [("ST", "1"), ("ST", "2")]


def test_every_event_class_and_protocol_method_has_a_docstring() -> None:
    """Each event type and each method of each public Protocol says what it does."""
    import ast
    import inspect
    from typing import Protocol

    from taskloom.contracts._events import EVENT_TYPES

    missing = [
        c.__name__ for c in EVENT_TYPES.values() if "__doc__" not in vars(c) or not c.__doc__
    ]
    for name in contracts.__all__:
        obj = getattr(contracts, name)
        if not (
            inspect.isclass(obj) and Protocol in getattr(obj, "__mro__", ()) and obj is not Protocol
        ):
            continue
        tree = ast.parse(inspect.getsource(obj))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not ast.get_docstring(
                node
            ):
                missing.append(f"{name}.{node.name}")
    assert not missing, f"no docstring: {missing}"


def test_events_and_exceptions_never_share_a_name() -> None:
    """The naming rule: an event whose name an exception has takes the suffix Event."""
    from taskloom.contracts._events import EVENT_TYPES

    exceptions = {
        n
        for n in contracts.__all__
        if isinstance(getattr(contracts, n), type)
        and issubclass(getattr(contracts, n), BaseException)
    }
    events = {c.__name__ for c in EVENT_TYPES.values()}
    assert not events & exceptions
    for event in events:
        if event.endswith("Event"):
            assert event.removesuffix("Event") in exceptions, event
