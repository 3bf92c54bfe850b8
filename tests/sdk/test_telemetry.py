"""OpenTelemetry: runs, steps and LLM calls as spans with the GenAI conventions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from engine_support import FakeExecutor, make_engine, pipeline
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import (
    CompletionRequest,
    CompletionResult,
    InvalidRequest,
    StepFailed,
    UsageError,
)
from taskloom.sdk import Engine
from taskloom.sdk._config.toml import load_config
from taskloom.sdk._engine.leaf import LeafRunner
from taskloom.sdk._telemetry.tracing import Telemetry
from taskloom.security import Redactor


class Captured:
    """A Telemetry over in-memory exporters, and what they caught."""

    def __init__(self, *, capture_content: bool = False) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry(
            tracer_provider=self.tracer_provider,
            meter_provider=MeterProvider(metric_readers=[self.reader]),
            capture_content=capture_content,
        )

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def metric(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for point in m.data.data_points
        ]


@pytest.fixture
def captured() -> Iterator[Captured]:
    yield Captured()


LLM = {"prompt": "hello", "model": "m-1", "temperature": 0.5, "top_p": 0.9, "max_tokens": 50}


async def test_run_step_and_call_spans_follow_the_genai_conventions(captured: Captured) -> None:
    """One run: a run span, a step span under it, a CLIENT ``chat m-1`` span under the
    step, attribute by attribute as the GenAI conventions name them."""
    engine, _ = make_engine(telemetry=captured.telemetry)
    async with engine:
        result = await engine.run(pipeline({"id": "a", **LLM}))
    (run,) = captured.named("taskloom.run")
    (step,) = captured.named("taskloom.step")
    (chat,) = captured.named("chat")
    assert run.name == "taskloom.run test"
    assert run.attributes is not None and run.attributes["taskloom.run_id"] == result.run_id
    assert run.attributes["taskloom.run.status"] == "succeeded"
    assert step.parent is not None and step.parent.span_id == run.context.span_id
    assert chat.parent is not None and chat.parent.span_id == step.context.span_id
    assert chat.name == "chat m-1"
    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "fake",
        "gen_ai.request.model": "m-1",
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 1,
        "gen_ai.usage.output_tokens": 1,
    }
    assert {s.context.trace_id for s in captured.spans} == {run.context.trace_id}


async def test_token_and_duration_metrics(captured: Captured) -> None:
    """gen_ai.client.token.usage has an input and an output point; the duration one."""
    engine, _ = make_engine(telemetry=captured.telemetry)
    async with engine:
        await engine.run(pipeline({"id": "a", **LLM}))
    tokens = captured.metric("gen_ai.client.token.usage")
    kinds = {p.attributes["gen_ai.token.type"]: p for p in tokens}
    assert set(kinds) == {"input", "output"}
    assert kinds["input"].sum == 1 and kinds["output"].sum == 1
    assert kinds["input"].attributes["gen_ai.request.model"] == "m-1"
    (duration,) = captured.metric("gen_ai.client.operation.duration")
    assert duration.count == 1
    assert duration.attributes["gen_ai.provider.name"] == "fake"


async def test_a_run_started_inside_a_span_is_its_child(captured: Captured) -> None:
    """The caller's current span is the run span's parent."""
    engine, _ = make_engine(telemetry=captured.telemetry)
    tracer = captured.tracer_provider.get_tracer("app")
    async with engine:
        with tracer.start_as_current_span("request") as outer:
            await engine.run(pipeline({"id": "a", "prompt": "x"}))
    (run,) = captured.named("taskloom.run")
    assert run.parent is not None and run.parent.span_id == outer.get_span_context().span_id


async def test_map_items_get_a_span_each(captured: Captured) -> None:
    """A map's items are spans of their own, each with its index."""
    engine, _ = make_engine(telemetry=captured.telemetry)
    body = {"id": "each", "prompt": "{{item}}"}
    async with engine:
        await engine.run(
            pipeline(
                {"id": "m", "map": "{{inputs.xs}}", "step": body},
                inputs={"xs": {"type": "array"}},
            ),
            {"xs": ["a", "b", "c"]},
        )
    items = sorted(
        s.attributes["taskloom.item"] for s in captured.named("taskloom.step") if s.attributes
    )
    assert items == [0, 1, 2]
    assert len(captured.named("chat")) == 3


async def test_a_resumed_run_links_to_its_first_trace(captured: Captured) -> None:
    """A resume is a new trace whose run span links to the first run's span."""
    storage = MemoryStorage()
    fake = FakeExecutor()
    fake.fail("two", InvalidRequest("no"))
    steps = ({"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"})
    engine, _ = make_engine(fake, storage=storage, telemetry=captured.telemetry)
    async with engine:
        with pytest.raises(StepFailed):
            await engine.run(pipeline(*steps))
        first = captured.named("taskloom.run")[0]
        run_id = first.attributes["taskloom.run_id"] if first.attributes else ""
        await engine.resume(str(run_id))
    runs = captured.named("taskloom.run")
    assert len(runs) == 2
    assert runs[0].status.status_code is StatusCode.ERROR
    assert runs[0].attributes is not None and runs[0].attributes["error.type"] == "StepFailed"
    resumed = runs[1]
    assert resumed.attributes is not None and resumed.attributes["taskloom.resumed"] is True
    assert [link.context.span_id for link in resumed.links] == [first.context.span_id]
    assert [link.context.trace_id for link in resumed.links] == [first.context.trace_id]


async def test_secrets_never_reach_attributes_or_status(captured: Captured) -> None:
    """A failing call whose error text holds a secret: the span's status and the
    captured messages are masked; the secret appears nowhere in any span."""
    secret = "sk-live-CANARY-0123456789abcdef"
    redactor = Redactor()
    redactor.add(secret)
    content = Captured(capture_content=True)
    fake = FakeExecutor(reply=lambda r: f"echo {secret}")
    fake.fail(f"use {secret}", InvalidRequest(f"bad key {secret}"))
    engine, _ = make_engine(fake, telemetry=content.telemetry, redactor=redactor)
    async with engine:
        await engine.run(pipeline({"id": "a", "prompt": "fine"}))
        with pytest.raises(StepFailed):
            await engine.run(pipeline({"id": "b", "prompt": f"use {secret}"}))
    seen = repr([(s.name, s.attributes, s.status.description, s.events) for s in content.spans])
    assert secret not in seen
    (chat_ok, chat_bad) = content.named("chat")
    assert chat_ok.attributes is not None and "gen_ai.output.messages" in chat_ok.attributes
    assert chat_bad.status.status_code is StatusCode.ERROR
    assert chat_bad.attributes is not None and chat_bad.attributes["error.type"] == "InvalidRequest"


async def test_content_is_not_captured_unless_asked(captured: Captured) -> None:
    """By default no message content is put on spans."""
    engine, _ = make_engine(telemetry=captured.telemetry)
    async with engine:
        await engine.run(pipeline({"id": "a", "prompt": "private words"}))
    for span in captured.spans:
        assert "private words" not in repr(span.attributes)


async def test_streamed_calls_are_spans_too(captured: Captured) -> None:
    """A streaming step's call is a chat span closed with its finish reason and usage."""
    engine, _ = make_engine(telemetry=captured.telemetry)
    async with engine:
        await engine.run(pipeline({"id": "a", "prompt": "stream me", "stream": True}))
    (chat,) = captured.named("chat")
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert chat.attributes["gen_ai.usage.output_tokens"] == 1


class NamedModelExecutor(FakeExecutor):
    """A FakeExecutor whose replies name the model that answered (``<request>-0613``)."""

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        result = await super().complete(request)
        return attrs.evolve(result, model=f"{request.model}-0613")


async def test_each_call_gets_its_own_settings_and_models(captured: Captured) -> None:
    """Calls with other settings or models get their own span attributes and metric
    points (nothing of one call's leaks into another's), and a failed call has a
    duration point with its error.type and no token points."""
    fake = NamedModelExecutor()
    fake.fail("three", InvalidRequest("no"))
    engine, _ = make_engine(fake, telemetry=captured.telemetry)
    steps = (
        {"id": "a", "prompt": "one", "model": "m-1", "temperature": 0.5},
        {"id": "b", "prompt": "two", "model": "m-2", "temperature": 0.1},
        {"id": "c", "prompt": "one again", "model": "m-1", "temperature": 0.5},
    )
    async with engine:
        await engine.run(pipeline(*steps))
        with pytest.raises(StepFailed):
            await engine.run(pipeline({"id": "d", "prompt": "three", "model": "m-1"}))
    chats = [dict(s.attributes or {}) for s in captured.named("chat")]
    assert [(c["gen_ai.request.model"], c.get("gen_ai.request.temperature")) for c in chats] == [
        ("m-1", 0.5),
        ("m-2", 0.1),
        ("m-1", 0.5),
        ("m-1", None),
    ]
    assert [c.get("gen_ai.response.model") for c in chats] == [
        "m-1-0613",
        "m-2-0613",
        "m-1-0613",
        None,
    ]
    durations = {
        (
            p.attributes["gen_ai.request.model"],
            p.attributes.get("gen_ai.response.model"),
            p.attributes.get("error.type"),
        ): p.count
        for p in captured.metric("gen_ai.client.operation.duration")
    }
    assert durations == {
        ("m-1", "m-1-0613", None): 2,
        ("m-2", "m-2-0613", None): 1,
        ("m-1", None, "InvalidRequest"): 1,
    }
    tokens = {
        (p.attributes["gen_ai.response.model"], p.attributes["gen_ai.token.type"]): p.sum
        for p in captured.metric("gen_ai.client.token.usage")
    }
    assert tokens == {
        ("m-1-0613", "input"): 2,
        ("m-1-0613", "output"): 2,
        ("m-2-0613", "input"): 1,
        ("m-2-0613", "output"): 1,
    }


async def test_a_dropped_span_gets_no_reply_attributes_but_the_metrics_count() -> None:
    """When the application's sampler drops the spans, the reply's attributes are not
    built (its content is never serialized nor masked), and the call still counts in
    the metrics."""
    spans_out = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(spans_out))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        tracer_provider=provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        capture_content=True,
    )
    fake = FakeExecutor(reply=lambda r: "REPLY-CANARY")
    engine, _ = make_engine(fake, telemetry=telemetry)
    masked: list[str] = []
    telemetry.bind(lambda text: masked.append(text) or text)
    async with engine:
        await engine.run(pipeline({"id": "a", "prompt": "x"}))
    assert spans_out.get_finished_spans() == ()
    assert not [text for text in masked if "REPLY-CANARY" in text]
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"}


def _services(telemetry: Telemetry | None) -> Any:
    return SimpleNamespace(durability="sync", telemetry=telemetry)


def test_a_leaf_without_telemetry_is_its_own_coroutine(captured: Captured) -> None:
    """Telemetry off, ``run_leaf`` hands back the leaf's own coroutine (no wrapper frame
    per step); on, the step's span wraps it."""
    off = LeafRunner(run_id="r", services=_services(None), emit=lambda event: None)
    leaf = off.run_leaf(Any, Any, step_id="a", item=None)
    assert isinstance(leaf, Coroutine) and leaf.cr_code is LeafRunner._run_leaf.__code__
    leaf.close()
    on = LeafRunner(run_id="r", services=_services(captured.telemetry), emit=lambda event: None)
    traced = on.run_leaf(Any, Any, step_id="a", item=None)
    assert isinstance(traced, Coroutine) and traced.cr_code is Telemetry.trace_step.__code__
    traced.cr_frame.f_locals["body"].close()  # the leaf's coroutine, never started
    traced.close()


def test_global_providers_are_used_by_default() -> None:
    """Telemetry() takes the application's global tracer provider."""
    tracer = Telemetry().tracer
    assert tracer is not None
    assert trace.get_tracer_provider() is not None


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_disabled_telemetry_never_imports_opentelemetry() -> None:
    """An engine without telemetry runs a pipeline without importing opentelemetry."""
    done = _python(
        "import asyncio, sys\n"
        "from taskloom.adapters.scripted import ScriptedExecutor\n"
        "from taskloom.sdk import Engine, ExecutorRegistry\n"
        "async def go():\n"
        "    reg = ExecutorRegistry(); reg.register('m', ScriptedExecutor())\n"
        "    async with Engine(registry=reg) as e:\n"
        "        await e.run({'taskloom': 'pipeline/v1', 'name': 'p',\n"
        "                     'steps': [{'id': 'a', 'prompt': 'x', 'executor': 'm'}]})\n"
        "asyncio.run(go())\n"
        "print('opentelemetry' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_telemetry_without_the_extra_says_how_to_get_it() -> None:
    """Engine(telemetry=True) without opentelemetry is a UsageError naming the extra."""
    done = _python(
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "from taskloom.sdk import Engine\n"
        "try:\n"
        "    Engine(telemetry=True)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("UsageError")
    assert "pip install 'taskloom[otel]'" in done.stdout


def _config(tmp_path: Path, telemetry: str) -> Path:
    path = tmp_path / "taskloom.toml"
    path.write_text(
        '[storage]\nkind = "memory"\n\n[executors.default]\ntype = "scripted"\n\n' + telemetry,
        encoding="utf-8",
    )
    return path


def test_from_config_reads_the_telemetry_table(tmp_path: Path) -> None:
    """``[telemetry] enabled = true`` gives Engine.from_config a Telemetry; absent or
    false gives none; capture_content is carried over."""
    on = Engine.from_config(
        _config(tmp_path, "[telemetry]\nenabled = true\ncapture_content = true\n")
    )
    assert on.telemetry is not None and on.telemetry.capture_content is True
    off = Engine.from_config(_config(tmp_path, ""))
    assert off.telemetry is None
    assert Engine.from_config(_config(tmp_path, "[telemetry]\nenabled = false\n")).telemetry is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[telemetry]\nenabled = 1\n", "telemetry.enabled must be true or false"),
        ("[telemetry]\nexporter = 'otlp'\n", "unknown key(s) exporter in [telemetry]"),
    ],
)
def test_bad_telemetry_tables_are_usage_errors(tmp_path: Path, table: str, message: str) -> None:
    """A wrong [telemetry] table is a UsageError naming the key, in from_config and the
    CLI's reader alike."""
    path = _config(tmp_path, table)
    with pytest.raises(UsageError) as caught:
        Engine.from_config(path)
    assert message in str(caught.value)
    with pytest.raises(UsageError) as caught_cli:
        load_config(str(path))
    assert message in str(caught_cli.value)


def test_the_cli_config_carries_the_telemetry_table(tmp_path: Path) -> None:
    """The CLI's configuration shows the telemetry settings (``config show``)."""
    config = load_config(str(_config(tmp_path, "[telemetry]\nenabled = true\n")))
    assert config.telemetry == {"enabled": True, "capture_content": False}
    assert config.as_dict()["telemetry"] == {"enabled": True, "capture_content": False}
