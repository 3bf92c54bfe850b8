"""The live progress line: its clock ticks between events, and maps show done/total."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from taskloom.contracts import StepStarted, StepSucceeded, Usage
from taskloom.sdk._cli import progress as progress_module
from taskloom.sdk._cli.progress import Progress, map_totals


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=200)


def test_the_elapsed_time_ticks_without_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the live display redraws reads the clock each time, not only when an event comes."""
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(_console(), title="run", live=True)
    assert progress._live is not None
    first = str(progress._live.get_renderable())
    now[0] += 7.5
    later = str(progress._live.get_renderable())
    assert "0.0s" in first and "7.5s" in later


def test_a_map_over_an_input_shows_done_out_of_total() -> None:
    """A map over an input list shows its items done/total as they finish."""
    pipeline = {
        "steps": [
            {"id": "first", "prompt": "x"},
            {"id": "m", "map": "{{ inputs.docs }}", "step": {"id": "b", "prompt": "{{item}}"}},
            {"id": "n", "map": "{{steps.first.output}}", "step": {"id": "c", "prompt": "y"}},
        ]
    }
    totals = map_totals(pipeline, {"docs": ["a", "b", "c", "d", "e"]})
    assert totals == {"m": 5}
    progress = Progress(_console(), title="run", live=False, map_totals=totals)
    assert "m 0/5" in str(progress.render())
    for index in range(2):
        progress.update(StepStarted(run_id="r", at=1.0, step_id="m", item=index))
        progress.update(
            StepSucceeded(run_id="r", at=2.0, step_id="m", item=index, usage=Usage(), attempt=1)
        )
    progress.update(
        StepSucceeded(run_id="r", at=2.0, step_id="n", item=0, usage=Usage(), attempt=1)
    )
    line = str(progress.render())
    assert "m 2/5" in line and "n 1" in line


def test_a_resumed_map_counts_the_items_finished_before() -> None:
    """On a resume the map's done count starts from its checkpointed items."""
    progress = Progress(
        _console(), title="resume", live=False, map_totals={"m": 5}, map_done={"m": 3}
    )
    assert "m 3/5" in str(progress.render())


def test_the_progress_line_prints_names_as_data() -> None:
    """A pipeline name with a terminal escape is shown escaped, never acted on."""
    progress = Progress(_console(), title="evil\x1b]0;pwned\x07", live=False)
    line = str(progress.render())
    assert "\x1b" not in line and "\\x1b" in line
