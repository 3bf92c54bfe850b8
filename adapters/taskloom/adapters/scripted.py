"""A scripted LLM executor: deterministic replies, latency and failure injection.

For tests, demos and benchmarks; it needs no network and no model. With no
script it echoes the last user message, so a pipeline runs out of the box.
"""

from __future__ import annotations

from taskloom.adapters._scripted import Reply, ScriptedExecutor

__all__ = ["Reply", "ScriptedExecutor"]
