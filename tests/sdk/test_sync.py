"""SyncEngine: the blocking facade for code without an event loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import FakeExecutor, pipeline

from taskloom.contracts import InvalidRequest, StepFailed, UsageError
from taskloom.sdk import ExecutorRegistry, SyncEngine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_sync_engine_runs_and_resumes() -> None:
    """run() and resume() block and return RunResults; close() is idempotent."""
    registry = ExecutorRegistry()
    fake = FakeExecutor()
    fake.fail("b", InvalidRequest("no"))
    registry.register("fake", fake)
    with SyncEngine(registry=registry) as engine:
        ok = engine.run(pipeline({"id": "a", "prompt": "x"}))
        assert ok.output == "None|x"
        with pytest.raises(StepFailed):
            engine.run(pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}))
    engine.close()
    with pytest.raises(UsageError):
        engine.run(pipeline({"id": "a", "prompt": "x"}))


def test_sync_engine_resume_continues_a_failed_run() -> None:
    """resume() continues a failed run from its checkpoints."""
    registry = ExecutorRegistry()
    fake = FakeExecutor()
    fake.fail("b", InvalidRequest("no"))
    registry.register("fake", fake)
    with SyncEngine(registry=registry) as engine:
        with pytest.raises(StepFailed):
            engine.run(pipeline({"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}))
        run_id = engine._call(engine.engine.runstore.list_runs())[0].run_id
        result = engine.resume(run_id)
    assert result.output == "None|b"
    assert fake.calls["a"] == 1


def test_sync_engine_from_config(tmp_path: Path) -> None:
    """SyncEngine.from_config builds the engine from a taskloom.toml."""
    config = tmp_path / "taskloom.toml"
    config.write_text('[executors.s]\ntype = "scripted"\n', encoding="utf-8")
    with SyncEngine.from_config(config) as engine:
        result = engine.run(EXAMPLES / "hello.json", {"name": "Ada"})
    assert result.output["greeting"] == "Say hello to Ada."


async def test_sync_engine_refuses_a_running_loop() -> None:
    """Inside a running event loop SyncEngine raises UsageError instead of deadlocking."""
    engine = SyncEngine()
    with pytest.raises(UsageError, match="running event loop"):
        engine.run(pipeline({"id": "a", "prompt": "x"}))
    engine._runner.close()


def test_sync_engine_submits_idempotently() -> None:
    """submit() queues a run and returns its id; the same key returns the same id."""
    registry = ExecutorRegistry()
    registry.register("fake", FakeExecutor())
    with SyncEngine(registry=registry) as engine:
        first = engine.submit(pipeline({"id": "a", "prompt": "x"}), idempotency_key="k")
        again = engine.submit(pipeline({"id": "a", "prompt": "x"}), idempotency_key="k")
        assert first == again
        assert engine.resume(first).status == "succeeded"
