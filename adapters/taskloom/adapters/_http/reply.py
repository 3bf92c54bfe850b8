"""What a protocol's hooks hand back to the executor: a parsed reply or stream progress.

The protocol modules build these, and ``HTTPExecutor`` turns them into the
contract's CompletionResult and CompletionChunk.
"""

from __future__ import annotations

from taskloom.contracts import Usage
from taskloom.contracts._llm import FinishReason

__all__ = ["FinishReason", "Parsed", "StreamState"]


class StreamState:
    """What a protocol's event handler learned so far about a streamed reply."""

    __slots__ = ("done", "finish_reason", "model", "refusal", "usage")

    def __init__(self) -> None:
        self.done = False
        self.refusal: list[str] | None = None
        """The pieces of a refusal the model streamed instead of an answer."""
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.model: str | None = None


class Parsed:
    """A decoded non-streamed reply, before latency is attached."""

    __slots__ = ("finish_reason", "model", "refusal", "text", "usage")

    def __init__(
        self,
        *,
        text: str,
        finish_reason: FinishReason,
        usage: Usage,
        model: str | None,
        refusal: str | None = None,
    ) -> None:
        self.refusal = refusal
        """What the model said instead of answering, when it refused; None otherwise."""
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage
        self.model = model
