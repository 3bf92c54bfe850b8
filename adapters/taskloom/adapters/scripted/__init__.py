"""A scripted LLM executor: deterministic replies, latency and failure injection.

For tests, demos and benchmarks; it needs no network and no model. With no
script it echoes the last user message, so a pipeline runs out of the box.

In ``taskloom.toml``::

    [executors.demo]
    type = "scripted"
    replies = ["first reply", "second reply"]   # optional; cycled. Default: echo
    # or a mapping from the last user message to its reply:
    # replies = { "ping" = "pong" }
    latency_s = 0.2                             # optional
    chunk_size = 8                              # optional, for streaming
"""

from __future__ import annotations

from taskloom.adapters.scripted._config import from_config
from taskloom.adapters.scripted._executor import Reply, ScriptedExecutor

__all__ = ["Reply", "ScriptedExecutor", "from_config"]
