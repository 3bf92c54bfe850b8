"""An executor for Anthropic's Messages API.

In code::

    from taskloom.adapters.anthropic import AnthropicExecutor
    from taskloom.contracts import Secret

    async with AnthropicExecutor(model="claude-sonnet-4-5", api_key=Secret(key)) as executor:
        result = await executor.complete(request)

In ``taskloom.toml`` (the key is a reference to the secret store; a literal
string is refused)::

    [executors.claude]
    type = "anthropic"
    model = "claude-sonnet-4-5"
    api_key = { secret = "anthropic_api_key" }
    # optional: base_url = "https://api.anthropic.com", default_max_tokens = 1024,
    # anthropic_version = "2023-06-01", read_timeout_s = 60, total_timeout_s = 120

System messages become the top-level ``system`` field; ``max_tokens`` defaults
to ``default_max_tokens`` because the API requires it; the API has no JSON mode,
so a JSON response format adds a system instruction instead (the reply is not
validated here); ``seed`` is not sent. Errors map as for the OpenAI executor,
with 529 (overloaded) retryable and ``anthropic-ratelimit-*-reset`` honoured.
"""

from __future__ import annotations

from taskloom.adapters.anthropic._executor import AnthropicExecutor, from_config

__all__ = ["AnthropicExecutor", "from_config"]
