"""The OpenAI chat-completions protocol, as OpenAI and compatible servers speak it.

Compatible servers (vLLM, Ollama, llama.cpp, LM Studio, gateways, llm-katan)
differ in small ways this module tolerates: ``usage`` may come on the chunk
that carries the finish reason or on a separate last chunk whose ``choices`` is
empty (OpenAI's own ``stream_options.include_usage``); ``finish_reason`` may
be null; an error may arrive inside a 200 body or inside the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskloom.adapters._http.common import (
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
    MalformedResponse,
    SecretStore,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "error": "error",
}


def _finish(value: object, path: str) -> FinishReason | None:
    reason = opt_str(value, path)
    if reason is None:
        return None
    return _FINISH.get(reason, "other")


def _usage(value: object, path: str) -> Usage | None:
    if value is None:
        return None
    usage = expect_object(value, path)
    return Usage(
        prompt_tokens=token_count(usage.get("prompt_tokens"), f"{path}.prompt_tokens"),
        completion_tokens=token_count(usage.get("completion_tokens"), f"{path}.completion_tokens"),
    )


def _message(role: str, content: str, name: str | None) -> dict[str, str]:
    if name is None:
        return {"role": role, "content": content}
    return {"role": role, "content": content, "name": name}


class OpenAIExecutor(HTTPExecutor):
    """An executor for any OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` includes the API version as in OpenAI's own SDK
    (``https://api.openai.com/v1``, ``http://localhost:11434/v1`` for Ollama);
    the key, when given, goes in ``Authorization: Bearer``. A JSON response
    format becomes ``{"type": "json_object"}``, or ``json_schema`` when the
    request carries a schema. ``max_tokens`` is sent as ``max_tokens``, the
    name every compatible server understands. Streams ask for
    ``stream_options.include_usage`` so that usage is reported when streaming.
    """

    provider = "openai"
    path = "/chat/completions"

    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"authorization": f"Bearer {self._api_key.reveal()}"}

    def _payload(self, request: CompletionRequest, model: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [_message(m.role, m.content, m.name) for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        fmt = request.response_format
        if fmt is not None and fmt.type == "json":
            if fmt.json_schema is None:
                body["response_format"] = {"type": "json_object"}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": fmt.json_schema},
                }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _refuse_error_body(self, data: Mapping[str, Any]) -> None:
        if "error" in data and "choices" not in data:
            raise error_from_stream_event(data, provider=self.provider, redactor=self._redactor)

    def _parse(self, data: Any) -> Parsed:
        reply = expect_object(data, "$")
        self._refuse_error_body(reply)
        choices = expect_list(require(reply, "choices", "$"), "$.choices")
        if not choices:
            raise MalformedResponse("$.choices is empty: the reply holds no answer")
        choice = expect_object(choices[0], "$.choices[0]")
        message = expect_object(require(choice, "message", "$.choices[0]"), "$.choices[0].message")
        text = opt_str(message.get("content"), "$.choices[0].message.content") or ""
        finish = _finish(choice.get("finish_reason"), "$.choices[0].finish_reason")
        return Parsed(
            text=text,
            finish_reason=finish or "other",
            usage=_usage(reply.get("usage"), "$.usage") or Usage(),
            model=opt_str(reply.get("model"), "$.model"),
        )

    def _on_event(self, event: ServerSentEvent, state: StreamState) -> str | None:
        if event.data == "[DONE]":
            state.done = True
            return None
        chunk = expect_object(decode_json(event.data, "an event of the openai stream"), "event")
        self._refuse_error_body(chunk)
        usage = _usage(chunk.get("usage"), "event.usage")
        if usage is not None:
            state.usage = usage
        choices = expect_list(chunk.get("choices") or [], "event.choices")
        if not choices:
            return None
        choice = expect_object(choices[0], "event.choices[0]")
        finish = _finish(choice.get("finish_reason"), "event.choices[0].finish_reason")
        if finish is not None:
            state.finish_reason = finish
        delta = choice.get("delta")
        if delta is None:
            return None
        return opt_str(
            expect_object(delta, "event.choices[0].delta").get("content"),
            "event.choices[0].delta.content",
        )


async def from_config(
    settings: Mapping[str, Any], secrets: SecretStore | None = None
) -> OpenAIExecutor:
    """An ``OpenAIExecutor`` from a ``[executors.NAME]`` table of ``taskloom.toml``.

    ``api_key`` must be a secret reference (``{"secret": "openai_api_key"}``),
    resolved here in ``secrets``; a literal key is refused.
    """
    kwargs = await settings_to_kwargs(settings, secrets, type_name="openai")
    return OpenAIExecutor(**kwargs)
