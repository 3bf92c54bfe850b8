"""chart.png: how cost grows with the work, and every ratio beside its target.

Scaling curves are found in the rows themselves: a row whose name carries
``@ N steps``, ``@ N items`` or ``@ N records`` is one point of the series named
by the rest of its name, so a group module adds a curve by naming its rows so.
Series with fewer than two points, and memory figures, are not curves.

The bar panel shows each ratio that has a numeric target (``<= 1.2x raw``,
``>= 0.40x``) with the target marked, green where it holds and red where it does
not, and each peer ratio (taskloom over LangGraph) against parity.
matplotlib is in the ``bench`` extra: without it the chart is skipped, not the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]

_SCALE = re.compile(r"\s*(?:@|\bof)\s*([\d,]+)\s+(?:[\w-]+\s+)?(steps|items|records)\b")
_TARGET = re.compile(r"([<>]=?)\s*([\d.]+)\s*x")

TITLES = {
    ("steps", "us/step"): ("Chain: time per step", "steps in the chain", "µs per step"),
    ("items", "us/item"): ("map, zero-latency calls: time per item", "items", "µs per item"),
    ("items", "s wall"): (
        "map fan-out, 50 ms calls: wall time",
        "items (concurrency = items)",
        "s",
    ),
    ("records", "ops/s"): ("Storage: operations per second", "records stored", "operations / s"),
}
Series = dict[str, list[tuple[int, Row]]]


def scaling_series(rows: Sequence[Row]) -> dict[tuple[str, str], Series]:
    """(kind, unit) -> series label -> (scale, row) points sorted by scale.

    kind is 'steps', 'items' or 'records'; series with fewer than two scales and
    memory figures are left out.
    """
    found: dict[tuple[str, str], Series] = {}
    for row in rows:
        name = str(row.get("name", ""))
        match = _SCALE.search(name)
        unit = str(row.get("unit") or "")
        if match is None or not isinstance(row.get("value"), int | float) or "MiB" in unit:
            continue
        label = (name[: match.start()] + name[match.end() :]).strip(" ,")
        points = found.setdefault((match.group(2), unit), {}).setdefault(label, [])
        points.append((int(match.group(1).replace(",", "")), row))
    panels: dict[tuple[str, str], Series] = {}
    for key in sorted(found, key=lambda k: ("steps", "items", "records").index(k[0])):
        kept = {
            label: sorted(points, key=lambda p: p[0])
            for label, points in found[key].items()
            if len({scale for scale, _ in points}) >= 2
        }
        if kept:
            panels[key] = kept
    return panels


def target_bars(rows: Sequence[Row]) -> list[tuple[str, float, float | None, str, bool | None]]:
    """(label, ratio, target ratio or None, comparison, holds) for the bar panel."""
    bars: list[tuple[str, float, float | None, str, bool | None]] = []
    for row in rows:
        value = row.get("ratio")
        if not isinstance(value, int | float) or value <= 0:
            continue
        label = f"{row['group']}: {row['name']}"
        if len(label) > 60:
            label = label[:57] + "..."
        if row.get("group") == "peer":
            bars.append((label + " (vs LangGraph)", float(value), None, "", None))
            continue
        match = _TARGET.search(str(row.get("target") or ""))
        if match is None:
            continue
        bars.append((label, float(value), float(match.group(2)), match.group(1), row.get("holds")))
    return bars


def draw(rows: Sequence[Row], path: Path, *, title: str) -> str | None:
    """Write the chart to ``path``; return why it was skipped, or None once written."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: install taskloom[bench] for chart.png"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = scaling_series(rows)
    bars = target_bars(rows)
    columns = max(1, min(4, len(panels)))
    curve_rows = max(1, -(-len(panels) // columns))
    bar_height = max(3.0, 0.3 * len(bars))
    figure = plt.figure(
        figsize=(5 * columns + 3, 4.6 * curve_rows + bar_height), layout="constrained"
    )
    grid = figure.add_gridspec(
        curve_rows + 1, columns, height_ratios=[4.6] * curve_rows + [bar_height]
    )
    if not panels:
        _empty(figure.add_subplot(grid[0, :]), "no rows at several scales in this run")
    for index, (key, series) in enumerate(panels.items()):
        _curves(figure.add_subplot(grid[index // columns, index % columns]), key, series)
    _bars(figure.add_subplot(grid[curve_rows, :]), bars)
    figure.suptitle(title, fontsize=13)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def _empty(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="grey")
    axes.set_axis_off()


def _curves(axes: Any, key: tuple[str, str], series: Series) -> None:
    kind, unit = key
    title, xlabel, ylabel = TITLES.get(key, (f"{unit} by {kind}", kind, unit))
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale("log")
    baselines: dict[str, list[tuple[int, float]]] = {}
    for label, points in series.items():
        xs = [scale for scale, _ in points]
        ys = [float(row["value"]) for _, row in points]
        axes.plot(xs, ys, marker="o", label=label)
        base_unit = str(points[0][1].get("baseline_unit") or "")
        base = [
            (scale, float(row["baseline"]))
            for scale, row in points
            if isinstance(row.get("baseline"), int | float)
        ]
        if base_unit and len(base) >= 2 and base_unit not in baselines:
            baselines[base_unit] = base
    for base_unit, base in baselines.items():
        axes.plot(
            [x for x, _ in base],
            [y for _, y in base],
            linestyle="--",
            color="black",
            alpha=0.6,
            marker=".",
            label=f"baseline: {base_unit}",
        )
    if key == ("items", "s wall"):
        axes.axhline(0.05, color="grey", linestyle=":", label="ideal: 50 ms")
    values = [float(row["value"]) for points in series.values() for _, row in points]
    values += [y for base in baselines.values() for _, y in base]
    if kind == "records" or (min(values) > 0 and max(values) / min(values) > 30):
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=7, loc="best", framealpha=0.85)


def _bars(axes: Any, bars: list[tuple[str, float, float | None, str, bool | None]]) -> None:
    axes.set_title("Ratios (taskloom / baseline) beside their targets; peers beside parity")
    if not bars:
        axes.text(
            0.5,
            0.5,
            "no row with a numeric target in this run",
            ha="center",
            va="center",
            transform=axes.transAxes,
            color="grey",
        )
        return
    positions = list(range(len(bars)))[::-1]
    colors = []
    for _label, _value, _target, _op, holding in bars:
        colors.append("tab:blue" if holding is None else ("tab:green" if holding else "tab:red"))
    axes.barh(positions, [b[1] for b in bars], color=colors, alpha=0.8)
    for position, (_label, value, target, op, _holding) in zip(positions, bars, strict=True):
        mark = 1.0 if target is None else target
        axes.plot([mark, mark], [position - 0.4, position + 0.4], color="black", linewidth=2)
        note = f"{value:.2f}x" + ("" if target is None else f"  (target {op} {target:g}x)")
        axes.text(value * 1.05, position, note, va="center", fontsize=7)
    axes.set_yticks(positions)
    axes.set_yticklabels([b[0] for b in bars], fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("ratio, log scale (black tick: target; blue bars: parity with LangGraph = 1)")
    low = min(min(b[1] for b in bars), min(b[2] or 1.0 for b in bars))
    high = max(max(b[1] for b in bars), max(b[2] or 1.0 for b in bars))
    axes.set_xlim(low / 2, high * 4)
    axes.grid(True, axis="x", which="major", alpha=0.3)
