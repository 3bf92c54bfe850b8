"""What a protocol's hooks hand back to the executor: a parsed reply or stream progress.

The protocol modules build these, and ``HTTPExecutor`` turns them into the
contract's CompletionResult and CompletionChunk.
"""

from __future__ import annotations

from typing import Literal

from taskloom.contracts import Usage

FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "error", "other"]


class StreamState:
    """What a protocol's event handler learned so far about a streamed reply."""

    __slots__ = ("done", "finish_reason", "model", "usage")

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.model: str | None = None


class Parsed:
    """A decoded non-streamed reply, before latency is attached."""

    __slots__ = ("finish_reason", "model", "text", "usage")

    def __init__(
        self, *, text: str, finish_reason: FinishReason, usage: Usage, model: str | None
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage
        self.model = model
