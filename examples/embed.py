"""Embedding taskloom in an application: a durable run on SQLite, events, resume.

Run it from the repository root: ``python examples/embed.py``. It needs no
network: the executor is the scripted one, answering from a function.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from taskloom.adapters.scripted import ScriptedExecutor
from taskloom.adapters.sqlite import SQLiteStorage
from taskloom.contracts import CompletionRequest, StepSucceeded
from taskloom.sdk import Engine, ExecutorRegistry, ExecutorSettings

PIPELINE = {
    "taskloom": "pipeline/v1",
    "name": "triage",
    "inputs": {"tickets": {"type": "array"}},
    "defaults": {"temperature": 0, "retry": {"max_attempts": 3, "initial_delay_s": 0.1}},
    "steps": [
        {
            "id": "labels",
            "map": "{{inputs.tickets}}",
            "concurrency": 8,
            "step": {"id": "label", "prompt": "Label this ticket: {{item}}"},
        },
        {"id": "report", "prompt": "Write a report of these labels: {{steps.labels.output}}"},
    ],
    "output": {"labels": "{{steps.labels.output}}", "report": "{{steps.report.output}}"},
}


def reply(request: CompletionRequest) -> str:
    """A stand-in for a real model: deterministic, instant, offline."""
    text = request.messages[-1].content
    if text.startswith("Label"):
        return "bug" if "crash" in text else "question"
    return f"report: {text.count('bug')} bug(s)"


async def main() -> None:
    registry = ExecutorRegistry()
    registry.register(
        "model", ScriptedExecutor(reply), settings=ExecutorSettings(concurrency=4)
    )
    path = Path(tempfile.mkdtemp()) / "runs.db"
    async with await SQLiteStorage.open(path) as storage, Engine(
        storage=storage, registry=registry
    ) as engine:
        engine.bus.subscribe(
            lambda event: print(f"  done: {event.step_id} item={event.item}"),
            types=[StepSucceeded],
        )
        tickets = ["app crash on start", "how do I export?", "crash when saving"]
        result = await engine.run(PIPELINE, {"tickets": tickets})
        print("status:", result.status)
        print("output:", result.output)
        print("tokens:", result.usage.total_tokens)
        # A finished run resumes to its stored result without calling the model again.
        again = await engine.resume(result.run_id)
        assert again.output == result.output
    print("runs are stored in", path)


if __name__ == "__main__":
    asyncio.run(main())
