"""Building a ScriptedExecutor from a ``[executors.NAME]`` table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskloom.adapters.scripted._executor import ScriptedExecutor
from taskloom.contracts import SecretStore, UsageError

_OPTIONS = {
    "replies",
    "latency_s",
    "chunk_size",
    "chunk_delay_s",
    "model",
    "cycle",
    "finish_reason",
}


def from_config(
    settings: Mapping[str, Any], secrets: SecretStore | None = None
) -> ScriptedExecutor:
    """Build a ScriptedExecutor from a config table (``type = "scripted"``)."""
    unknown = sorted(set(settings) - _OPTIONS)
    if unknown:
        raise UsageError(
            f"unknown option(s) {unknown} for a scripted executor; known: {sorted(_OPTIONS)}"
        )
    replies = settings.get("replies")
    if isinstance(replies, dict):
        if not all(isinstance(k, str) and isinstance(v, str | dict) for k, v in replies.items()):
            raise UsageError("replies as a table maps message texts to reply texts")
    elif replies is not None and (
        not isinstance(replies, list) or not all(isinstance(r, str | dict) for r in replies)
    ):
        raise UsageError("replies must be a list of texts (or JSON objects), or a table")
    options: dict[str, Any] = {k: v for k, v in settings.items() if k in _OPTIONS - {"replies"}}
    try:
        return ScriptedExecutor(replies, **options)
    except TypeError as exc:
        raise UsageError(f"invalid scripted executor settings: {exc}") from exc
