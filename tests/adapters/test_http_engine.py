"""The engine drives the HTTP executors against llm-katan as its retry policy says.

Retryable failures (HTTP 500 from ``--error-rate``) are retried with the
policy's backoff, up to ``max_attempts`` requests reaching the server; refused
credentials are not retried; a ``taskloom.toml`` with ``type = "openai"`` and
``api_key = { secret = ... }`` builds the executor through the registry and
runs ``examples/openai.json``. The engine's ``sleep`` is injected, so the
backoff is recorded instead of waited.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from katan_server import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    KatanServer,
    katan_executable,
    start_servers,
    stop_servers,
)

from taskloom.adapters.anthropic import AnthropicExecutor
from taskloom.adapters.memory import MemorySecretStore
from taskloom.adapters.openai import OpenAIExecutor
from taskloom.contracts import Event, Secret, StepFailed, StepRetrying
from taskloom.sdk import Engine, ExecutorRegistry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(katan_executable() is None, reason="llm-katan is not installed"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai.json"
SCENARIOS = {
    "errors_openai": ["--error-rate", "1.0"],
    "errors_anthropic": ["--error-rate", "1.0"],
    "flaky": ["--error-rate", "0.5"],
    "auth": ["--validate-keys", "--api-keys", f"openai={OPENAI_KEY},anthropic={ANTHROPIC_KEY}"],
    "plain": [],
}


@pytest.fixture(scope="module")
def katan() -> Iterator[dict[str, KatanServer]]:
    servers = start_servers(SCENARIOS)
    try:
        yield servers
    finally:
        stop_servers(servers)


def pipeline(retry: dict[str, Any], executor: str = "llm") -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "retry-demo",
        "defaults": {"executor": executor, "retry": retry},
        "steps": [{"id": "answer", "prompt": "hello there"}],
        "output": "{{steps.answer.output}}",
    }


async def run(engine: Any, spec: dict[str, Any]) -> tuple[list[Event], Any]:
    handle = engine.start(spec)
    events = [event async for event in handle.events()]
    try:
        return events, await handle.result()
    except StepFailed as exc:
        return events, exc


def engine_for(executor: Any, slept: list[float]) -> Any:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    registry = ExecutorRegistry()
    registry.register("llm", executor)
    return Engine(registry=registry, storage=None, sleep=sleep, random=lambda: 0.0)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_retryable_errors_are_retried_per_policy(
    katan: dict[str, KatanServer], protocol: str
) -> None:
    """HTTP 500 on every call: the engine tries max_attempts times with the policy's backoff."""
    server = katan[f"errors_{protocol}"]
    executor: OpenAIExecutor | AnthropicExecutor
    if protocol == "openai":
        executor = OpenAIExecutor(base_url=server.openai_url, model="m", api_key=Secret("k"))
    else:
        executor = AnthropicExecutor(base_url=server.anthropic_url, model="m", api_key=Secret("k"))
    slept: list[float] = []
    retry = {"max_attempts": 4, "initial_delay_s": 0.5, "multiplier": 2.0, "jitter": 0.2}
    async with executor, engine_for(executor, slept) as engine:
        events, outcome = await run(engine, pipeline(retry))
    assert isinstance(outcome, StepFailed)
    retrying = [e for e in events if isinstance(e, StepRetrying)]
    assert [e.attempt for e in retrying] == [1, 2, 3]
    assert [e.delay_s for e in retrying] == [0.5, 1.0, 2.0] == slept
    assert all(e.error.retryable for e in retrying)
    assert server.stats_total() == 4


async def test_flaky_server_succeeds_after_retries(katan: dict[str, KatanServer]) -> None:
    """With half the calls failing, the step succeeds; every retry shows as one extra request."""
    server = katan["flaky"]
    executor = OpenAIExecutor(base_url=server.openai_url, model="m", api_key=Secret("k"))
    slept: list[float] = []
    retry = {"max_attempts": 30, "initial_delay_s": 0.01, "max_delay_s": 0.01}
    async with executor, engine_for(executor, slept) as engine:
        for _ in range(4):
            _events, outcome = await run(engine, pipeline(retry))
            assert outcome.output.endswith("User: hello there"), outcome
    assert server.stats_total() == 4 + len(slept)


async def test_refused_credentials_are_not_retried(katan: dict[str, KatanServer]) -> None:
    """A wrong key fails the step at once: no StepRetrying, no sleep, the key in no event."""
    wrong = "sk-wrong-never-shown"
    executor = OpenAIExecutor(base_url=katan["auth"].openai_url, model="m", api_key=Secret(wrong))
    slept: list[float] = []
    async with executor, engine_for(executor, slept) as engine:
        events, outcome = await run(engine, pipeline({"max_attempts": 5}))
    assert isinstance(outcome, StepFailed)
    assert not [e for e in events if isinstance(e, StepRetrying)] and slept == []
    assert wrong not in repr(events) and wrong not in str(outcome)


async def test_config_file_builds_the_executor_and_runs_the_example(
    katan: dict[str, KatanServer], tmp_path: Path
) -> None:
    """taskloom.toml with type = "openai" and a secret reference runs examples/openai.json."""
    config = tmp_path / "taskloom.toml"
    config.write_text(
        '[storage]\nkind = "none"\n\n'
        "[executors.openai]\n"
        'type = "openai"\n'
        f'base_url = "{katan["plain"].openai_url}"\n'
        'model = "katan-model"\n'
        'api_key = { secret = "openai_api_key" }\n'
        "read_timeout_s = 10\n",
        encoding="utf-8",
    )
    secrets = MemorySecretStore({"openai_api_key": OPENAI_KEY})
    async with Engine.from_config(config, secrets=secrets) as engine:
        result = await engine.run(json.loads(EXAMPLE.read_text(encoding="utf-8")))
    assert result.status == "succeeded"
    assert "User: Summarise this document" in result.output["summary"]
    facts = result.output["facts"]
    facts_text = facts if isinstance(facts, str) else json.dumps(facts)
    assert "response" in facts_text
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
