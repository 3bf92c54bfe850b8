"""The LLM executor contract: requests, results and chunks as data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

_v = attrs.validators

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal[
    "stop", "length", "content_filter", "tool_calls", "refusal", "error", "other"
]
FINISH_REASONS: tuple[str, ...] = (
    "stop",
    "length",
    "content_filter",
    "tool_calls",
    "refusal",
    "error",
    "other",
)
"""Why a reply ended, normalized over providers: ``stop`` (it was complete), ``length``
(cut off by ``max_tokens`` or the context window: the text is truncated),
``content_filter`` (cut by the provider's filter), ``tool_calls``, ``refusal`` (the
model declined), ``error``, ``other`` (a reason taskloom does not know)."""


def _opt_float(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@attrs.frozen(kw_only=True)
class Message:
    """One chat message."""

    role: Role = attrs.field(validator=_v.in_(("system", "user", "assistant", "tool")))
    content: str = attrs.field(validator=_v.instance_of(str))
    name: str | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(str)))
    tool_call_id: str | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(str)))
    """For a ``tool`` message: the id of the tool call it answers (OpenAI requires it)."""


@attrs.frozen(kw_only=True)
class ResponseFormat:
    """``text``, or ``json`` with an optional JSON Schema the reply must satisfy."""

    type: Literal["text", "json"] = attrs.field(default="text", validator=_v.in_(("text", "json")))
    json_schema: dict[str, Any] | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(dict))
    )


@attrs.frozen(kw_only=True)
class CompletionRequest:
    """Everything an executor needs for one chat completion."""

    messages: tuple[Message, ...] = attrs.field(
        converter=tuple, validator=_v.deep_iterable(_v.instance_of(Message))
    )
    model: str | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(str)))
    temperature: float | None = attrs.field(
        default=None, converter=_opt_float, validator=_v.optional(_v.instance_of(float))
    )
    top_p: float | None = attrs.field(
        default=None, converter=_opt_float, validator=_v.optional(_v.instance_of(float))
    )
    max_tokens: int | None = attrs.field(
        default=None, validator=_v.optional([_v.instance_of(int), _v.ge(1)])
    )
    stop: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=_v.deep_iterable(_v.instance_of(str))
    )
    seed: int | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(int)))
    response_format: ResponseFormat | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(ResponseFormat))
    )

    @property
    def deterministic(self) -> bool:
        """True when the same request should give the same reply (temperature 0 or a seed)."""
        return self.temperature == 0.0 or self.seed is not None


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts of one call (or a sum of calls)."""

    prompt_tokens: int = attrs.field(default=0, validator=[_v.instance_of(int), _v.ge(0)])
    completion_tokens: int = attrs.field(default=0, validator=[_v.instance_of(int), _v.ge(0)])

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


@attrs.frozen(kw_only=True)
class CompletionResult:
    """The reply to one request."""

    text: str = attrs.field(validator=_v.instance_of(str))
    finish_reason: FinishReason = attrs.field(default="stop", validator=_v.in_(FINISH_REASONS))
    usage: Usage = attrs.field(factory=Usage, validator=_v.instance_of(Usage))
    model: str | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(str)))
    latency_s: float = attrs.field(
        default=0.0, converter=_opt_float, validator=[_v.instance_of(float), _v.ge(0.0)]
    )


@attrs.frozen(kw_only=True)
class CompletionChunk:
    """One piece of a streamed reply; the last one carries finish reason and usage."""

    delta: str = attrs.field(validator=_v.instance_of(str))
    index: int = attrs.field(default=0, validator=[_v.instance_of(int), _v.ge(0)])
    finish_reason: FinishReason | None = attrs.field(
        default=None, validator=_v.optional(_v.in_(FINISH_REASONS))
    )
    usage: Usage | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(Usage)))


@runtime_checkable
class LLMExecutor(Protocol):
    """Something that answers chat completion requests.

    Invariants (each one checked by ``ExecutorConformance``):

    EX1 ``complete`` returns a ``CompletionResult`` with a finish reason from
        ``FINISH_REASONS``, non-negative usage and a latency >= 0.
    EX2 ``stream`` yields chunks with consecutive ``index`` from 0; their deltas
        joined are the reply's text; only the last chunk may carry a finish
        reason, and usage, when reported, comes on the last chunk.
    EX3 Failures are typed: a rate limit is ``RateLimited`` (``retry_after`` None
        or >= 0), a timeout ``ExecutorTimeout``, an outage ``ProviderUnavailable``
        (all ``retryable``); a refused request ``InvalidRequest`` and refused
        credentials ``AuthenticationFailed`` (neither retryable). No other
        exception type escapes. (HTTP executors also raise the permanent
        ``Refused`` for a model's refusal, ``QuotaExceeded`` for an empty account
        and ``RetryForbidden`` when the provider says not to retry.)
    EX4 Concurrent calls on one executor all succeed and do not mix replies.
    EX5 Closing a stream early (``aclose`` on its iterator) releases it and the
        executor keeps working.
    EX6 After ``aclose()`` calls raise ``UsageError``; ``aclose()`` is idempotent.
    """

    async def complete(self, request: CompletionRequest, /) -> CompletionResult:
        """Send ``request`` and return the whole reply, or raise a typed ``ExecutorError``."""

    def stream(self, request: CompletionRequest, /) -> AsyncIterator[CompletionChunk]:
        """Send ``request`` and yield the reply in chunks; the last carries the finish reason."""

    async def aclose(self) -> None:
        """Release connections and other resources (idempotent)."""
