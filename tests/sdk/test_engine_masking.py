"""Secret values the redactor knows are masked in step outputs before anything keeps them."""

from __future__ import annotations

from typing import Any

from engine_support import FakeExecutor, make_engine, pipeline

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import MASK
from taskloom.security import Redactor

KEY = "sk-masked-4c1d9e0a7b"


async def test_echoed_key_and_returned_secret_are_masked_in_records_cache_and_result() -> None:
    """A provider echoing its key and a plugin step returning it: masked everywhere."""

    async def leak(args: Any) -> dict[str, str]:
        return {"token": KEY}

    storage = MemoryStorage()
    engine, _ = make_engine(
        FakeExecutor(reply=lambda r: f"echo {KEY}"),
        storage=storage,
        plugin_steps={"p.leak": leak},
        redactor=Redactor([KEY]),
        durability="sync",
    )
    async with engine:
        result = await engine.run(
            pipeline(
                {"id": "leak", "uses": "p.leak"},
                {
                    "id": "echo",
                    "executor": "fake",
                    "model": "m",
                    "temperature": 0,
                    "cache": True,
                    "prompt": "{{steps.leak.output.token}}",
                    "needs": ["leak"],
                },
            )
        )
        steps = await engine.runstore.finished_steps(result.run_id)
        record = await engine.runstore.load_run(result.run_id)
        cache = await storage.scan("cache")
        assert cache, "the reply was cached"
    assert result.output == f"echo {MASK}"
    assert result.steps["leak"] == {"token": MASK}
    assert steps[("leak", None)].output == {"token": MASK}
    assert steps[("echo", None)].output == f"echo {MASK}"
    assert record.output == f"echo {MASK}"
    assert all(KEY.encode() not in entry.value for entry in cache)


async def test_without_known_secrets_outputs_are_kept_as_they_are() -> None:
    """An empty redactor changes no output (and a value that is not a secret stays)."""
    engine, _ = make_engine(redactor=Redactor(), durability="sync")
    async with engine:
        result = await engine.run(pipeline({"id": "a", "executor": "fake", "prompt": KEY}))
    assert result.output.endswith(KEY)


def test_an_empty_redactor_still_masks_secret_objects_in_data() -> None:
    """redact_data turns a Secret into MASK even before any value is known."""
    from taskloom.contracts import Secret

    assert Redactor().redact_data({"k": Secret("v" * 8), "n": 1}) == {"k": MASK, "n": 1}
    assert Redactor().redact_data("plain") == "plain"
