"""OpenTelemetry traces and metrics of runs, steps and LLM calls (the ``otel`` extra).

``tracing.Telemetry`` is built only when telemetry is enabled (``Engine(telemetry=
True)`` or ``[telemetry] enabled = true``); it is the one place that imports
``opentelemetry``, so an engine without it pays nothing but an ``is None`` test per
step. It uses the application's global tracer and meter providers unless given
others. ``genai`` names the GenAI semantic-convention attributes and turns a request
and a reply into them. Imports ``taskloom.contracts`` only; the engine imports it.
"""
