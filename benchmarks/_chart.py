"""chart.png: how cost grows with the work, and every figure beside its target.

Scaling curves are found in the rows themselves: a row whose name carries
``@ N steps``, ``of N items`` or ``@ N records`` is one point of the series named
by the rest of its name, so a group module adds a curve by naming its rows so.
Series with fewer than two points, and memory figures, are not curves; each panel
holds one kind of scale in one unit, with the baselines dashed.

The bar panel puts every figure that has a numeric target (``<= 1.2x raw``,
``>= 0.40x``, ``<= 25 us/step above raw``) on one axis, the figure divided by
its target, green where it holds and red where it does not, and each peer ratio
(taskloom over LangGraph) beside parity.
matplotlib is in the ``bench`` extra: without it the chart is skipped, not the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

Row = dict[str, Any]

_SCALE = re.compile(r"\s*(?:@|\bof)\s*([\d,]+)\s+(?:[\w-]+\s+)?(steps|items|records)\b")
_TARGET = re.compile(r"([<>]=?)\s*([\d.]+)\s*(x\b|[^\s(]*)")

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


@attrs.frozen(kw_only=True)
class Bar:
    """One bar: a figure over its target (or taskloom over LangGraph), with its caption."""

    label: str
    position: float  # figure / target; for a peer, taskloom / LangGraph; 1 is the mark
    caption: str
    holds: bool | None


def _short(number: float) -> str:
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3g}"


def target_bars(rows: Sequence[Row]) -> list[Bar]:
    """Bars for rows with a numeric target, and for every peer row.

    A target ``<= 1.2x ...`` is compared with the row's ratio; a target with a
    unit (``<= 25 us/step above raw``) with its value, when the row's unit starts
    with that unit. Each bar is the figure divided by its target, so that rows of
    every unit share one axis on which 1 is the target.
    """
    bars: list[Bar] = []
    for row in rows:
        label = f"{row['group']}: {row['name']}"
        if len(label) > 64:
            label = label[:61] + "..."
        ratio, value = row.get("ratio"), row.get("value")
        if row.get("group") == "peer":
            if isinstance(ratio, int | float) and ratio > 0:
                caption = f"{ratio:.2f}x LangGraph"
                bars.append(Bar(label=label, position=float(ratio), caption=caption, holds=None))
            continue
        match = _TARGET.search(str(row.get("target") or ""))
        if match is None:
            continue
        op, goal, unit = match.group(1), float(match.group(2)), match.group(3)
        if unit == "x":
            figure, shown = ratio, f"{_short(float(ratio or 0))}x"
        elif str(row.get("unit") or "").startswith(unit):
            figure, shown = value, f"{_short(float(value or 0))} {unit}".strip()
        else:
            continue
        if not isinstance(figure, int | float) or figure <= 0 or goal <= 0:
            continue
        bound = f"{goal:g} {unit}".strip()
        bars.append(
            Bar(
                label=label,
                position=float(figure) / goal,
                caption=f"{shown}  (target {op} {f'{goal:g}{unit}' if unit == 'x' else bound})",
                holds=row.get("holds"),
            )
        )
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
    columns = 2 if len(panels) >= 3 else max(1, len(panels))
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
    styles = [("--", "black"), (":", "dimgray"), ("-.", "gray")]
    for index, (base_unit, base) in enumerate(baselines.items()):
        linestyle, color = styles[index % len(styles)]
        axes.plot(
            [x for x, _ in base],
            [y for _, y in base],
            linestyle=linestyle,
            color=color,
            alpha=0.7,
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


def _bars(axes: Any, bars: list[Bar]) -> None:
    axes.set_title("Each figure over its target (1 = on target), and taskloom over LangGraph")
    if not bars:
        _empty(axes, "no row with a numeric target in this run")
        return
    positions = list(range(len(bars)))[::-1]
    colors = [
        "tab:blue" if bar.holds is None else ("tab:green" if bar.holds else "tab:red")
        for bar in bars
    ]
    axes.barh(positions, [bar.position for bar in bars], color=colors, alpha=0.8)
    axes.axvline(1.0, color="black", linewidth=1.5)
    for position, bar in zip(positions, bars, strict=True):
        axes.text(bar.position * 1.06, position, bar.caption, va="center", fontsize=7)
    axes.set_yticks(positions)
    axes.set_yticklabels([bar.label for bar in bars], fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel(
        "figure / target, log scale: green holds, red misses (a >= target holds right of 1, "
        "a <= target left of it)\nblue: taskloom / LangGraph, left of 1 is faster"
    )
    low = min(min(bar.position for bar in bars), 1.0)
    high = max(max(bar.position for bar in bars), 1.0)
    axes.set_xlim(low / 2, high * 5)
    axes.grid(True, axis="x", which="major", alpha=0.3)
