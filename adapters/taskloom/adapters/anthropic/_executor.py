"""The Anthropic Messages API (``POST /v1/messages``).

What differs from the chat-completions shape, and how taskloom's request maps:

* system messages go to the top-level ``system`` field (joined by blank lines);
  ``tool`` messages are sent as ``user`` turns, since taskloom's ``Message``
  carries no tool-use id to build a ``tool_result`` block from;
* ``max_tokens`` is required by the API: the request's, else the executor's
  ``default_max_tokens`` (1024);
* a JSON response format with a schema uses the API's structured outputs when
  the executor is told the server has them (``structured_output="native"``:
  ``output_config.format``; ``"beta"``: ``output_format`` with the
  ``structured-outputs-2025-11-13`` beta header); otherwise, and for JSON
  without a schema, an instruction (with the schema) is appended to ``system``;
* ``temperature`` and ``top_p`` are never sent together (current models refuse
  the pair): when a request has both, ``temperature`` is sent;
* there is no ``seed``: it is not sent;
* a ``refusal`` stop reason is ``Refused`` carrying whatever text came;
* text that arrives inside ``content_block_start`` is kept, as deltas are;
* prompt tokens are ``input_tokens`` plus the cache-creation and cache-read
  tokens, so that usage counts every token the provider billed as input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from taskloom.adapters._http.common import (
    MAX_RESPONSE_BYTES,
    FinishReason,
    HTTPExecutor,
    Parsed,
    ServerSentEvent,
    StreamState,
    decode_json,
    error_from_stream_event,
    expect_list,
    expect_object,
    opt_str,
    require,
    settings_to_kwargs,
    token_count,
)
from taskloom.contracts import (
    CompletionRequest,
    InvalidRequest,
    MalformedResponse,
    ResponseFormat,
    Secret,
    SecretStore,
    Usage,
    UsageError,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
STRUCTURED_OUTPUTS_BETA = "structured-outputs-2025-11-13"
StructuredOutput = Literal["prompt", "native", "beta"]
STRUCTURED_OUTPUTS: tuple[str, ...] = ("prompt", "native", "beta")
JSON_INSTRUCTION = (
    "Reply with one JSON value only: no prose before or after it and no Markdown code fences."
)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "refusal",
}


def _finish(value: object, path: str) -> FinishReason | None:
    reason = opt_str(value, path)
    if reason is None:
        return None
    return _FINISH.get(reason, "other")


def _input_tokens(usage: Mapping[str, Any], path: str) -> int:
    return sum(
        token_count(usage.get(key), f"{path}.{key}")
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def json_instruction(fmt: ResponseFormat) -> str:
    """The system text that stands in for a JSON mode the API does not have."""
    if fmt.json_schema is None:
        return JSON_INSTRUCTION
    schema = json.dumps(fmt.json_schema, sort_keys=True)
    return f"{JSON_INSTRUCTION} It must satisfy this JSON Schema: {schema}"


class AnthropicExecutor(HTTPExecutor):
    """An executor for Anthropic's Messages API (and servers that speak it).

    ``base_url`` is the host without the version (``https://api.anthropic.com``,
    as in Anthropic's SDK); the key goes in ``x-api-key`` and the API version in
    ``anthropic-version``. See the module docstring for how requests map.
    """

    provider = "anthropic"
    path = "/v1/messages"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        api_key: Secret | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 120.0,
        max_connections: int = 100,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        default_max_tokens: int = 1024,
        anthropic_version: str = DEFAULT_VERSION,
        structured_output: StructuredOutput = "prompt",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            model=model,
            api_key=api_key,
            headers=headers,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            total_timeout_s=total_timeout_s,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            transport=transport,
        )
        if (
            isinstance(default_max_tokens, bool)
            or not isinstance(default_max_tokens, int)
            or default_max_tokens < 1
        ):
            raise UsageError("AnthropicExecutor: default_max_tokens must be an integer >= 1")
        if not isinstance(anthropic_version, str) or not anthropic_version:
            raise UsageError("AnthropicExecutor: anthropic_version must be a non-empty string")
        if structured_output not in STRUCTURED_OUTPUTS:
            raise UsageError(
                "AnthropicExecutor: structured_output must be 'prompt' (an instruction in the "
                "system prompt: any server), 'native' (output_config.format) or 'beta' "
                f"(output_format with the {STRUCTURED_OUTPUTS_BETA} header), "
                f"not {structured_output!r}"
            )
        self._default_max_tokens = default_max_tokens
        self._version = anthropic_version
        self._structured = structured_output

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self._version}
        if self._structured == "beta":
            headers["anthropic-beta"] = STRUCTURED_OUTPUTS_BETA
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.reveal()
        return headers

    def _payload(self, request: CompletionRequest, model: str, *, stream: bool) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system"]
        turns = [
            {"role": "assistant" if m.role == "assistant" else "user", "content": m.content}
            for m in request.messages
            if m.role != "system"
        ]
        if not turns:
            raise InvalidRequest(
                "anthropic: the Messages API needs at least one user or assistant message; "
                "add a prompt to the step"
            )
        fmt = request.response_format
        native: dict[str, Any] | None = None
        if fmt is not None and fmt.type == "json":
            if fmt.json_schema is not None and self._structured != "prompt":
                native = {"type": "json_schema", "schema": fmt.json_schema}
            else:
                system.append(json_instruction(fmt))
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens or self._default_max_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if native is not None and self._structured == "native":
            body["output_config"] = {"format": native}
        elif native is not None:
            body["output_format"] = native
        if request.temperature is not None:
            body["temperature"] = request.temperature
        elif request.top_p is not None:  # never both: current models refuse the pair
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if stream:
            body["stream"] = True
        return body

    def _refuse_error_body(self, data: Mapping[str, Any]) -> None:
        if data.get("type") == "error":
            raise error_from_stream_event(data, provider=self.provider, redactor=self._redactor)

    def _parse(self, data: Any) -> Parsed:
        reply = expect_object(data, "$")
        self._refuse_error_body(reply)
        blocks = expect_list(require(reply, "content", "$"), "$.content")
        texts: list[str] = []
        for i, raw in enumerate(blocks):
            block = expect_object(raw, f"$.content[{i}]")
            if block.get("type") == "text":
                texts.append(opt_str(block.get("text"), f"$.content[{i}].text") or "")
        usage_obj = reply.get("usage")
        usage = Usage()
        if usage_obj is not None:
            fields = expect_object(usage_obj, "$.usage")
            usage = Usage(
                prompt_tokens=_input_tokens(fields, "$.usage"),
                completion_tokens=token_count(fields.get("output_tokens"), "$.usage.output_tokens"),
            )
        finish = _finish(require(reply, "stop_reason", "$"), "$.stop_reason")
        text = "".join(texts)
        return Parsed(
            text=text,
            finish_reason=finish or "other",
            usage=usage,
            model=opt_str(reply.get("model"), "$.model"),
            refusal=text if finish == "refusal" else None,
        )

    def _on_event(self, event: ServerSentEvent, state: StreamState) -> str | None:
        payload = expect_object(
            decode_json(event.data, "an event of the anthropic stream"), "event"
        )
        kind = payload.get("type", event.event)
        if kind == "content_block_delta":
            delta = expect_object(require(payload, "delta", "event"), "event.delta")
            if delta.get("type") == "text_delta":
                return opt_str(require(delta, "text", "event.delta"), "event.delta.text")
            return None
        if kind == "content_block_start":
            block = expect_object(payload.get("content_block") or {}, "event.content_block")
            if block.get("type") == "text":
                return opt_str(block.get("text"), "event.content_block.text")
            return None
        if kind == "message_start":
            message = expect_object(require(payload, "message", "event"), "event.message")
            usage = expect_object(message.get("usage") or {}, "event.message.usage")
            state.usage = Usage(
                prompt_tokens=_input_tokens(usage, "event.message.usage"),
                completion_tokens=token_count(
                    usage.get("output_tokens"), "event.message.usage.output_tokens"
                ),
            )
            state.model = opt_str(message.get("model"), "event.message.model")
        elif kind == "message_delta":
            delta = expect_object(payload.get("delta") or {}, "event.delta")
            finish = _finish(delta.get("stop_reason"), "event.delta.stop_reason")
            if finish is not None:
                state.finish_reason = finish
            if finish == "refusal" and state.refusal is None:
                state.refusal = []
            usage = expect_object(payload.get("usage") or {}, "event.usage")
            self._update_usage(state, usage)
        elif kind == "message_stop":
            if state.usage is None:
                raise MalformedResponse(
                    "anthropic: the stream ended without message_start; not a Messages API stream"
                )
            state.done = True
        elif kind == "error":
            raise error_from_stream_event(payload, provider=self.provider, redactor=self._redactor)
        return None

    @staticmethod
    def _update_usage(state: StreamState, usage: Mapping[str, Any]) -> None:
        """message_delta's counts are cumulative: they replace what message_start said."""
        before = state.usage or Usage()
        prompt = before.prompt_tokens
        if usage.get("input_tokens") is not None:
            prompt = _input_tokens(usage, "event.usage")
        completion = before.completion_tokens
        if usage.get("output_tokens") is not None:
            completion = token_count(usage.get("output_tokens"), "event.usage.output_tokens")
        state.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)


_SETTINGS = frozenset({"default_max_tokens", "anthropic_version", "base_url", "structured_output"})


async def from_config(
    settings: Mapping[str, Any], secrets: SecretStore | None = None
) -> AnthropicExecutor:
    """An ``AnthropicExecutor`` from a ``[executors.NAME]`` table of ``taskloom.toml``.

    ``api_key`` must be a secret reference (``{"secret": "anthropic_api_key"}``),
    resolved here in ``secrets``; a literal key is refused. ``base_url``
    defaults to Anthropic's API.
    """
    kwargs = await settings_to_kwargs(settings, secrets, type_name="anthropic", extra=_SETTINGS)
    return AnthropicExecutor(**kwargs)
