"""Spans for runs, steps and LLM calls, and the GenAI client metrics.

A run is a span (``taskloom.run <pipeline>``) that is the child of whatever span
was current where the run was started; each step and each map item is a child span
(``taskloom.step <id>``); each LLM call is a CLIENT span ``chat <model>`` with the
GenAI attributes (``genai``), inside the step that made it. A resumed run is a new
trace linked to the run's first one: the first span's context is kept in storage
(namespace ``telemetry``, one small record per traced run).

Spans end with status ERROR and an ``error.type`` on failure; their descriptions go
through the engine's redactor. Nothing here may break a run: a failing exporter is
the SDK's business (its processors catch and log), and reading or writing the
trace link is best effort.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from taskloom.contracts import (
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    LLMExecutor,
    RunCancelled,
    StorageAdapter,
    UsageError,
)
from taskloom.sdk._telemetry import genai

try:
    from opentelemetry import metrics, trace
    from opentelemetry.context import attach as _attach
    from opentelemetry.context import detach as _detach
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace import set_span_in_context as _in_context

    _CLIENT = SpanKind.CLIENT
except ImportError:  # pragma: no cover - the otel extra is absent
    trace = None  # type: ignore[assignment]

_log = logging.getLogger("taskloom.telemetry")
T = TypeVar("T")

LINK_NAMESPACE = "telemetry"
"""Where a traced run keeps its first span's context, so a resume can link to it."""
STEP_ID = "taskloom.step_id"
ITEM = "taskloom.item"
_CACHE_LIMIT = 256
"""Most distinct call settings (or provider and models) whose attributes are kept."""


class Telemetry:
    """Traces and metrics for one engine. Build it only when telemetry is wanted.

    ``tracer_provider`` and ``meter_provider`` default to the application's global
    ones (``opentelemetry.trace.set_tracer_provider``...). ``capture_content`` adds
    the messages of each call (masked) to its span; off by default.

    A step costs what the OpenTelemetry SDK costs for its two spans and three
    histogram records, and little more: a span starts with its attributes in one
    dict and is made current by one ``attach`` (no context-manager layers); the
    attributes that depend only on a call's settings, provider and models are built
    once and reused; a span the sampler dropped gets no reply attributes (nor its
    content serialized and masked); error text is formatted only on failure.
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        capture_content: bool = False,
    ) -> None:
        if trace is None:
            raise UsageError(
                "telemetry needs the 'otel' extra (opentelemetry-api): "
                "pip install 'taskloom[otel]', or leave telemetry disabled"
            )
        from taskloom.sdk import __version__

        self.tracer = trace.get_tracer("taskloom", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("taskloom", __version__, meter_provider=meter_provider)
        self.token_usage = meter.create_histogram(
            genai.TOKEN_USAGE_METRIC,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(genai.TOKEN_BUCKETS),
        )
        self.duration = meter.create_histogram(
            genai.DURATION_METRIC,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(genai.DURATION_BUCKETS),
        )
        self.capture_content = capture_content
        self.redact: Callable[[str], str] = _same
        self._traced: dict[int, tuple[LLMExecutor, TracedExecutor]] = {}
        self._metric_cache: dict[tuple[str, str | None, str | None], _MetricSets] = {}

    def bind(self, redact: Callable[[str], str]) -> None:
        """Mask every text an exporter could see with ``redact`` (the engine's)."""
        self.redact = redact

    # --- runs and steps ---------------------------------------------------------

    async def trace_run(
        self,
        storage: StorageAdapter | None,
        *,
        run_id: str,
        pipeline: str,
        resumed: bool,
        body: Awaitable[T],
    ) -> T:
        """Await ``body`` (the run) inside the run's span."""
        links = []
        if resumed and storage is not None:
            first = await _load_link(storage, run_id)
            if first is not None:
                links.append(Link(first, {"taskloom.link": "first_run"}))
        attributes: dict[str, Any] = {
            "taskloom.run_id": run_id,
            "taskloom.pipeline": pipeline,
            "taskloom.resumed": resumed,
        }
        span = self.tracer.start_span(
            f"taskloom.run {pipeline}", attributes=attributes, links=links
        )
        token = _attach(_in_context(span))
        try:
            if not resumed and storage is not None:
                await _save_link(storage, run_id, span.get_span_context())
            result = await body
            status = getattr(result, "status", None)
            if isinstance(status, str):
                span.set_attribute("taskloom.run.status", status)
            return result
        except BaseException as exc:
            self._failed(span, exc)
            raise
        finally:
            _detach(token)
            span.end()

    async def trace_step(self, step_id: str, item: int | None, body: Awaitable[T]) -> T:
        """Await ``body`` (one step or map item) inside its span, the current one meanwhile
        (so that spans an LLM call or a plugin step makes are its children)."""
        if item is None:
            span = self.tracer.start_span("taskloom.step " + step_id, attributes={STEP_ID: step_id})
        else:
            span = self.tracer.start_span(
                f"taskloom.step {step_id}[{item}]", attributes={STEP_ID: step_id, ITEM: item}
            )
        token = _attach(_in_context(span))
        try:
            return await body
        except BaseException as exc:
            self._failed(span, exc)
            raise
        finally:
            _detach(token)
            span.end()

    def _failed(self, span: Any, exc: BaseException) -> None:
        """Mark ``span`` cancelled, or failed with the error's type and masked text."""
        if not span.is_recording():
            return
        if isinstance(exc, RunCancelled | GeneratorExit) or type(exc).__name__ == "CancelledError":
            span.set_attribute("taskloom.cancelled", True)
            return
        span.set_attribute(genai.ERROR_TYPE, type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, self.redact(str(exc))[:500]))

    # --- LLM calls -------------------------------------------------------------

    def traced(self, executor: LLMExecutor, executor_id: str) -> LLMExecutor:
        """``executor`` wrapped so that each call is a GenAI span (made once per executor)."""
        known = self._traced.get(id(executor))
        if known is not None and known[0] is executor:
            return known[1]
        wrapped = TracedExecutor(executor, genai.provider_name(executor, executor_id), self)
        self._traced[id(executor)] = (executor, wrapped)
        return wrapped

    def _metric_sets(
        self, provider: str, request_model: str | None, response_model: str | None
    ) -> _MetricSets:
        """The attribute sets of a call's metric points (duration, input and output
        tokens): built once per provider and models, then shared (never mutated)."""
        key = (provider, request_model, response_model)
        known = self._metric_cache.get(key)
        if known is not None:
            return known
        common: dict[str, Any] = {genai.OPERATION: "chat", genai.PROVIDER: provider}
        if request_model is not None:
            common[genai.REQUEST_MODEL] = request_model
        if response_model is not None:
            common[genai.RESPONSE_MODEL] = response_model
        made = _MetricSets(
            common,
            {**common, genai.TOKEN_TYPE: "input"},
            {**common, genai.TOKEN_TYPE: "output"},
        )
        if len(self._metric_cache) >= _CACHE_LIMIT:  # models named by replies: keep it bounded
            self._metric_cache.clear()
        self._metric_cache[key] = made
        return made

    def record_call(
        self,
        provider: str,
        request_model: str | None,
        seconds: float,
        result: CompletionResult | None,
        error: BaseException | None,
    ) -> None:
        """The two GenAI client metrics of one call (a failed one: its duration only)."""
        if error is not None:
            common = self._metric_sets(provider, request_model, None).duration
            self.duration.record(seconds, {**common, genai.ERROR_TYPE: type(error).__name__})
            return
        assert result is not None
        sets = self._metric_sets(provider, request_model, result.model)
        self.duration.record(seconds, sets.duration)
        usage = result.usage
        self.token_usage.record(usage.prompt_tokens, sets.input_tokens)
        self.token_usage.record(usage.completion_tokens, sets.output_tokens)


class _MetricSets(NamedTuple):
    """The attributes of one call's duration point and its two token points."""

    duration: dict[str, Any]
    input_tokens: dict[str, Any]
    output_tokens: dict[str, Any]


class TracedExecutor:
    """An ``LLMExecutor`` whose calls are GenAI spans; everything else is the inner one's."""

    def __init__(self, inner: LLMExecutor, provider: str, telemetry: Telemetry) -> None:
        self._inner = inner
        self._provider = provider
        self._tel = telemetry
        self._starts: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _start(self, request: CompletionRequest) -> tuple[str, dict[str, Any]]:
        """The chat span's name and starting attributes. Without captured content they
        depend on the request's settings only, so they are built once per settings."""
        tel = self._tel
        if tel.capture_content:
            attributes = genai.request_attributes(
                request, self._provider, capture_content=True, redact=tel.redact
            )
            return (f"chat {request.model}" if request.model else "chat"), attributes
        key = (
            request.model,
            request.temperature,
            request.top_p,
            request.max_tokens,
            request.seed,
            request.stop,
        )
        known = self._starts.get(key)
        if known is None:
            attributes = genai.request_attributes(
                request, self._provider, capture_content=False, redact=tel.redact
            )
            known = (f"chat {request.model}" if request.model else "chat"), attributes
            if len(self._starts) >= _CACHE_LIMIT:
                self._starts.clear()
            self._starts[key] = known
        return known

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """The inner executor's reply, inside a ``chat`` span (the current one meanwhile)."""
        tel = self._tel
        name, attributes = self._start(request)
        span = tel.tracer.start_span(name, kind=_CLIENT, attributes=attributes)
        token = _attach(_in_context(span))
        started = time.perf_counter()
        try:
            result = await self._inner.complete(request)
        except BaseException as exc:
            tel.record_call(self._provider, request.model, time.perf_counter() - started, None, exc)
            tel._failed(span, exc)
            raise
        else:
            tel.record_call(
                self._provider, request.model, time.perf_counter() - started, result, None
            )
            if span.is_recording():
                span.set_attributes(
                    genai.result_attributes(
                        result, capture_content=tel.capture_content, redact=tel.redact
                    )
                )
            return result
        finally:
            _detach(token)
            span.end()

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """The inner executor's chunks, inside a ``chat`` span closed by the last one."""
        tel = self._tel
        name, attributes = self._start(request)
        span = tel.tracer.start_span(name, kind=_CLIENT, attributes=attributes)
        token = _attach(_in_context(span))
        started = time.perf_counter()
        parts: list[str] = []
        finish: Any = None
        usage: Any = None
        try:
            async for chunk in self._inner.stream(request):
                parts.append(chunk.delta)
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
        except BaseException as exc:
            tel.record_call(self._provider, request.model, time.perf_counter() - started, None, exc)
            tel._failed(span, exc)
            raise
        else:
            fields: dict[str, Any] = {"text": "".join(parts), "finish_reason": finish or "stop"}
            if usage is not None:
                fields["usage"] = usage
            result = CompletionResult(**fields)
            tel.record_call(
                self._provider, request.model, time.perf_counter() - started, result, None
            )
            if span.is_recording():
                span.set_attributes(
                    genai.result_attributes(
                        result, capture_content=tel.capture_content, redact=tel.redact
                    )
                )
        finally:
            _detach(token)
            span.end()

    async def aclose(self) -> None:
        """Close the inner executor."""
        await self._inner.aclose()


def _same(text: str) -> str:
    return text


async def _save_link(storage: StorageAdapter, run_id: str, context: Any) -> None:
    data = {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
    try:
        await storage.put(LINK_NAMESPACE, run_id, json.dumps(data).encode())
    except Exception:  # best effort: a lost link never fails a run
        _log.warning("could not store the trace link of run %s", run_id, exc_info=True)


async def _load_link(storage: StorageAdapter, run_id: str) -> Any:
    try:
        record = await storage.get(LINK_NAMESPACE, run_id)
        if record is None:
            return None
        data = json.loads(record.value)
        return SpanContext(
            trace_id=int(data["trace_id"], 16),
            span_id=int(data["span_id"], 16),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except Exception:
        _log.warning("could not read the trace link of run %s", run_id, exc_info=True)
        return None
