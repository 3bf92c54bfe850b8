"""What a run spent before this process took it over, from what earlier processes stored.

A run's usage counts every attempt of every process that ran it, as far as storage
knows of it. Each process that ends cleanly writes its cumulative total in the run
record, in the same commit as its outcome event; a process that crashed wrote none,
but the ``StepSucceeded`` events it committed (each with the usage of all that
step's attempts) are in the history after the last outcome. So what was spent
before is the record's usage plus the usage of the steps that succeeded after the
last outcome event. A step that ran twice (its checkpoint lost in a crash) is
counted twice: it was paid twice. Attempts whose events never reached storage
(in flight at a crash) cannot be known and are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskloom.contracts import RunCancelledEvent, RunFailed, RunSucceeded, StepSucceeded, Usage
from taskloom.sdk._runs.records import RunRecord, StepRecord
from taskloom.sdk._runs.store import RunStore

__all__ = ["spent_before"]

_OUTCOMES = (RunSucceeded, RunFailed, RunCancelledEvent)


async def spent_before(
    store: RunStore,
    record: RunRecord,
    finished: Mapping[tuple[str, int | None], StepRecord] | None = None,
) -> tuple[Usage, dict[str, Usage]]:
    """The run's usage so far, in total and by executor id (see the module).

    ``finished`` (the run's checkpoints, read if not given) attributes the steps of
    crashed processes to their executors.
    """
    events = [event for _seq, event in await store.events(record.run_id)]
    last = max((i for i, event in enumerate(events) if isinstance(event, _OUTCOMES)), default=-1)
    total = record.usage
    by_executor = dict(record.usage_by_executor)
    after = [event for event in events[last + 1 :] if isinstance(event, StepSucceeded)]
    if after and finished is None:
        finished = await store.finished_steps(record.run_id)
    for event in after:
        total = total + event.usage
        checkpoint = finished.get((event.step_id, event.item)) if finished else None
        if checkpoint is not None and checkpoint.executor is not None:
            executor = checkpoint.executor
            by_executor[executor] = by_executor.get(executor, Usage()) + event.usage
    return total, by_executor
