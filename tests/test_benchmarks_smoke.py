"""The benchmark suite runs end to end, writes its files, and tells a crash from a slow figure.

No test here asserts on a timing: figures live in the benchmark output, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not add the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import _chart, _suite, _timing  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402

MACHINE_KEYS = {"date", "cpu_count", "python", "platform"}


def _write_module(folder: Path, name: str, body: str) -> str:
    (folder / f"{name}.py").write_text(body)
    return name


def test_quick_security_group_writes_table_json_markdown_and_chart(tmp_path: Path) -> None:
    """`python -m benchmarks --quick --group security` exits 0 and writes all three files."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--group",
            "security",
            "--output",
            tmp_path,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify_plugin" in done.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["quick"] is True
    assert set(data["machine"]) >= MACHINE_KEYS
    assert data["crashed"] == []
    assert [g["group"] for g in data["groups"]] == ["security"]
    assert data["groups"][0]["status"] == "ok"
    assert data["groups"][0]["peak_rss_mib"] > 0
    assert data["rows"], "the security group returned no rows"
    for row in data["rows"]:
        assert set(row) == set(_suite.ROW_KEYS)
        assert row["group"] == "security"
    markdown = (tmp_path / "results.md").read_text()
    assert "| group | measured | taskloom |" in markdown
    assert "verify_plugin" in markdown
    pytest.importorskip("matplotlib")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_group_module_is_a_crash_and_the_exit_status_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group whose module cannot be imported is reported as crashed, and main returns 1."""
    monkeypatch.setitem(_suite.GROUPS, "engine", "benchmarks.no_such_benchmark_module")
    status = main(["--quick", "--group", "engine", "--output", str(tmp_path)])
    assert status == 1
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["crashed"] == ["engine"]
    assert "no_such_benchmark_module" in data["groups"][0]["error"]
    assert "CRASHED" in (tmp_path / "results.md").read_text()


def test_a_group_that_raises_or_returns_junk_is_crashed_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run() raising, or returning something other than a list of dicts, makes a crashed group."""
    monkeypatch.syspath_prepend(str(tmp_path))
    boom = _write_module(tmp_path, "tl_bench_boom", "def run(quick):\n    raise OSError('x')\n")
    junk = _write_module(tmp_path, "tl_bench_junk", "def run(quick):\n    return {'a': 1}\n")
    raised = _suite.run_in_process("boom", boom, quick=True)
    assert raised.crashed
    assert "OSError: x" in (raised.error or "")
    returned = _suite.run_in_process("junk", junk, quick=True)
    assert returned.crashed
    assert "not a list of dicts" in (returned.error or "")


def test_a_missed_target_is_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose target does not hold leaves the group ok (CI fails on crashes only)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module = _write_module(
        tmp_path,
        "tl_bench_slow",
        "def run(quick):\n"
        "    return [{'name': 'slow', 'value': 9.0, 'unit': 's', 'baseline': 1.0,\n"
        "             'baseline_unit': 's ideal', 'target': '<= 1.2x ideal', 'holds': False,\n"
        "             'spread': 0.1}]\n",
    )
    results = _suite.run_groups(
        ["slow"], quick=True, isolate=False, modules={"slow": module}, progress=None
    )
    assert not results[0].crashed
    (row,) = results[0].rows
    assert row["group"] == "slow"  # filled in from the suite's name for the group
    assert row["ratio"] == 9.0  # computed when the module gave none
    assert row["holds"] is False


def test_rows_are_normalized_to_the_row_keys_with_json_safe_numbers() -> None:
    """Missing keys become None and NaN/infinity become None, so results.json stays valid JSON."""
    (row,) = _suite.normalize_rows("g", [{"name": "n", "value": float("nan"), "ratio": 2.0}])
    assert set(row) == set(_suite.ROW_KEYS)
    assert row["value"] is None
    assert row["baseline"] is None
    assert row["ratio"] == 2.0
    with pytest.raises(TypeError, match="has no name"):
        _suite.normalize_rows("g", [{"value": 1.0}])


def test_chart_finds_scaling_series_and_numeric_targets_in_row_names() -> None:
    """Rows named '@ N steps' / 'of N items' / '@ N records' become curves; bounded targets bars."""

    def row(group: str, name: str, unit: str, **extra: object) -> dict[str, object]:
        base = {"group": group, "name": name, "value": 1.0, "unit": unit, "baseline": 0.5}
        return {**base, "baseline_unit": "raw", "ratio": 2.0, "target": "-", "holds": None, **extra}

    rows = [
        row("scaling", "chain per step @ 100 steps (SQLite)", "us/step"),
        row("scaling", "chain per step @ 1,000 steps (SQLite)", "us/step"),
        row("engine", "scaling: map of 100 zero-latency items @100", "us/item"),
        row("engine", "scaling: map of 1000 zero-latency items @100", "us/item"),
        row("storage", "sqlite get @ 1,000 records", "ops/s"),  # one scale only: no curve
        row("storage", "sqlite peak Python memory @ 1,000 records", "MiB"),
        row("security", "verify", "us", target="<= 1.2x raw", holds=False),
        row("engine", "chain", "us/step above raw", target="<= 0.5 us/step above raw", holds=False),
        row("engine", "scan", "ms", target="<= 5 s", holds=True),  # units differ: no bar
        row("storage", "get", "ops/s", target="~1x (one round trip)"),  # no bound: no bar
        row("peer", "chain", "us/step"),
    ]
    series = _chart.scaling_series(rows)
    assert set(series) == {("steps", "us/step"), ("items", "us/item")}
    ((label, points),) = series[("steps", "us/step")].items()
    assert label == "chain per step (SQLite)"
    assert [scale for scale, _ in points] == [100, 1000]
    bars = _chart.target_bars(rows)
    assert [(b.label, b.position, b.holds) for b in bars] == [
        ("security: verify", 2.0 / 1.2, False),
        ("engine: chain", 1.0 / 0.5, False),
        ("peer: chain", 2.0, None),
    ]


def test_peer_rows_say_skipped_when_langgraph_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the bench extra the peer group measures nothing and every row says how to get it."""

    class NoLangGraph:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name.partition(".")[0] == "langgraph":
                raise ImportError(f"{name} is hidden by this test")

    for name in [m for m in sys.modules if m.partition(".")[0] == "langgraph"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoLangGraph(), *sys.meta_path])
    from benchmarks import _peer_langgraph

    rows = _peer_langgraph.run(quick=True)
    assert rows
    for row in rows:
        assert row["group"] == "peer"
        assert row["value"] is None
        assert row["target"] == "skipped: install taskloom[bench]"


def test_make_row_rounds_and_computes_the_ratio_only_when_it_can() -> None:
    """make_row gives every suite key, rounds to the digits asked, and leaves a ratio of 0 out."""
    row = _timing.make_row("g", "n", 2.0 / 3, "s", 1 / 3, "s raw", digits=3, spread=0.12345)
    assert set(row) == set(_suite.ROW_KEYS)
    assert (row["value"], row["baseline"], row["ratio"], row["spread"]) == (
        0.667,
        0.333,
        2.0,
        0.123,
    )
    given = _timing.make_row("g", "n", 5.0, "s", 2.0, "s", ratio=1.23456, digits=2, ratio_digits=3)
    assert given["ratio"] == 1.235
    empty = _timing.make_row("g", "n", None, "-", 0.0, "-", spread=None)
    assert (empty["value"], empty["ratio"], empty["spread"]) == (None, None, None)


def test_median_spread_is_the_median_and_range_over_median() -> None:
    """The spread is (max - min) / median, and 0 when the median is 0."""
    assert _timing.median_spread([1.0, 2.0, 4.0]) == (2.0, 1.5)
    assert _timing.median_spread([0.0, 0.0]) == (0.0, 0.0)


def test_group_main_passes_quick_prints_every_row_and_writes_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """_timing.main runs the group with --quick, prints each row and writes <name>.json."""
    monkeypatch.setattr(_timing, "RESULTS_DIR", tmp_path)
    seen: list[bool] = []

    def run(quick: bool) -> list[dict[str, object]]:
        seen.append(quick)
        return [_timing.make_row("g", "a row", 1.5, "s", None, "none", spread=None)]

    assert _timing.main("bench_fake", "Fake group.", run, ["--quick"]) == 0
    assert seen == [True]
    assert "a row" in capsys.readouterr().out
    data = json.loads((tmp_path / "bench_fake.json").read_text())
    assert data == {"quick": True, "rows": [run(True)[0]]}
