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

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

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
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError:  # pragma: no cover - the otel extra is absent
    trace = None  # type: ignore[assignment]

_log = logging.getLogger("taskloom.telemetry")
T = TypeVar("T")

LINK_NAMESPACE = "telemetry"
"""Where a traced run keeps its first span's context, so a resume can link to it."""


class Telemetry:
    """Traces and metrics for one engine. Build it only when telemetry is wanted.

    ``tracer_provider`` and ``meter_provider`` default to the application's global
    ones (``opentelemetry.trace.set_tracer_provider``...). ``capture_content`` adds
    the messages of each call (masked) to its span; off by default.
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
        attributes = {
            "taskloom.run_id": run_id,
            "taskloom.pipeline": pipeline,
            "taskloom.resumed": resumed,
        }
        with self._span(f"taskloom.run {pipeline}", attributes, links=links) as span:
            if not resumed and storage is not None:
                await _save_link(storage, run_id, span.get_span_context())
            result = await body
            status = getattr(result, "status", None)
            if isinstance(status, str):
                span.set_attribute("taskloom.run.status", status)
            return result

    async def trace_step(self, step_id: str, item: int | None, body: Awaitable[T]) -> T:
        """Await ``body`` (one step or map item) inside its span."""
        attributes: dict[str, Any] = {"taskloom.step_id": step_id}
        name = f"taskloom.step {step_id}"
        if item is not None:
            attributes["taskloom.item"] = item
            name = f"{name}[{item}]"
        with self._span(name, attributes):
            return await body

    @contextlib.contextmanager
    def _span(
        self,
        name: str,
        attributes: dict[str, Any],
        *,
        kind: Any = None,
        links: list[Any] | None = None,
    ) -> Iterator[Any]:
        with self.tracer.start_as_current_span(
            name,
            kind=kind if kind is not None else SpanKind.INTERNAL,
            attributes=attributes,
            links=links or (),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                self._failed(span, exc)
                raise

    def _failed(self, span: Any, exc: BaseException) -> None:
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

    def record_call(
        self,
        attributes: dict[str, Any],
        seconds: float,
        result: CompletionResult | None,
        error: BaseException | None,
    ) -> None:
        """The two GenAI client metrics of one call."""
        common = {
            k: attributes[k]
            for k in (genai.OPERATION, genai.PROVIDER, genai.REQUEST_MODEL)
            if k in attributes
        }
        if result is not None and result.model is not None:
            common[genai.RESPONSE_MODEL] = result.model
        if error is not None:
            common[genai.ERROR_TYPE] = type(error).__name__
        self.duration.record(seconds, common)
        if result is not None:
            self.token_usage.record(
                result.usage.prompt_tokens, {**common, genai.TOKEN_TYPE: "input"}
            )
            self.token_usage.record(
                result.usage.completion_tokens, {**common, genai.TOKEN_TYPE: "output"}
            )


class TracedExecutor:
    """An ``LLMExecutor`` whose calls are GenAI spans; everything else is the inner one's."""

    def __init__(self, inner: LLMExecutor, provider: str, telemetry: Telemetry) -> None:
        self._inner = inner
        self._provider = provider
        self._tel = telemetry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _start(self, request: CompletionRequest) -> tuple[str, dict[str, Any]]:
        tel = self._tel
        attributes = genai.request_attributes(
            request, self._provider, capture_content=tel.capture_content, redact=tel.redact
        )
        return (f"chat {request.model}" if request.model else "chat"), attributes

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """The inner executor's reply, inside a ``chat`` span."""
        tel = self._tel
        name, attributes = self._start(request)
        started = time.perf_counter()
        with tel._span(name, attributes, kind=SpanKind.CLIENT) as span:
            try:
                result = await self._inner.complete(request)
            except BaseException as exc:
                tel.record_call(attributes, time.perf_counter() - started, None, exc)
                raise
            span.set_attributes(
                genai.result_attributes(
                    result, capture_content=tel.capture_content, redact=tel.redact
                )
            )
            tel.record_call(attributes, time.perf_counter() - started, result, None)
            return result

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """The inner executor's chunks, inside a ``chat`` span closed by the last one."""
        tel = self._tel
        name, attributes = self._start(request)
        started = time.perf_counter()
        parts: list[str] = []
        finish: Any = None
        usage: Any = None
        with tel._span(name, attributes, kind=SpanKind.CLIENT) as span:
            try:
                async for chunk in self._inner.stream(request):
                    parts.append(chunk.delta)
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
                    yield chunk
            except BaseException as exc:
                tel.record_call(attributes, time.perf_counter() - started, None, exc)
                raise
            fields: dict[str, Any] = {"text": "".join(parts), "finish_reason": finish or "stop"}
            if usage is not None:
                fields["usage"] = usage
            result = CompletionResult(**fields)
            span.set_attributes(
                genai.result_attributes(
                    result, capture_content=tel.capture_content, redact=tel.redact
                )
            )
            tel.record_call(attributes, time.perf_counter() - started, result, None)

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
