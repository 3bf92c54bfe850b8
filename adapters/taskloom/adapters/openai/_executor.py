"""The OpenAI chat-completions protocol, as OpenAI and compatible servers speak it.

Compatible servers (vLLM, Ollama, llama.cpp, LM Studio, gateways, llm-katan)
differ in small ways this module tolerates: ``usage`` may come on the chunk
that carries the finish reason or on a separate last chunk whose ``choices`` is
empty (OpenAI's own ``stream_options.include_usage``); ``finish_reason`` may
be null; an error may arrive inside a 200 body or inside the stream; a stream
may end after its finish reason without ``data: [DONE]`` (accepted: the reply is
complete). A refusal (``message.refusal``, or ``delta.refusal`` pieces in a
stream) is ``Refused`` carrying its text, never an empty success.
"""

from __future__ import annotations

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
    MalformedResponse,
    Message,
    Secret,
    SecretStore,
    Usage,
    UsageError,
)

MaxTokensField = Literal["max_completion_tokens", "max_tokens"]
MAX_TOKENS_FIELDS: tuple[str, ...] = ("max_completion_tokens", "max_tokens")

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "refusal": "refusal",
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


def _message(message: Message) -> dict[str, str]:
    body = {"role": message.role, "content": message.content}
    if message.name is not None:
        body["name"] = message.name
    if message.tool_call_id is not None:
        # OpenAI refuses a 'tool' message without it; some compatible servers do not
        # need it, so a message without one is sent as it is and the server decides
        body["tool_call_id"] = message.tool_call_id
    return body


class OpenAIExecutor(HTTPExecutor):
    """An executor for any OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` includes the API version as in OpenAI's own SDK
    (``https://api.openai.com/v1``, ``http://localhost:11434/v1`` for Ollama);
    the key, when given, goes in ``Authorization: Bearer``. A JSON response
    format becomes ``{"type": "json_object"}``, or ``json_schema`` when the
    request carries a schema, sent with ``strict: true`` (OpenAI's structured
    outputs: the reply is decoded to satisfy the schema). ``max_tokens`` is sent
    as ``max_tokens_field``: ``max_completion_tokens`` by default, which current
    OpenAI models require (they reject ``max_tokens``); set ``"max_tokens"`` for
    older compatible servers that know only that name. ``tool`` messages carry
    their ``tool_call_id``. Streams ask for ``stream_options.include_usage`` so
    that usage is reported when streaming.
    """

    provider = "openai"
    path = "/chat/completions"
    finish_ends_stream = True

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None = None,
        api_key: Secret | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        total_timeout_s: float = 120.0,
        max_connections: int = 100,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_tokens_field: MaxTokensField = "max_completion_tokens",
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
        if max_tokens_field not in MAX_TOKENS_FIELDS:
            raise UsageError(
                f"OpenAIExecutor: max_tokens_field must be 'max_completion_tokens' (current "
                f"OpenAI models) or 'max_tokens' (older compatible servers), "
                f"not {max_tokens_field!r}"
            )
        self._max_tokens_field = max_tokens_field

    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"authorization": f"Bearer {self._api_key.reveal()}"}

    def _payload(self, request: CompletionRequest, model: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
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
                    "json_schema": {"name": "response", "strict": True, "schema": fmt.json_schema},
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
        refusal = opt_str(message.get("refusal"), "$.choices[0].message.refusal")
        finish = _finish(choice.get("finish_reason"), "$.choices[0].finish_reason")
        return Parsed(
            text=text,
            finish_reason="refusal" if refusal else (finish or "other"),
            usage=_usage(reply.get("usage"), "$.usage") or Usage(),
            model=opt_str(reply.get("model"), "$.model"),
            refusal=refusal or None,
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
        fields = expect_object(delta, "event.choices[0].delta")
        refusal = opt_str(fields.get("refusal"), "event.choices[0].delta.refusal")
        if refusal:
            if state.refusal is None:
                state.refusal = []
            state.refusal.append(refusal)
        return opt_str(fields.get("content"), "event.choices[0].delta.content")


async def from_config(
    settings: Mapping[str, Any], secrets: SecretStore | None = None
) -> OpenAIExecutor:
    """An ``OpenAIExecutor`` from a ``[executors.NAME]`` table of ``taskloom.toml``.

    ``api_key`` must be a secret reference (``{"secret": "openai_api_key"}``),
    resolved here in ``secrets``; a literal key is refused.
    """
    kwargs = await settings_to_kwargs(
        settings, secrets, type_name="openai", extra=frozenset({"max_tokens_field"})
    )
    return OpenAIExecutor(**kwargs)
