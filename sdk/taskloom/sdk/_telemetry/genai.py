"""The OpenTelemetry GenAI semantic conventions, as taskloom fills them in.

Attribute names follow the GenAI conventions (``gen_ai.*``, development status as
of semantic conventions 1.37+): a chat call is a CLIENT span named ``chat {model}``
with the operation, provider, request settings, response model, finish reasons and
token usage. Message content is recorded only when asked (``capture_content``), and
always through the engine's redactor, so a secret value never reaches an exporter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs

from taskloom.contracts import CompletionRequest, CompletionResult, Usage

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_STOP = "gen_ai.request.stop_sequences"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION = "gen_ai.usage.cache_creation.input_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"

TOKEN_USAGE_METRIC = "gen_ai.client.token.usage"
DURATION_METRIC = "gen_ai.client.operation.duration"
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
"""The bucket boundaries the conventions advise for ``gen_ai.client.token.usage``."""
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
"""The bucket boundaries the conventions advise for ``gen_ai.client.operation.duration``."""

_PROVIDERS = {"OpenAIExecutor": "openai", "AnthropicExecutor": "anthropic"}

_ANY_CACHE_USAGE = (
    (USAGE_CACHE_READ, "cache_read_tokens"),
    (USAGE_CACHE_CREATION, "cache_creation_tokens"),
)
"""The cache-token counts a usage may report, by attribute and field name."""
_CACHE_USAGE = tuple(
    (name, field) for name, field in _ANY_CACHE_USAGE if field in attrs.fields_dict(Usage)
)
"""Those that ``Usage`` itself has (read from its fields: none is looked up per call
while it has none, and a field added to it is picked up); a subclass's are looked up."""


def provider_name(executor: object, executor_id: str) -> str:
    """``gen_ai.provider.name``: the executor's ``provider_name`` if it says one, the
    well-known name of taskloom's own executors, else the executor id."""
    declared = getattr(executor, "provider_name", None)
    if isinstance(declared, str) and declared:
        return declared
    return _PROVIDERS.get(type(executor).__name__, executor_id)


def request_attributes(
    request: CompletionRequest,
    provider: str,
    *,
    capture_content: bool,
    redact: Callable[[str], str],
) -> dict[str, Any]:
    """The attributes a chat span starts with."""
    attributes: dict[str, Any] = {OPERATION: "chat", PROVIDER: provider}
    if request.model is not None:
        attributes[REQUEST_MODEL] = request.model
    if request.temperature is not None:
        attributes[REQUEST_TEMPERATURE] = request.temperature
    if request.top_p is not None:
        attributes[REQUEST_TOP_P] = request.top_p
    if request.max_tokens is not None:
        attributes[REQUEST_MAX_TOKENS] = request.max_tokens
    if request.seed is not None:
        attributes[REQUEST_SEED] = request.seed
    if request.stop:
        attributes[REQUEST_STOP] = list(request.stop)
    if capture_content:
        messages = [
            {"role": m.role, "parts": [{"type": "text", "content": m.content}]}
            for m in request.messages
        ]
        attributes[INPUT_MESSAGES] = redact(json.dumps(messages, ensure_ascii=False))
    return attributes


def result_attributes(
    result: CompletionResult, *, capture_content: bool, redact: Callable[[str], str]
) -> dict[str, Any]:
    """The attributes a chat span ends with: response model, finish reason, usage."""
    usage = result.usage
    attributes: dict[str, Any] = {
        RESPONSE_FINISH_REASONS: [result.finish_reason],
        USAGE_INPUT: usage.prompt_tokens,
        USAGE_OUTPUT: usage.completion_tokens,
    }
    if result.model is not None:
        attributes[RESPONSE_MODEL] = result.model
    for name, field in _CACHE_USAGE if type(usage) is Usage else _ANY_CACHE_USAGE:
        value = getattr(usage, field, None)
        if isinstance(value, int) and value:
            attributes[name] = value
    if capture_content:
        output = [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": result.text}],
                "finish_reason": result.finish_reason,
            }
        ]
        attributes[OUTPUT_MESSAGES] = redact(json.dumps(output, ensure_ascii=False))
    return attributes
